// The graphql-ws library's own client (`createClient`, subprotocol graphql-transport-ws), with
// the frames on the wire checked against the protocol as well.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { createClient } from 'graphql-ws';

import {
  FILTER,
  Inbox,
  SELECTION,
  WS_URL,
  assertArgumentErrors,
  connectDb,
  finalQuery,
  finalRows,
  invalidSubscription,
  liveUpdatesScenario,
  withDeadline,
  wireTap,
} from './helpers.js';

const TABLE = 'items_graphql_ws';

describe('graphql-ws createClient', () => {
  const tap = wireTap();
  const closes = [];
  let db;
  let client;

  /** Runs a one-shot operation to its end; resolves with its results. */
  const execute = (query) => {
    const results = [];
    return withDeadline(
      new Promise((resolve, reject) => {
        client.subscribe({ query }, {
          next: (result) => results.push(result),
          error: reject,
          complete: () => resolve(results),
        });
      }),
      `${query} to complete`,
    );
  };

  before(async () => {
    db = await connectDb();
    client = createClient({
      url: WS_URL,
      webSocketImpl: tap.WebSocket,
      // One socket for the whole file (a lazy client closes it whenever no operation runs).
      lazy: false,
      retryAttempts: 0,
      on: { closed: (event) => closes.push(event.code) },
    });
  });

  after(async () => {
    await client.dispose();
    await db.end();
  });

  test('a filtered subscription gets the snapshot, then live changes', async () => {
    await liveUpdatesScenario({
      db,
      table: TABLE,
      subscribe: (query, inbox) =>
        client.subscribe(
          { query },
          {
            next: (result) =>
              inbox.push(result.errors ? new Error(JSON.stringify(result.errors)) : result.data[TABLE]),
            error: (error) => inbox.push(new Error(`subscription failed: ${JSON.stringify(error)}`)),
            complete: () => inbox.push(new Error('subscription completed unexpectedly')),
          },
        ),
    });
    assert.equal(tap.received[0].type, 'connection_ack', 'the server acknowledges first');
  });

  test('a one-shot query over the socket: one `next`, then `complete`', async () => {
    const query = finalQuery(TABLE);
    assert.deepEqual(await execute(query), [{ data: { [TABLE]: finalRows } }]);
    assert.deepEqual(tap.serverTypesFor(query), ['next', 'complete']);
  });

  test('an invalid argument reaches the error callback as GraphQL errors', async () => {
    const query = invalidSubscription(TABLE);
    const inbox = new Inbox();
    client.subscribe({ query }, {
      next: (result) => inbox.push({ next: result }),
      error: (error) => inbox.push({ error }),
      complete: () => inbox.push({ complete: true }),
    });
    const first = await inbox.next('the error callback');
    assert.ok('error' in first, `expected the error callback, got ${JSON.stringify(first)}`);
    assertArgumentErrors(first.error);

    // On the wire: one `error` (a list of GraphQL errors) ends the operation, and no `complete`
    // follows it. A later operation on the same socket shows the connection is still fine and
    // that nothing else was queued for the failed one.
    await execute(finalQuery(TABLE));
    assert.deepEqual(tap.serverTypesFor(query), ['error']);
    assert.deepEqual(closes, [], 'an operation error does not close the socket');
  });

  test('a batched subscription: one result per window of updates', async () => {
    const query = `subscription { ${TABLE}_batches(${FILTER}, max_ms: 0, max_rows: 100) { updates { ${SELECTION} } cursor } }`;
    const inbox = new Inbox();
    const stop = client.subscribe({ query }, {
      next: (result) => inbox.push(result.errors ? new Error(JSON.stringify(result.errors)) : result.data[`${TABLE}_batches`]),
      error: (error) => inbox.push(new Error(`subscription failed: ${JSON.stringify(error)}`)),
      complete: () => inbox.push(new Error('subscription completed unexpectedly')),
    });
    try {
      const next = async (what) => {
        const window = await inbox.next(what);
        if (window instanceof Error) {
          throw window;
        }
        return window;
      };
      // The snapshot in one window: the rows the scenario left that match, in key order.
      const snapshot = await next('the snapshot window');
      assert.deepEqual(
        snapshot.updates.map((u) => [u.operation, u.data.id]),
        [['INSERT', 1], ['INSERT', 2]],
      );
      assert.equal(typeof snapshot.cursor, 'string', 'the last snapshot row carries the cursor');
      // One transaction of two matching rows: one window, with the transaction's cursor.
      await db.query(`INSERT INTO ${TABLE} VALUES (6, 'f', 80, true, 'gold'), (7, 'g', 90, true, 'gold')`);
      const window = await next('the window of the insert');
      assert.deepEqual(
        window.updates.map((u) => [u.operation, u.data.id, u.data.name]),
        [['INSERT', 6, 'f'], ['INSERT', 7, 'g']],
      );
      assert.notEqual(window.cursor, snapshot.cursor);
      assert.deepEqual(inbox.pending, [], 'nothing beyond the two windows');
    } finally {
      stop();
    }
  });
});
