// Sources: each source this credential may read, its feed's state, its rows and its changes
// per second (viewer { sources }), polled every two seconds.
import { esc, gql, poll } from './api.js';

const QUERY = '{ viewer { sources { name status reason rows changesPerSecond } } }';

export function sourcesPage(root) {
  root.innerHTML = `<h1>Sources</h1><p class="state" role="status">Loading…</p>
    <table aria-label="Sources"><thead><tr><th scope="col">Source</th><th scope="col">Status</th>
    <th scope="col">Rows</th><th scope="col">Changes/s</th><th scope="col"></th></tr></thead><tbody></tbody></table>`;
  const state = root.querySelector('.state');
  const body = root.querySelector('tbody');

  async function refresh() {
    try {
      const { viewer } = await gql(QUERY);
      state.textContent = viewer.sources.length === 0 ? 'This credential may read no source.' : '';
      state.classList.remove('error');
      body.innerHTML = viewer.sources
        .map(
          (s) => `<tr data-source="${esc(s.name)}">
            <td><a href="#/live/${encodeURIComponent(s.name)}">${esc(s.name)}</a></td>
            <td class="status-${esc(s.status)}">${esc(s.status)}${s.reason ? `: ${esc(s.reason)}` : ''}</td>
            <td>${s.rows ?? '–'}</td>
            <td>${s.changesPerSecond.toFixed(1)}</td>
            <td><a href="#/live/${encodeURIComponent(s.name)}" aria-label="Live table of ${esc(s.name)}">live table</a></td>
          </tr>`,
        )
        .join('');
    } catch (error) {
      state.textContent = `Cannot read the sources: ${error.message}`;
      state.classList.add('error');
    }
  }
  const poller = poll(refresh);
  poller.now();
  return poller.stop;
}
