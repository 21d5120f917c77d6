// The legacy subscriptions-transport-ws `SubscriptionClient` (subprotocol graphql-ws), still
// used by older Apollo set-ups (`WebSocketLink`).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { SubscriptionClient } from 'subscriptions-transport-ws';

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

const TABLE = 'items_legacy';

describe('subscriptions-transport-ws SubscriptionClient', () => {
  const tap = wireTap();
  const disconnects = [];
  let db;
  let client;

  /** Runs a one-shot operation to its end; resolves with its results. */
  const execute = (query) => {
    const results = [];
    return withDeadline(
      new Promise((resolve, reject) => {
        client.request({ query }).subscribe({
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
    client = new SubscriptionClient(WS_URL, { reconnect: false }, tap.WebSocket);
    client.onDisconnected(() => disconnects.push(new Error('disconnected')));
    await withDeadline(new Promise((resolve) => client.onConnected(resolve)), 'connection_ack');
  });

  after(async () => {
    client.close();
    await db.end();
  });

  test('the server selects the graphql-ws subprotocol and acknowledges with a keep-alive', async () => {
    assert.equal(client.client.protocol, 'graphql-ws');
    await tap.receivedType('ka');
    assert.deepEqual(
      tap.received.slice(0, 2).map((f) => f.type),
      ['connection_ack', 'ka'],
    );
  });

  test('a filtered subscription gets the snapshot, then live changes', async () => {
    await liveUpdatesScenario({
      db,
      table: TABLE,
      subscribe: (query, inbox) => {
        const subscription = client.request({ query }).subscribe({
          next: (result) =>
            inbox.push(result.errors ? new Error(JSON.stringify(result.errors)) : result.data[TABLE]),
          error: (error) => inbox.push(new Error(`subscription failed: ${JSON.stringify(error)}`)),
          complete: () => inbox.push(new Error('subscription completed unexpectedly')),
        });
        return () => subscription.unsubscribe();
      },
    });
  });

  test('a one-shot query over the socket: one `data`, then `complete`', async () => {
    const query = finalQuery(TABLE);
    assert.deepEqual(await execute(query), [{ data: { [TABLE]: finalRows } }]);
    assert.deepEqual(tap.serverTypesFor(query), ['data', 'complete']);
  });

  test('an invalid argument reaches the error callback', async () => {
    const query = invalidSubscription(TABLE);
    const inbox = new Inbox();
    const subscription = client.request({ query }).subscribe({
      next: (result) => inbox.push({ next: result }),
      error: (error) => inbox.push({ error }),
      complete: () => inbox.push({ complete: true }),
    });
    try {
      const first = await inbox.next('the error callback');
      assert.ok('error' in first, `expected the error callback, got ${JSON.stringify(first)}`);
      // SubscriptionClient hands the callback the first error of the list.
      assertArgumentErrors([first.error]);

      // On the wire: one `error` ends the operation. A later operation on the same socket shows
      // the connection is still fine and that nothing else was queued for the failed one.
      await execute(finalQuery(TABLE));
      assert.deepEqual(tap.serverTypesFor(query), ['error']);
      assert.deepEqual(disconnects, [], 'an operation error is not a connection error');
    } finally {
      subscription.unsubscribe();
    }
  });
});
