// The console's shell: the credential form, and a router over the URL's hash
// (#/sources, #/live/<source>?where=…&columns=…&sort=…, #/runs?kind=…&status=…, #/runs/<id>,
// #/triggers, #/triggers/<source>/<name>),
// so that every view can be linked to.
import { credential, gql, setCredential } from './api.js';
import { sourcesPage } from './sources.js';
import { livePage } from './live.js';
import { runPage, runsPage } from './runs.js';
import { triggerPage, triggersPage } from './triggers.js';

const page = document.getElementById('page');
let unmount = () => {};

/** The route in the hash: a path of segments and its query parameters. */
function route() {
  const hash = window.location.hash.replace(/^#/, '') || '/sources';
  const [path, query = ''] = hash.split('?');
  return { segments: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query) };
}

function show() {
  unmount();
  unmount = () => {};
  const { segments, params } = route();
  for (const link of document.querySelectorAll('nav a[data-page]')) {
    if (link.dataset.page === (segments[0] === 'live' ? 'sources' : segments[0] || 'sources')) {
      link.setAttribute('aria-current', 'page');
    } else {
      link.removeAttribute('aria-current');
    }
  }
  page.replaceChildren();
  // A page's state (`data-state`, `data-rows`, …) is its own.
  for (const key of Object.keys(page.dataset)) {
    delete page.dataset[key];
  }
  if (segments[0] === 'live' && segments[1]) {
    unmount = livePage(page, segments[1], params);
  } else if (segments[0] === 'runs' && segments[1]) {
    unmount = runPage(page, segments[1]);
  } else if (segments[0] === 'runs') {
    unmount = runsPage(page, params);
  } else if (segments[0] === 'triggers' && segments[2]) {
    unmount = triggerPage(page, segments[1], segments[2]);
  } else if (segments[0] === 'triggers') {
    unmount = triggersPage(page);
  } else {
    unmount = sourcesPage(page);
  }
}

/** Says who the credential makes us (or why it does not work). */
async function whoami() {
  const status = document.getElementById('whoami');
  try {
    const data = await gql('{ viewer { role userId } }');
    const { role, userId } = data.viewer;
    status.textContent = userId ? `${role} (${userId})` : role;
    status.classList.remove('error');
  } catch (error) {
    status.textContent = error.message;
    status.classList.add('error');
  }
}

const form = document.getElementById('credential');
const kind = document.getElementById('credential-kind');
const value = document.getElementById('credential-value');
const saved = credential();
if (saved) {
  kind.value = saved.kind;
  value.value = saved.value;
}
form.addEventListener('submit', (event) => {
  event.preventDefault();
  setCredential({ kind: kind.value, value: value.value.trim() });
  whoami();
  show();
});

window.addEventListener('hashchange', show);
whoami();
show();
