// Runs: a list (filtered by kind and status, paged, refreshed every two seconds) with a form
// that starts a run, and a run's timeline: every event in order, a progress bar from its
// PROGRESS events, a terminal badge, and Cancel. The timeline reads the run's Server-Sent
// Events (`/runs/{id}/events`) with fetch rather than EventSource, which can send neither the
// credential nor a listener for event types it does not know; on a drop it reconnects with
// `Last-Event-ID`, and it keeps events by seq, so none shows twice and a gap is refetched.
import { ApiError, authHeaders, esc, gql, poll } from './api.js';

const STATUSES = ['PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED'];
const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);

function badge(status) {
  return `<span class="badge badge-${esc(status)}">${esc(status)}</span>`;
}

function hashFor(params) {
  const query = params.toString();
  return `#/runs${query ? `?${query}` : ''}`;
}

export function runsPage(root, params) {
  const kind = params.get('kind') || '';
  const statuses = (params.get('status') || '').split(',').filter((s) => STATUSES.includes(s));
  const after = params.get('after');
  root.innerHTML = `
    <h1>Runs</h1>
    <form class="toolbar run-filter" aria-label="Filter runs">
      <label>Kind <input name="kind" value="${esc(kind)}" placeholder="any"></label>
      <fieldset class="statuses"><legend>Status</legend>${STATUSES.map(
        (s) => `<label><input type="checkbox" name="status" value="${s}" ${statuses.includes(s) ? 'checked' : ''}> ${s}</label>`,
      ).join('')}</fieldset>
      <button type="submit">Show</button>
    </form>
    <p class="state" role="status">Loading…</p>
    <table aria-label="Runs"><thead><tr><th scope="col">Run</th><th scope="col">Kind</th><th scope="col">Status</th>
      <th scope="col">Created</th><th scope="col">Events</th><th scope="col">By</th></tr></thead><tbody></tbody></table>
    <div class="toolbar"><a class="first" href="${hashFor(new URLSearchParams({ ...(kind && { kind }), ...(statuses.length && { status: statuses.join(',') }) }))}">First page</a>
      <a class="next" hidden>Next page</a></div>
    <form class="start" aria-label="Start a run">
      <h2>Start a run</h2>
      <label>Kind <input name="kind" required></label>
      <label>Input (JSON) <textarea name="input" rows="3">{}</textarea></label>
      <button type="submit">Start</button>
      <span class="start-state" role="status"></span>
    </form>`;
  const state = root.querySelector('.state');
  const body = root.querySelector('tbody');
  const next = root.querySelector('.next');

  root.querySelector('.run-filter').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const chosen = form.getAll('status');
    const query = new URLSearchParams();
    if (form.get('kind')) {
      query.set('kind', form.get('kind'));
    }
    if (chosen.length > 0) {
      query.set('status', chosen.join(','));
    }
    window.location.hash = hashFor(query);
  });
  root.querySelector('.start').addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const said = root.querySelector('.start-state');
    let input;
    try {
      input = JSON.parse(form.get('input') || '{}');
    } catch (error) {
      said.textContent = `The input is not JSON: ${error.message}`;
      return;
    }
    try {
      const { startRun } = await gql(
        'mutation($kind: String!, $input: JSONValue) { startRun(kind: $kind, input: $input) { id } }',
        { kind: form.get('kind'), input },
      );
      window.location.hash = `#/runs/${encodeURIComponent(startRun.id)}`;
    } catch (error) {
      said.textContent = `Not started: ${error.message}`;
    }
  });

  async function refresh() {
    try {
      const filter = {};
      if (kind) {
        filter.kind = kind;
      }
      if (statuses.length > 0) {
        filter.status = statuses;
      }
      const { runs } = await gql(
        `query($filter: RunFilter, $after: String) { runs(filter: $filter, first: 20, after: $after) {
          nodes { id kind status createdAt lastSeq createdBy } pageInfo { hasNextPage endCursor } } }`,
        { filter, after },
      );
      state.textContent = runs.nodes.length === 0 ? 'No runs.' : '';
      state.classList.remove('error');
      body.innerHTML = runs.nodes
        .map(
          (r) => `<tr data-run="${esc(r.id)}"><td><a href="#/runs/${encodeURIComponent(r.id)}">${esc(r.id)}</a></td>
            <td>${esc(r.kind)}</td><td>${badge(r.status)}</td><td>${esc(r.createdAt)}</td><td>${r.lastSeq}</td>
            <td>${esc(r.createdBy ?? '')}</td></tr>`,
        )
        .join('');
      next.hidden = !runs.pageInfo.hasNextPage;
      if (runs.pageInfo.hasNextPage) {
        const page = new URLSearchParams(params);
        page.set('after', runs.pageInfo.endCursor);
        next.href = hashFor(page);
      }
    } catch (error) {
      state.textContent = `Cannot list runs: ${error.message}`;
      state.classList.add('error');
    }
  }
  const poller = poll(refresh);
  poller.now();
  return poller.stop;
}

/** "3 of 10 files" from counters such as {files_done: 3, files_total: 10}. */
function ofTotals(counters) {
  if (!counters || typeof counters !== 'object') {
    return '';
  }
  return Object.keys(counters)
    .filter((k) => k.endsWith('_total'))
    .map((k) => {
      const name = k.slice(0, -'_total'.length);
      const done = counters[`${name}_done`];
      return done === undefined ? '' : `${done} of ${counters[k]} ${name}`;
    })
    .filter(Boolean)
    .join(', ');
}

/** Reads a Server-Sent Events body, calling `onEvent({id, event, data})` per event. */
async function readEvents(response, onEvent, signal) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = { id: null, event: 'message', data: [] };
  let handled = 0;
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done) {
      return;
    }
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
      if (line === '') {
        if (event.data.length > 0) {
          onEvent({ id: event.id, event: event.event, data: event.data.join('\n') });
          handled += 1;
          if (handled % 250 === 0) {
            // A large backfill arrives in large chunks: let the page draw in between.
            await new Promise((resolve) => setTimeout(resolve, 0));
          }
        }
        event = { id: null, event: 'message', data: [] };
      } else if (!line.startsWith(':')) {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'data') {
          event.data.push(text);
        } else if (field === 'id') {
          event.id = text;
        } else if (field === 'event') {
          event.event = text;
        }
      }
    }
  }
}

export function runPage(root, id) {
  root.innerHTML = `
    <p><a href="#/runs">← Runs</a></p>
    <h1>Run <code>${esc(id)}</code></h1>
    <div class="toolbar"><span class="summary"></span>
      <button type="button" class="cancel" hidden>Cancel</button>
      <span class="state" role="status" aria-live="polite">Loading…</span></div>
    <div class="progress-line"><span class="stage"></span> <span class="totals"></span></div>
    <progress max="100" value="0" aria-label="Progress"></progress> <span class="percent">0 %</span>
    <p class="failure error" hidden></p>
    <ol class="timeline" aria-label="Events"></ol>`;
  const state = root.querySelector('.state');
  const list = root.querySelector('.timeline');
  const bar = root.querySelector('progress');
  const cancel = root.querySelector('.cancel');
  const seen = new Map();
  let lastSeq = 0;
  let ended = false;
  let stopped = false;
  let retry = 0;
  let retryTimer = 0;
  let controller = null;
  let queued = [];
  let frame = 0;

  function setState(text, kind) {
    state.textContent = text;
    state.className = `state ${kind}`;
    root.dataset.state = kind;
  }

  /** Events drawn per animation frame at most, so that a backfill of thousands keeps the
   * page responsive. */
  const PER_FRAME = 150;

  function draw() {
    frame = 0;
    const fragment = document.createDocumentFragment();
    const batch = queued.splice(0, PER_FRAME);
    for (const e of batch) {
      const item = document.createElement('li');
      item.dataset.seq = String(e.seq);
      item.className = `event event-${e.type}`;
      const when = new Date(e.createdAt);
      item.innerHTML = `<span class="seq">${e.seq}</span> <time datetime="${esc(e.createdAt)}">${esc(
        Number.isNaN(when.getTime()) ? e.createdAt : when.toLocaleTimeString(),
      )}</time> <span class="type">${esc(e.type)}</span>${e.stage ? ` <span class="stage">${esc(e.stage)}</span>` : ''}${
        e.message ? ` <span class="message">${esc(e.message)}</span>` : ''
      }`;
      fragment.append(item);
      if (e.type === 'PROGRESS' || typeof e.percentage === 'number') {
        if (typeof e.percentage === 'number') {
          bar.value = e.percentage;
          root.querySelector('.percent').textContent = `${Math.round(e.percentage)} %`;
        }
        root.querySelector('.stage').textContent = e.stage ?? '';
        root.querySelector('.totals').textContent = ofTotals(e.counters);
      }
      if (e.type === 'STARTED' || TERMINAL.has(e.type)) {
        root.querySelector('.run-status').innerHTML = badge(TERMINAL.has(e.type) ? e.type : 'RUNNING');
      }
      if (TERMINAL.has(e.type)) {
        cancel.hidden = true;
        if (e.type === 'FAILED') {
          const failure = root.querySelector('.failure');
          failure.hidden = false;
          failure.textContent = e.message ?? 'failed';
        }
      }
    }
    list.append(fragment);
    root.dataset.lastSeq = batch.length > 0 ? batch[batch.length - 1].seq : root.dataset.lastSeq;
    if (queued.length > 0) {
      frame = requestAnimationFrame(draw);
    }
  }

  function take(e) {
    if (e.seq <= lastSeq || seen.has(e.seq)) {
      return true;
    }
    if (e.seq !== lastSeq + 1) {
      // A gap: read again from the last event shown.
      return false;
    }
    seen.set(e.seq, true);
    lastSeq = e.seq;
    if (TERMINAL.has(e.type)) {
      ended = true;
    }
    queued.push(e);
    if (!frame) {
      frame = requestAnimationFrame(draw);
    }
    return true;
  }

  async function loadRun() {
    const { run } = await gql(
      'query($id: ID!) { run(id: $id) { id kind status createdAt createdBy terminalType terminalMessage } }',
      { id },
    );
    if (!run) {
      throw new ApiError('no such run (or not one this credential may read)', 'NOT_FOUND');
    }
    root.querySelector('.summary').innerHTML = `${esc(run.kind)} · <span class="run-status">${badge(
      run.status,
    )}</span> · created ${esc(run.createdAt)}${
      run.createdBy ? ` by ${esc(run.createdBy)}` : ''
    }`;
    cancel.hidden = TERMINAL.has(run.status);
  }

  async function stream() {
    controller = new AbortController();
    const headers = { Accept: 'text/event-stream', ...authHeaders() };
    if (lastSeq > 0) {
      headers['Last-Event-ID'] = String(lastSeq);
    }
    setState(lastSeq > 0 ? `Resuming after event ${lastSeq}…` : 'Loading events…', 'loading');
    let response;
    try {
      response = await fetch(`/runs/${encodeURIComponent(id)}/events?fromSeq=1`, { headers, signal: controller.signal });
    } catch (error) {
      return reconnect(error.message);
    }
    if (!response.ok) {
      const text = await response.text().catch(() => '');
      if (response.status >= 500) {
        return reconnect(`HTTP ${response.status}`);
      }
      return setState(`Cannot read the events: HTTP ${response.status} ${text}`, 'error');
    }
    setState('Live', 'live');
    retry = 0;
    let gap = false;
    try {
      await readEvents(
        response,
        ({ data }) => {
          const e = JSON.parse(data);
          if (e.type === 'HEARTBEAT' || gap) {
            return;
          }
          if (!take(e)) {
            gap = true;
            controller.abort();
          }
        },
        controller.signal,
      );
    } catch (error) {
      if (stopped) {
        return undefined;
      }
      if (!gap) {
        return reconnect(error.message);
      }
    }
    if (stopped) {
      return undefined;
    }
    if (ended && !gap) {
      // Said once every event is on the page.
      await new Promise((resolve) => {
        const check = () => (queued.length === 0 && !frame ? resolve() : requestAnimationFrame(check));
        check();
      });
      return setState('Ended', 'ended');
    }
    // The stream ended early (the server restarting) or skipped: read again after the last.
    return reconnect(gap ? 'a gap in the events' : 'the stream ended');
  }

  function reconnect(why) {
    if (stopped) {
      return;
    }
    retry += 1;
    const delay = Math.min(10_000, 250 * 2 ** Math.min(retry, 6));
    setState(`Reconnecting (attempt ${retry}; ${why})…`, 'reconnecting');
    clearTimeout(retryTimer);
    retryTimer = setTimeout(stream, delay);
  }

  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    try {
      await gql('mutation($id: ID!) { cancelRun(runId: $id, reason: "cancelled from the console") { status } }', { id });
    } catch (error) {
      setState(`Not cancelled: ${error.message}`, 'error');
    }
    cancel.disabled = false;
  });

  loadRun().then(stream, (error) => setState(`Cannot open the run: ${error.message}`, 'error'));
  return () => {
    stopped = true;
    clearTimeout(retryTimer);
    cancelAnimationFrame(frame);
    controller?.abort();
  };
}
