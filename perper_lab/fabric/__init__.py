"""The fabric: Apache Ignite nodes and the one client that talks to them."""

from perper_lab.fabric.client import FabricClient, parse_addresses
from perper_lab.fabric.launcher import LocalFabric

__all__ = ["FabricClient", "LocalFabric", "parse_addresses"]
