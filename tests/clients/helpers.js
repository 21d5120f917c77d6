// Shared by the client test files: the environment, an inbox that client callbacks push into
// and tests await with a deadline, and the scenario every client must pass (seed rows, subscribe
// with a filter, write through `pg`, assert the exact updates).
import assert from 'node:assert/strict';
import pg from 'pg';
import WebSocket from 'ws';

/** How long a test waits for one expected message before it fails. */
export const DEADLINE_MS = 60_000;

/** An environment variable that tests/clients.rs sets; fails clearly when run by hand. */
export function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: run these tests with \`cargo test --test clients\`, which starts ` +
        'PostgreSQL and the server and sets VIEWCAST_HTTP, VIEWCAST_WS and DATABASE_URL',
    );
  }
  return value;
}

export const HTTP_URL = env('VIEWCAST_HTTP');
export const WS_URL = env('VIEWCAST_WS');
export const DATABASE_URL = env('DATABASE_URL');

export const COLUMNS = ['id', 'name', 'score', 'active', 'rank'];
export const SELECTION = `operation data { ${COLUMNS.join(' ')} } fields`;
export const FILTER = 'where: {score: {_gte: 50}}';

/** `promise`, or a rejection naming `what` after `ms`. */
export function withDeadline(promise, what, ms = DEADLINE_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Values pushed by a client's callbacks, awaited in order by the test. */
export class Inbox {
  #items = [];
  #waiters = [];

  push(item) {
    const waiter = this.#waiters.shift();
    if (waiter) {
      waiter(item);
    } else {
      this.#items.push(item);
    }
  }

  /** The next value; rejects if none arrives within the deadline. */
  next(what) {
    if (this.#items.length > 0) {
      return Promise.resolve(this.#items.shift());
    }
    let waiter;
    const arrived = new Promise((resolve) => {
      waiter = resolve;
      this.#waiters.push(waiter);
    });
    return withDeadline(arrived, what).catch((error) => {
      this.#waiters = this.#waiters.filter((w) => w !== waiter);
      throw error;
    });
  }

  /** Values received and not yet taken. */
  get pending() {
    return [...this.#items];
  }
}

/** A copy of `value` without the `__typename` fields that Apollo adds to every selection. */
export function withoutTypename(value) {
  if (Array.isArray(value)) {
    return value.map(withoutTypename);
  }
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([key]) => key !== '__typename')
        .map(([key, v]) => [key, withoutTypename(v)]),
    );
  }
  return value;
}

/**
 * A `ws` WebSocket class that records every frame in both directions (parsed), so that a test
 * can check what the server sent on the wire for one operation, beyond what the client shows.
 */
export function wireTap() {
  const sent = [];
  const received = [];
  let watchers = [];
  class TappedWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (event) => {
        const frame = JSON.parse(String(event.data));
        received.push(frame);
        watchers = watchers.filter((watcher) => !watcher(frame));
      });
    }

    send(data, ...rest) {
      sent.push(JSON.parse(String(data)));
      return super.send(data, ...rest);
    }
  }
  /** The types of the server's messages for the operation the client started with `query`. */
  const serverTypesFor = (query) => {
    const start = sent.find((f) => ['subscribe', 'start'].includes(f.type) && f.payload?.query === query);
    assert.ok(start, `the client never started ${query}`);
    return received.filter((f) => f.id === start.id).map((f) => f.type);
  };
  /** Resolves once the server has sent a frame of type `type`. */
  const receivedType = (type) =>
    withDeadline(
      new Promise((resolve) => {
        const watcher = (frame) => frame.type === type && (resolve(), true);
        if (!received.some(watcher)) {
          watchers.push(watcher);
        }
      }),
      `a ${type} message`,
    );
  return { WebSocket: TappedWebSocket, sent, received, serverTypesFor, receivedType };
}

export async function connectDb() {
  const db = new pg.Client({ connectionString: DATABASE_URL });
  await db.connect();
  return db;
}

const row = (id, name, score, active, rank) => ({ id, name, score, active, rank });
const insert = (data) => ({ operation: 'INSERT', data, fields: COLUMNS });
const del = (data) => ({ operation: 'DELETE', data, fields: COLUMNS });

/** POSTs a query to the server over HTTP (no client library) and returns `data`. */
async function httpQuery(query) {
  const response = await fetch(HTTP_URL, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query }),
  });
  assert.equal(response.status, 200);
  const body = await response.json();
  assert.equal(body.errors, undefined, JSON.stringify(body.errors));
  return body.data;
}

/**
 * Inserts the seed rows and waits until the server's cache holds them, so that the
 * subscription that follows receives them in its snapshot rather than as live changes.
 */
async function seed(db, table) {
  await db.query(
    `INSERT INTO ${table} (id, name, score, active, rank) VALUES
       (1, 'a', 10, true, 'bronze'), (2, 'b', 60, true, 'silver'), (3, 'c', 90, false, 'gold')`,
  );
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const data = await httpQuery(`{ ${table}(order_by: [{id: asc}]) { id } }`);
    const ids = data[table].map((r) => r.id);
    if (ids.join() === '1,2,3') {
      return;
    }
    assert.ok(Date.now() < deadline, `the server never saw the seed rows; it has ${ids}`);
    // Polling the server's state (the replication stream has no other observable end).
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/**
 * The scenario every client runs. `subscribe(query, inbox)` starts a subscription with the
 * client under test, pushes each update object (`result.data[table]`) into `inbox`, and
 * returns a function that stops it; GraphQL errors must fail the test (push an Error).
 */
export async function liveUpdatesScenario({ db, table, subscribe }) {
  await seed(db, table);
  const inbox = new Inbox();
  const stop = subscribe(`subscription { ${table}(${FILTER}) { ${SELECTION} } }`, inbox);
  try {
    const next = async (what) => {
      const update = await inbox.next(what);
      if (update instanceof Error) {
        throw update;
      }
      return withoutTypename(update);
    };

    // The snapshot: the rows that match, as INSERTs with every column (in no promised order).
    const snapshot = [await next('snapshot row 1 of 2'), await next('snapshot row 2 of 2')];
    snapshot.sort((x, y) => x.data.id - y.data.id);
    assert.deepEqual(snapshot, [
      insert(row(2, 'b', 60, true, 'silver')),
      insert(row(3, 'c', 90, false, 'gold')),
    ]);

    // A row inserted outside the filter sends nothing: the next update is the matching insert.
    await db.query(`INSERT INTO ${table} VALUES (5, 'e', 5, true, 'bronze')`);
    await db.query(`INSERT INTO ${table} VALUES (4, 'd', 70, true, 'gold')`);
    assert.deepEqual(await next('INSERT of row 4'), insert(row(4, 'd', 70, true, 'gold')));

    // An update inside the filter: the key and the changed column.
    await db.query(`UPDATE ${table} SET name = 'b2' WHERE id = 2`);
    assert.deepEqual(await next('UPDATE of row 2'), {
      operation: 'UPDATE',
      data: row(2, 'b2', null, null, null),
      fields: ['name'],
    });

    // Leaving the filter: DELETE with the last known row.
    await db.query(`UPDATE ${table} SET score = 20 WHERE id = 3`);
    assert.deepEqual(await next('DELETE of row 3 (leaves)'), del(row(3, 'c', 90, false, 'gold')));

    // Entering the filter: INSERT with every column.
    await db.query(`UPDATE ${table} SET score = 55 WHERE id = 1`);
    assert.deepEqual(await next('INSERT of row 1 (enters)'), insert(row(1, 'a', 55, true, 'bronze')));

    // A deleted row: DELETE with its last known values.
    await db.query(`DELETE FROM ${table} WHERE id = 4`);
    assert.deepEqual(await next('DELETE of row 4'), del(row(4, 'd', 70, true, 'gold')));

    assert.deepEqual(inbox.pending, [], 'no update beyond the expected ones');
  } finally {
    stop();
  }
}

/** The one-shot query each client runs after the scenario, and the rows it must return. */
export const finalQuery = (table) =>
  `query { ${table}(order_by: [{id: asc}]) { ${COLUMNS.join(' ')} } }`;
export const finalRows = [
  row(1, 'a', 55, true, 'bronze'),
  row(2, 'b2', 60, true, 'silver'),
  row(3, 'c', 20, false, 'gold'),
  row(5, 'e', 5, true, 'bronze'),
];

/** A subscription whose argument does not type-check (a string where `Int` is expected). */
export const invalidSubscription = (table) =>
  `subscription { ${table}(where: {score: {_gte: "x"}}) { ${SELECTION} } }`;

/** Asserts that `errors` are GraphQL errors naming the rejected argument and its type. */
export function assertArgumentErrors(errors) {
  assert.ok(Array.isArray(errors) && errors.length > 0, `GraphQL errors, got ${errors}`);
  for (const error of errors) {
    assert.equal(typeof error.message, 'string');
  }
  assert.match(errors.map((e) => e.message).join('\n'), /where\.score\._gte.*Int/);
}
