package io.perperlab.fabric;

import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.ignite.Ignite;
import org.apache.ignite.Ignition;
import org.apache.ignite.ShutdownPolicy;
import org.apache.ignite.cache.CacheAtomicityMode;
import org.apache.ignite.cache.CacheMode;
import org.apache.ignite.cache.CacheWriteSynchronizationMode;
import org.apache.ignite.cache.PartitionLossPolicy;
import org.apache.ignite.cluster.ClusterState;
import org.apache.ignite.configuration.CacheConfiguration;
import org.apache.ignite.configuration.ClientConnectorConfiguration;
import org.apache.ignite.configuration.DataRegionConfiguration;
import org.apache.ignite.configuration.DataStorageConfiguration;
import org.apache.ignite.configuration.IgniteConfiguration;
import org.apache.ignite.configuration.WALMode;
import org.apache.ignite.failure.StopNodeOrHaltFailureHandler;
import org.apache.ignite.spi.communication.tcp.TcpCommunicationSpi;
import org.apache.ignite.spi.discovery.tcp.TcpDiscoverySpi;
import org.apache.ignite.spi.discovery.tcp.ipfinder.vm.TcpDiscoveryVmIpFinder;

/**
 * Starts one perper_lab fabric node: an Apache Ignite server configured in code (no Spring XML).
 *
 * <p>Options (all optional): --index I, --host H, --client-port P, --discovery-port P,
 * --communication-port P, --discovery-addresses "h:p1..p2", --work-dir DIR, --persistence,
 * --region-mb MB, --cluster-size N, --exit-with-pid PID (stop when that process is gone). When the node has joined (and, with persistence, the cluster is
 * active) it prints one line starting with {@code PERPER-FABRIC-READY}; the Python launcher waits for it.
 */
public final class FabricNode {
    /** Cache templates: the Python side creates caches whose names match these prefixes. */
    static final String DATA_TEMPLATE = "perper-data*";
    static final String CONTROL_TEMPLATE = "perper-control*";

    private FabricNode() {
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> opts = parse(argv);
        int index = Integer.parseInt(opts.getOrDefault("index", "0"));
        String host = opts.getOrDefault("host", "127.0.0.1");
        int clientPort = Integer.parseInt(opts.getOrDefault("client-port", String.valueOf(10800 + index)));
        int discoveryPort = Integer.parseInt(opts.getOrDefault("discovery-port", String.valueOf(47500 + index)));
        int commPort = Integer.parseInt(opts.getOrDefault("communication-port", String.valueOf(47100 + index)));
        String addresses = opts.getOrDefault("discovery-addresses", host + ":47500..47509");
        String workDir = Path.of(opts.getOrDefault("work-dir", "fabric-work-" + index)).toAbsolutePath().toString();
        boolean persistence = opts.containsKey("persistence");
        long regionMb = Long.parseLong(opts.getOrDefault("region-mb", "256"));
        int clusterSize = Integer.parseInt(opts.getOrDefault("cluster-size", "1"));

        if (opts.containsKey("exit-with-pid"))
            exitWhenGone(Long.parseLong(opts.get("exit-with-pid")));

        IgniteConfiguration cfg = configuration(index, host, clientPort, discoveryPort, commPort,
            addresses, workDir, persistence, regionMb, clusterSize);
        Ignite ignite = Ignition.start(cfg);

        if (persistence)
            activateWhenComplete(ignite, clusterSize);

        int servers = ignite.cluster().forServers().nodes().size();
        System.out.println("PERPER-FABRIC-READY node=" + index + " client=" + host + ":" + clientPort
            + " servers=" + servers + " persistence=" + persistence);
        System.out.flush();
    }

    static IgniteConfiguration configuration(int index, String host, int clientPort, int discoveryPort,
        int commPort, String addresses, String workDir, boolean persistence, long regionMb, int clusterSize) {
        // A static address list, never multicast: nodes of different fabrics on one machine must not meet.
        TcpDiscoveryVmIpFinder ipFinder = new TcpDiscoveryVmIpFinder();
        ipFinder.setAddresses(List.of(addresses.split(",")));

        TcpDiscoverySpi discovery = new TcpDiscoverySpi();
        discovery.setLocalAddress(host);
        discovery.setLocalPort(discoveryPort);
        discovery.setLocalPortRange(0);
        discovery.setIpFinder(ipFinder);

        TcpCommunicationSpi communication = new TcpCommunicationSpi();
        communication.setLocalAddress(host);
        communication.setLocalPort(commPort);
        communication.setLocalPortRange(0);

        // Ignite's default region may grow to 20% of RAM per node; a lab machine runs several nodes.
        DataRegionConfiguration region = new DataRegionConfiguration()
            .setName("default")
            .setInitialSize(Math.min(regionMb, 64L) << 20)
            .setMaxSize(regionMb << 20)
            .setPersistenceEnabled(persistence);
        DataStorageConfiguration storage = new DataStorageConfiguration()
            .setDefaultDataRegionConfiguration(region);
        if (persistence) {
            // Defaults preallocate 10 x 64 MB of WAL per node; a lab needs far less.
            storage.setWalMode(WALMode.LOG_ONLY)
                .setWalSegmentSize(16 << 20)
                .setWalSegments(4)
                .setMaxWalArchiveSize(256L << 20);
        }

        return new IgniteConfiguration()
            .setIgniteInstanceName("perper-fabric-" + index)
            .setConsistentId("perper-fabric-" + index)
            .setLocalHost(host)
            .setWorkDirectory(workDir)
            .setDiscoverySpi(discovery)
            .setCommunicationSpi(communication)
            .setClientConnectorConfiguration(new ClientConnectorConfiguration()
                .setHost(host).setPort(clientPort).setPortRange(0))
            .setConnectorConfiguration(null)
            .setDataStorageConfiguration(storage)
            .setCacheConfiguration(dataTemplate(), controlTemplate())
            .setMetricsLogFrequency(0)
            .setFailureDetectionTimeout(10_000)
            .setShutdownPolicy(ShutdownPolicy.IMMEDIATE)
            .setFailureHandler(new StopNodeOrHaltFailureHandler())
            .setPublicThreadPoolSize(4)
            .setSystemThreadPoolSize(4)
            .setStripedPoolSize(4)
            .setQueryThreadPoolSize(2)
            .setServiceThreadPoolSize(1)
            .setDataStreamerThreadPoolSize(1)
            .setManagementThreadPoolSize(1)
            .setRebalanceThreadPoolSize(1)
            .setPeerClassLoadingEnabled(false);
    }

    /** Stream batches: immutable once written, so ATOMIC is enough; FULL_SYNC so an ack means two copies. */
    static CacheConfiguration<Object, Object> dataTemplate() {
        return new CacheConfiguration<>(DATA_TEMPLATE)
            .setCacheMode(CacheMode.PARTITIONED)
            .setBackups(1)
            .setAtomicityMode(CacheAtomicityMode.ATOMIC)
            .setWriteSynchronizationMode(CacheWriteSynchronizationMode.FULL_SYNC)
            .setPartitionLossPolicy(PartitionLossPolicy.READ_WRITE_SAFE);
    }

    /** Registry, offsets and leases: compare-and-set must stay correct when a primary dies. */
    static CacheConfiguration<Object, Object> controlTemplate() {
        return new CacheConfiguration<>(CONTROL_TEMPLATE)
            .setCacheMode(CacheMode.PARTITIONED)
            .setBackups(1)
            .setAtomicityMode(CacheAtomicityMode.TRANSACTIONAL)
            .setWriteSynchronizationMode(CacheWriteSynchronizationMode.FULL_SYNC)
            .setPartitionLossPolicy(PartitionLossPolicy.READ_WRITE_SAFE);
    }

    /** A persistent cluster starts inactive; activate it once every expected server has joined. */
    static void activateWhenComplete(Ignite ignite, int clusterSize) throws InterruptedException {
        if (ignite.cluster().state() == ClusterState.ACTIVE)
            return;
        while (ignite.cluster().forServers().nodes().size() < clusterSize)
            Thread.sleep(200);
        if (ignite.cluster().state() != ClusterState.ACTIVE)
            ignite.cluster().state(ClusterState.ACTIVE);
        // A node that dies for good must not block the cluster forever: move the baseline after a pause.
        ignite.cluster().baselineAutoAdjustEnabled(true);
        ignite.cluster().baselineAutoAdjustTimeout(30_000);
    }

    /** An embedded fabric dies with the kernel that started it, even if that kernel was killed. */
    static void exitWhenGone(long pid) {
        Thread watcher = new Thread(() -> {
            while (ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false)) {
                try {
                    Thread.sleep(1000);
                }
                catch (InterruptedException e) {
                    return;
                }
            }
            System.exit(0);
        }, "perper-parent-watcher");
        watcher.setDaemon(true);
        watcher.start();
    }

    static Map<String, String> parse(String[] argv) {
        Map<String, String> opts = new HashMap<>();
        for (int i = 0; i < argv.length; i++) {
            if (!argv[i].startsWith("--"))
                throw new IllegalArgumentException("unexpected argument: " + argv[i]);
            String name = argv[i].substring(2);
            boolean hasValue = i + 1 < argv.length && !argv[i + 1].startsWith("--");
            opts.put(name, hasValue ? argv[++i] : "true");
        }
        return opts;
    }
}
