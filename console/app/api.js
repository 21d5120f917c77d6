// The console's only way to the server: the public API, as any client uses it. GraphQL over
// HTTP for one-shot reads, graphql-ws (the vendored graphql-ws client) for live data, with
// the credential of this tab (sessionStorage: gone when the tab closes) on every request.

const STORE = 'viewcast.credential';

/** The credential this tab uses: {kind: 'bearer'|'admin', value}, or null. */
export function credential() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE));
  } catch {
    return null;
  }
}

export function setCredential(value) {
  if (value && value.value) {
    sessionStorage.setItem(STORE, JSON.stringify(value));
  } else {
    sessionStorage.removeItem(STORE);
  }
}

/** The headers that carry the credential (also the WebSocket's connection_init payload). */
export function authHeaders() {
  const c = credential();
  if (!c || !c.value) {
    return {};
  }
  return c.kind === 'admin' ? { 'x-hasura-admin-secret': c.value } : { Authorization: `Bearer ${c.value}` };
}

/** An error from the API, with its `extensions.code`. */
export class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

/** Runs a query or mutation over HTTP; resolves to its `data`, rejects with an ApiError. */
export async function gql(query, variables = {}) {
  let response;
  try {
    response = await fetch('/graphql', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...authHeaders() },
      body: JSON.stringify({ query, variables }),
    });
  } catch (error) {
    throw new ApiError(`the server cannot be reached (${error.message})`, 'NETWORK');
  }
  const body = await response.json().catch(() => null);
  if (!body) {
    throw new ApiError(`HTTP ${response.status}`, 'HTTP');
  }
  if (body.errors && body.errors.length > 0) {
    const first = body.errors[0];
    throw new ApiError(body.errors.map((e) => e.message).join('; '), first.extensions?.code);
  }
  return body.data;
}

/** A graphql-ws client for this server. It does not retry by itself: the pages resume with
 * their own cursor, which a blind retry would not send. */
export function wsClient(on = {}) {
  const url = new URL('/graphql', window.location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return window.graphqlWs.createClient({
    url: url.href,
    connectionParams: () => authHeaders(),
    retryAttempts: 0,
    keepAlive: 15_000,
    on,
  });
}

/** Runs `step` every `ms` (2 s by default) after the last run ended, from the first `now()`
 * until `stop()`; `now()` runs it at once (after the run in flight, if any). */
export function poll(step, ms = 2_000) {
  let timer = 0;
  let stopped = false;
  let running = false;
  let again = false;
  async function now() {
    clearTimeout(timer);
    if (stopped) {
      return;
    }
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await step();
    } finally {
      running = false;
    }
    if (again) {
      again = false;
      now();
    } else if (!stopped) {
      timer = setTimeout(now, ms);
    }
  }
  return {
    now,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/** Escapes text for HTML. */
export function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
