// urql's core client as its documentation sets it up: `subscriptionExchange` forwarding
// subscriptions to a graphql-ws client (graphql-transport-ws), `fetchExchange` for queries.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { Client, CombinedError, fetchExchange, subscriptionExchange } from '@urql/core';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

import {
  HTTP_URL,
  Inbox,
  WS_URL,
  assertArgumentErrors,
  connectDb,
  finalQuery,
  finalRows,
  invalidSubscription,
  liveUpdatesScenario,
} from './helpers.js';

const TABLE = 'items_urql';

describe('urql with subscriptionExchange over graphql-ws', () => {
  let db;
  let wsClient;
  let client;

  before(async () => {
    db = await connectDb();
    wsClient = createClient({ url: WS_URL, webSocketImpl: WebSocket, retryAttempts: 0 });
    client = new Client({
      url: HTTP_URL,
      exchanges: [
        subscriptionExchange({
          forwardSubscription(request) {
            const input = { ...request, query: request.query || '' };
            return {
              subscribe(sink) {
                return { unsubscribe: wsClient.subscribe(input, sink) };
              },
            };
          },
        }),
        fetchExchange,
      ],
    });
  });

  after(async () => {
    await wsClient.dispose();
    await db.end();
  });

  test('a filtered subscription gets the snapshot, then live changes', async () => {
    await liveUpdatesScenario({
      db,
      table: TABLE,
      subscribe: (query, inbox) => {
        const { unsubscribe } = client.subscription(query, {}).subscribe((result) =>
          inbox.push(result.error ? new Error(`subscription error: ${result.error}`) : result.data[TABLE]),
        );
        return unsubscribe;
      },
    });
  });

  test('a one-shot query over HTTP', async () => {
    const result = await client.query(finalQuery(TABLE), {}, { requestPolicy: 'network-only' }).toPromise();
    assert.equal(result.error, undefined);
    assert.deepEqual(result.data, { [TABLE]: finalRows });
  });

  test('an invalid argument reaches the result error as GraphQL errors', async () => {
    const inbox = new Inbox();
    const { unsubscribe } = client.subscription(invalidSubscription(TABLE), {}).subscribe((result) => inbox.push(result));
    try {
      // urql delivers errors in the result (`result.error`, a CombinedError).
      const first = await inbox.next('the error result');
      assert.ok(first.error instanceof CombinedError, `expected an error result, got ${JSON.stringify(first)}`);
      assert.equal(first.error.networkError, undefined);
      assertArgumentErrors(first.error.graphQLErrors);
    } finally {
      unsubscribe();
    }
  });
});
