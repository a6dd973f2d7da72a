import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

/** What GET {base_url}/perper-lab/fabrics answers (perper_lab/server/fabrics.py). */
export interface IFabricsReply {
  fabrics: IFabric[];
  error: string | null;
  checked_at: number;
}

export interface IFabric {
  address: string;
  sources: ISource[];
  error: string | null;
  stale_s?: number; // set when the fabric was slow: its last answer, this many seconds old
  streams: IStream[];
  functions: IFunction[];
  workers: IWorker[];
}

export interface ISource {
  kind: 'env' | 'embedded' | 'local';
  label: string;
  kernel?: string;
  kernel_of_this_server?: boolean;
}

export interface IStream {
  name: string;
  partitions: number;
  items: number;
  closed: boolean;
  producer: string;
}

export interface IFunction {
  output: string;
  function: string;
  inputs: string[];
  kind: string;
  version: string;
  parallelism: number;
  state: string;
  reason: string;
  workers: string[];
  lag: number;
  errors: number;
}

export interface IWorker {
  worker: string;
  host: string;
  pid: number;
  heartbeat_age_s: number;
  instances: string[];
}

/** GET the fabrics this Jupyter server sees (ServerConnection adds the token and the XSRF header). */
export async function fetchFabrics(
  settings: ServerConnection.ISettings
): Promise<IFabricsReply> {
  const url = URLExt.join(settings.baseUrl, 'perper-lab', 'fabrics');
  const response = await ServerConnection.makeRequest(url, {}, settings);
  if (!response.ok) {
    throw new ServerConnection.ResponseError(
      response,
      `the server answered ${response.status} ${response.statusText} for ${url}` +
        (response.status === 404
          ? ' (is the perper_lab server extension enabled? see `jupyter server extension list`)'
          : '')
    );
  }
  return (await response.json()) as IFabricsReply;
}

const POLL_MS = 2000;

/**
 * The "Perper" sidebar: each fabric, its streams (items, closed), functions (state, lag, errors,
 * workers) and workers. Polls every 2 s while it is visible.
 */
export class PerperPanel extends Widget {
  constructor(settings: ServerConnection.ISettings) {
    super();
    this._settings = settings;
    this.addClass('jp-PerperPanel');
    this.node.appendChild(
      el('div', 'jp-PerperPanel-header', [
        el('span', 'jp-PerperPanel-title', 'Perper'),
        this._updated
      ])
    );
    this.node.appendChild(this._body);
    this._body.appendChild(el('div', 'jp-PerperPanel-message', 'Loading…'));
    this._poll = new Poll({
      factory: () => this._refresh(),
      frequency: { interval: POLL_MS, backoff: true, max: 30 * 1000 },
      name: 'perper-lab:fabrics',
      standby: () => document.hidden || !this.isVisible
    });
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  protected onAfterShow(): void {
    void this._poll.refresh();
  }

  private async _refresh(): Promise<void> {
    let reply: IFabricsReply;
    try {
      reply = await fetchFabrics(this._settings);
    } catch (reason) {
      this._show([
        el(
          'div',
          'jp-PerperPanel-message jp-PerperPanel-error',
          `Cannot reach the Jupyter server's perper_lab endpoint: ${reason}`
        )
      ]);
      throw reason; // the poll backs off while the server is away
    }
    this._updated.textContent = `updated ${new Date(reply.checked_at * 1000).toLocaleTimeString()}`;
    if (reply.error) {
      this._show([el('div', 'jp-PerperPanel-message jp-PerperPanel-error', reply.error)]);
    } else if (reply.fabrics.length === 0) {
      this._show([
        el(
          'div',
          'jp-PerperPanel-message',
          'No fabric known. Run `%load_ext perper_lab` in a notebook (an embedded fabric), ' +
            '`perper-lab fabric start` in a terminal, or start JupyterLab with ' +
            'PERPER_FABRIC=host:port.'
        )
      ]);
    } else {
      this._show(reply.fabrics.map(renderFabric));
    }
  }

  private _show(children: HTMLElement[]): void {
    this._body.replaceChildren(...children);
  }

  private _settings: ServerConnection.ISettings;
  private _poll: Poll;
  private _body = el('div', 'jp-PerperPanel-body');
  private _updated = el('span', 'jp-PerperPanel-updated');
}

function renderFabric(fabric: IFabric): HTMLElement {
  const section = el('section', 'jp-PerperFabric');
  section.dataset.address = fabric.address;
  const names = fabric.sources.map(source =>
    source.kernel_of_this_server ? `${source.label} (a kernel of this server)` : source.label
  );
  section.appendChild(el('h3', 'jp-PerperFabric-title', names.join(' · ')));
  section.appendChild(el('div', 'jp-PerperFabric-address', fabric.address));
  if (fabric.error) {
    section.appendChild(
      el('div', 'jp-PerperPanel-message jp-PerperPanel-error', `Unreachable: ${fabric.error}`)
    );
    return section;
  }
  if (fabric.stale_s !== undefined) {
    section.appendChild(
      el(
        'div',
        'jp-PerperPanel-message jp-PerperPanel-warn',
        `Slow to answer: showing what it said ${fabric.stale_s} s ago.`
      )
    );
  }
  section.appendChild(
    table(
      'jp-PerperStreams',
      `Streams (${fabric.streams.length})`,
      ['stream', 'items', 'closed'],
      fabric.streams.map(s => ({
        key: s.name,
        cells: [s.name, count(s.items), s.closed ? 'closed' : 'open'],
        title:
          `${s.name}: ${s.partitions} partition(s)` + (s.producer ? `, written by ${s.producer}` : '')
      }))
    )
  );
  section.appendChild(
    table(
      'jp-PerperFunctions',
      `Functions (${fabric.functions.length})`,
      ['function', 'state'],
      fabric.functions.map(f => ({
        key: f.output,
        cells: [
          [
            el('div', 'jp-PerperTable-name', f.output),
            el('div', 'jp-PerperTable-detail', [
              stat('lag', f.lag),
              stat('errors', f.errors),
              stat('workers', f.workers.length)
            ])
          ],
          f.state
        ],
        title:
          `${f.function} → ${f.output} (${f.kind}, version ${f.version}, parallelism ${f.parallelism}), ` +
          `reading ${f.inputs.join(', ') || 'nothing (a source)'}; ` +
          `workers: ${f.workers.join(', ') || 'none'}` +
          (f.reason ? `\n${f.reason}` : ''),
        warn: f.state === 'failed' || f.errors > 0
      }))
    )
  );
  section.appendChild(
    table(
      'jp-PerperWorkers',
      `Workers (${fabric.workers.length})`,
      ['worker', 'heartbeat'],
      fabric.workers.map(w => ({
        key: w.worker,
        cells: [
          [
            el('div', 'jp-PerperTable-name', w.worker),
            el('div', 'jp-PerperTable-detail', [stat('instances', w.instances.length)])
          ],
          `${w.heartbeat_age_s.toFixed(1)} s ago`
        ],
        title: `${w.worker} (${w.host} pid ${w.pid}): ${w.instances.join(', ') || 'no instances'}`
      }))
    )
  );
  return section;
}

interface IRow {
  key: string;
  cells: (string | Node[])[];
  title: string;
  warn?: boolean;
}

/** A captioned table; cell i of a row gets the class jp-PerperTable-{headers[i]}. */
function table(
  className: string,
  caption: string,
  headers: string[],
  rows: IRow[]
): HTMLElement {
  const block = el('div', `jp-PerperTable ${className}`);
  block.appendChild(el('h4', 'jp-PerperTable-caption', caption));
  if (rows.length === 0) {
    block.appendChild(el('div', 'jp-PerperTable-empty', 'none'));
    return block;
  }
  const head = el('tr', '', headers.map(h => el('th', `jp-PerperTable-${h}`, h)));
  const body = el('tbody');
  for (const row of rows) {
    const tr = el('tr', row.warn ? 'jp-PerperTable-warn' : '');
    tr.dataset.key = row.key;
    tr.title = row.title;
    row.cells.forEach((cell, i) => tr.appendChild(el('td', `jp-PerperTable-${headers[i]}`, cell)));
    body.appendChild(tr);
  }
  block.appendChild(el('table', '', [el('thead', '', [head]), body]));
  return block;
}

/** "lag 0" with the number in an element of class jp-PerperTable-lag. */
function stat(name: string, value: number): HTMLElement {
  return el('span', 'jp-PerperTable-stat', [
    document.createTextNode(`${name} `),
    el('span', `jp-PerperTable-${name}`, count(value))
  ]);
}

function count(n: number): string {
  return n.toLocaleString();
}

/** A DOM element with a class and text or children (text goes through textContent: never HTML). */
function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  content: string | Node[] = []
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (typeof content === 'string') {
    node.textContent = content;
  } else {
    node.append(...content);
  }
  return node;
}
