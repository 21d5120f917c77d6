// The graphql-ws library's own client (`createClient`, subprotocol graphql-transport-ws), with
// the frames on the wire checked against the protocol as well.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { createClient } from 'graphql-ws';

import {
  Inbox,
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
});
