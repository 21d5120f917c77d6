// The live table of one source: its snapshot, then every change as it happens, through a
// subscription as any client makes it. Rows entering show green, leaving red, changed cells
// yellow; only the rows in view are drawn, at most once per animation frame, so 10,000 rows
// changing 1,000 times a second stay responsive. A dropped connection is resumed with the last
// cursor (`after:`; a RESET redraws from a fresh snapshot). The filter, the columns and the
// sort live in the URL, so a view can be shared.
import { ApiError, esc, gql, wsClient } from './api.js';
import { filterBuilder } from './filter.js';

const ROW_PX = 29;
const OVERSCAN = 10;
const HIGHLIGHT_MS = 1_500;
const LEAVING_MS = 1_000;
/** Updates kept while paused; beyond them, resuming takes a fresh snapshot instead. */
const MAX_PAUSED = 100_000;
/** Errors after which resubscribing may help; any other error is the request's own. */
const TRANSIENT = new Set(['SUBSCRIPTION_ENDED', 'SOURCE_UNAVAILABLE', 'TOO_MANY_VIEWS', 'TOO_MANY_FILTERS']);

/** What the page needs to know of a source: its columns (as this credential sees them), its
 * key and the operators of each column's comparison type. */
export async function describe(source) {
  const data = await gql(
    `query($object: String!, $expression: String!) {
      viewer { sources { name primaryKey } }
      object: __type(name: $object) { fields { name type { kind name ofType { kind name } } } }
      expression: __type(name: $expression) { inputFields { name type { name } } }
    }`,
    { object: source, expression: `${source}Expression` },
  );
  const info = data.viewer.sources.find((s) => s.name === source);
  if (!info || !data.object) {
    throw new ApiError(`this credential may not read ${source}`, 'FORBIDDEN');
  }
  const columns = data.object.fields.map((f) => f.name);
  const comparisons = {};
  for (const field of data.expression?.inputFields ?? []) {
    if (!field.name.startsWith('_')) {
      comparisons[field.name] = field.type.name;
    }
  }
  const types = [...new Set(Object.values(comparisons))];
  const operators = {};
  if (types.length > 0) {
    const query = types
      .map((t, i) => `t${i}: __type(name: "${t}") { inputFields { name type { kind name ofType { name } } } }`)
      .join('\n');
    const described = await gql(`{ ${query} }`);
    types.forEach((t, i) => {
      operators[t] = described[`t${i}`].inputFields.map((f) => ({
        name: f.name,
        list: f.type.kind === 'LIST',
        scalar: f.type.name ?? f.type.ofType?.name,
      }));
    });
  }
  return {
    columns,
    key: info.primaryKey,
    operators: Object.fromEntries(Object.entries(comparisons).map(([c, t]) => [c, operators[t] ?? []])),
  };
}

export function livePage(root, source, params) {
  root.innerHTML = `<h1>Live: ${esc(source)}</h1><p class="state" role="status">Loading…</p>`;
  let stopped = false;
  let teardown = () => {};
  describe(source).then(
    (meta) => {
      if (!stopped) {
        teardown = run(root, source, params, meta);
      }
    },
    (error) => {
      root.querySelector('.state').textContent = `Cannot open ${source}: ${error.message}`;
      root.querySelector('.state').classList.add('error');
    },
  );
  return () => {
    stopped = true;
    teardown();
  };
}

function parseWhere(text) {
  if (!text) {
    return null;
  }
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function run(root, source, params, meta) {
  const where = parseWhere(params.get('where'));
  const wanted = (params.get('columns') || '').split(',').filter((c) => meta.columns.includes(c));
  const shown = wanted.length > 0 ? wanted : meta.columns;
  const [sortColumn, sortDir] = (params.get('sort') || '').split(':');
  const view = {
    where,
    shown,
    sort: meta.columns.includes(sortColumn) ? { column: sortColumn, desc: sortDir === 'desc' } : null,
  };

  root.innerHTML = `
    <h1>Live: ${esc(source)}</h1>
    <div class="toolbar">
      <button type="button" class="pause" aria-pressed="false">Pause</button>
      <span class="count" aria-live="off"></span>
      <span class="state" role="status" aria-live="polite">Connecting…</span>
    </div>
    ${
      params.get('where') && !where
        ? '<p class="error" role="alert">The filter in this link is not JSON: every row is shown.</p>'
        : ''
    }
    <details class="filter-panel" ${where ? 'open' : ''}><summary>Filter</summary><div class="filter"></div></details>
    <fieldset class="columns"><legend>Columns</legend>${meta.columns
      .map(
        (c) => `<label><input type="checkbox" name="column" value="${esc(c)}" ${shown.includes(c) ? 'checked' : ''}> ${esc(c)}</label>`,
      )
      .join('')}</fieldset>
    <div class="viewport" tabindex="0" aria-label="Rows of ${esc(source)}">
      <table aria-label="Rows of ${esc(source)}" aria-rowcount="0"><thead><tr>${shown
        .map((c) => {
          const sorted = view.sort?.column === c ? (view.sort.desc ? 'descending' : 'ascending') : 'none';
          return `<th scope="col" data-column="${esc(c)}" aria-sort="${sorted}"><button type="button">${esc(c)}</button></th>`;
        })
        .join('')}</tr></thead><tbody></tbody></table>
    </div>`;
  const state = root.querySelector('.state');
  const count = root.querySelector('.count');
  const viewport = root.querySelector('.viewport');
  const table = viewport.querySelector('table');
  const body = table.querySelector('tbody');
  const pause = root.querySelector('.pause');

  /** Writes the view into the URL (without reopening the page). */
  function remember() {
    const next = new URLSearchParams();
    if (view.where) {
      next.set('where', JSON.stringify(view.where));
    }
    if (view.shown.length !== meta.columns.length) {
      next.set('columns', view.shown.join(','));
    }
    if (view.sort) {
      next.set('sort', `${view.sort.column}:${view.sort.desc ? 'desc' : 'asc'}`);
    }
    const query = next.toString();
    window.history.replaceState(null, '', `#/live/${encodeURIComponent(source)}${query ? `?${query}` : ''}`);
  }

  filterBuilder(root.querySelector('.filter'), meta, view.where, (next) => {
    view.where = next;
    remember();
    resubscribe();
  });
  for (const box of root.querySelectorAll('input[name="column"]')) {
    box.addEventListener('change', () => {
      const chosen = [...root.querySelectorAll('input[name="column"]:checked')].map((b) => b.value);
      view.shown = chosen.length > 0 ? chosen : meta.columns;
      remember();
      // The header and the selection change: the router opens the page again from the URL.
      window.dispatchEvent(new HashChangeEvent('hashchange'));
    });
  }
  table.querySelector('thead').addEventListener('click', (event) => {
    const column = event.target.closest('th')?.dataset.column;
    if (!column) {
      return;
    }
    view.sort = view.sort?.column === column && !view.sort.desc ? { column, desc: true } : { column, desc: false };
    for (const th of table.querySelectorAll('th')) {
      th.setAttribute(
        'aria-sort',
        th.dataset.column === column ? (view.sort.desc ? 'descending' : 'ascending') : 'none',
      );
    }
    remember();
    dirtyOrder = true;
    schedule();
  });

  // The rows: key → {values, status ('entered' | 'leaving' | null), changed (Set), until}.
  const rows = new Map();
  let order = [];
  let dirtyOrder = true;
  let snapshotDone = false;
  let cursor = null;
  let paused = false;
  let waiting = [];
  let overflowed = false;
  const selection = [...new Set([...meta.key, ...view.shown])];
  const keyOf = (data) => meta.key.map((k) => JSON.stringify(data[k])).join('|');

  /** Updates applied so far (for the console benchmark). */
  let applied = 0;

  function apply(update) {
    applied += 1;
    const now = performance.now();
    if (update.cursor) {
      cursor = update.cursor;
    }
    switch (update.operation) {
      case 'RESET':
        rows.clear();
        snapshotDone = false;
        dirtyOrder = true;
        return;
      case 'SNAPSHOT_END':
        snapshotDone = true;
        return;
      case 'INSERT': {
        rows.set(keyOf(update.data), {
          values: { ...update.data },
          status: snapshotDone ? 'entered' : null,
          changed: new Set(),
          until: now + HIGHLIGHT_MS,
        });
        dirtyOrder = true;
        return;
      }
      case 'UPDATE': {
        const row = rows.get(keyOf(update.data));
        if (!row) {
          return;
        }
        for (const field of update.fields) {
          row.values[field] = update.data[field];
        }
        row.changed = new Set(update.fields);
        row.until = now + HIGHLIGHT_MS;
        if (view.sort && update.fields.includes(view.sort.column)) {
          dirtyOrder = true;
        }
        return;
      }
      case 'DELETE': {
        const row = rows.get(keyOf(update.data));
        if (row) {
          row.status = 'leaving';
          row.changed = new Set();
          row.until = now + LEAVING_MS;
        }
        return;
      }
      default:
    }
  }

  /** Numbers, and numbers in strings (BigInt and Numeric columns), by value; text by code
   * point; nulls last. */
  const NUMERIC = /^-?\d+(\.\d+)?(e[-+]?\d+)?$/i;
  const sortable = (v) => (typeof v === 'string' && NUMERIC.test(v) ? Number(v) : v);
  function compare(a, b) {
    const x = sortable(rows.get(a).values[view.sort.column]);
    const y = sortable(rows.get(b).values[view.sort.column]);
    let result;
    if (x === y) {
      result = 0;
    } else if (x === null || x === undefined) {
      result = 1;
    } else if (y === null || y === undefined) {
      result = -1;
    } else if (typeof x === typeof y) {
      result = x < y ? -1 : 1;
    } else {
      result = typeof x === 'number' ? -1 : 1;
    }
    return view.sort.desc ? -result : result;
  }

  let frame = 0;
  let sweep = 0;
  function schedule() {
    if (!frame) {
      frame = requestAnimationFrame(render);
    }
  }

  function render() {
    frame = 0;
    const now = performance.now();
    let pending = false;
    for (const [key, row] of rows) {
      if (row.until <= now) {
        if (row.status === 'leaving') {
          rows.delete(key);
          dirtyOrder = true;
          continue;
        }
        row.status = null;
        row.changed = new Set();
      } else if (row.status || row.changed.size > 0) {
        pending = true;
      }
    }
    if (dirtyOrder) {
      order = [...rows.keys()];
      if (view.sort) {
        order.sort(compare);
      }
      dirtyOrder = false;
    }
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_PX) - OVERSCAN);
    const last = Math.min(order.length, Math.ceil((viewport.scrollTop + viewport.clientHeight) / ROW_PX) + OVERSCAN);
    const cells = [];
    for (let i = first; i < last; i += 1) {
      const row = rows.get(order[i]);
      cells.push(
        `<tr aria-rowindex="${i + 2}"${row.status ? ` class="${row.status}"` : ''}>${view.shown
          .map((c) => {
            const value = row.values[c];
            const text = value === null || value === undefined ? '' : typeof value === 'object' ? JSON.stringify(value) : String(value);
            return `<td data-column="${esc(c)}"${row.changed.has(c) ? ' class="changed"' : ''} title="${esc(text)}">${esc(text)}</td>`;
          })
          .join('')}</tr>`,
      );
    }
    const span = view.shown.length;
    body.innerHTML =
      `<tr class="spacer" aria-hidden="true"><td colspan="${span}" style="height:${first * ROW_PX}px"></td></tr>` +
      cells.join('') +
      `<tr class="spacer" aria-hidden="true"><td colspan="${span}" style="height:${(order.length - last) * ROW_PX}px"></td></tr>`;
    table.setAttribute('aria-rowcount', String(order.length + 1));
    count.textContent = `${order.length} row${order.length === 1 ? '' : 's'}`;
    root.dataset.rows = String(order.length);
    root.dataset.applied = String(applied);
    clearTimeout(sweep);
    if (pending) {
      sweep = setTimeout(schedule, 250);
    }
  }
  viewport.addEventListener('scroll', schedule, { passive: true });

  function setState(text, kind) {
    state.textContent = text;
    state.className = `state ${kind}`;
    root.dataset.state = kind;
  }

  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (paused) {
      setState('Paused: changes wait here', 'paused');
      return;
    }
    if (overflowed) {
      overflowed = false;
      waiting = [];
      cursor = null;
      rows.clear();
      snapshotDone = false;
      resubscribe();
      return;
    }
    for (const update of waiting) {
      apply(update);
    }
    waiting = [];
    setState(snapshotDone ? 'Live' : 'Loading the snapshot…', snapshotDone ? 'live' : 'loading');
    schedule();
  });

  // The subscription, resumed after its last cursor when the connection drops.
  let client = null;
  let dispose = () => {};
  let retry = 0;
  let retryTimer = 0;
  let closed = false;
  /** Which subscription is current: a replaced one's callbacks (its close, its complete)
   * are ignored. */
  let generation = 0;

  function drop() {
    generation += 1;
    dispose();
    client?.dispose();
  }

  function subscribe() {
    const query = `subscription($w: ${source}Expression, $after: String) {
      ${source}(where: $w, after: $after, snapshot_end: true) { operation data { ${selection.join(' ')} } fields cursor }
    }`;
    client = wsClient();
    const mine = generation;
    setState(cursor ? 'Resuming…' : 'Loading the snapshot…', 'loading');
    dispose = client.subscribe(
      { query, variables: { w: view.where, after: cursor } },
      {
        next: (message) => {
          if (mine !== generation) {
            return;
          }
          if (message.errors) {
            failed(message.errors);
            return;
          }
          retry = 0;
          const update = message.data[source];
          if (paused) {
            if (waiting.length < MAX_PAUSED) {
              waiting.push(update);
            } else {
              overflowed = true;
            }
            state.textContent = `Paused: ${overflowed ? 'more than ' : ''}${waiting.length} changes wait here`;
            return;
          }
          apply(update);
          if (update.operation === 'SNAPSHOT_END' || (snapshotDone && root.dataset.state !== 'live')) {
            setState('Live', 'live');
          }
          schedule();
        },
        error: (error) => {
          if (mine === generation) {
            failed(error);
          }
        },
        complete: () => {
          if (mine === generation && !closed) {
            reconnect();
          }
        },
      },
    );
  }

  function failed(error) {
    if (closed) {
      return;
    }
    if (Array.isArray(error)) {
      const code = error[0]?.extensions?.code;
      if (TRANSIENT.has(code)) {
        reconnect();
        return;
      }
      setState(`Error: ${error.map((e) => e.message).join('; ')}`, 'error');
      return;
    }
    // A close event: 4403 is the credential; anything else, the connection.
    if (error && error.code === 4403) {
      setState(`The server refused this credential (${error.reason || 'forbidden'})`, 'error');
      return;
    }
    reconnect();
  }

  function reconnect() {
    drop();
    retry += 1;
    const delay = Math.min(10_000, 250 * 2 ** Math.min(retry, 6));
    setState(`Reconnecting (attempt ${retry})…`, 'reconnecting');
    clearTimeout(retryTimer);
    retryTimer = setTimeout(subscribe, delay);
  }

  function resubscribe() {
    drop();
    clearTimeout(retryTimer);
    cursor = null;
    rows.clear();
    snapshotDone = false;
    dirtyOrder = true;
    schedule();
    subscribe();
  }

  subscribe();
  schedule();
  return () => {
    closed = true;
    clearTimeout(retryTimer);
    clearTimeout(sweep);
    cancelAnimationFrame(frame);
    drop();
  };
}
