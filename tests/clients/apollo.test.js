// Apollo Client the way its documentation sets it up: subscriptions over `GraphQLWsLink`
// (graphql-ws, subprotocol graphql-transport-ws), queries over `HttpLink`, an InMemoryCache.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { ApolloClient, ApolloLink, CombinedGraphQLErrors, HttpLink, InMemoryCache, gql } from '@apollo/client/core';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { getMainDefinition } from '@apollo/client/utilities';
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
  withoutTypename,
} from './helpers.js';

const TABLE = 'items_apollo';

// GraphQLWsLink's error handler reads the global `WebSocket.CLOSED`, which Node 20 lacks
// (Node 22 has it); without this, a GraphQL error becomes a ReferenceError inside Apollo.
globalThis.WebSocket ??= WebSocket;

describe('Apollo Client with GraphQLWsLink', () => {
  let db;
  let wsClient;
  let client;

  before(async () => {
    db = await connectDb();
    wsClient = createClient({ url: WS_URL, webSocketImpl: WebSocket, retryAttempts: 0 });
    const isSubscription = ({ query }) => {
      const definition = getMainDefinition(query);
      return definition.kind === 'OperationDefinition' && definition.operation === 'subscription';
    };
    client = new ApolloClient({
      link: ApolloLink.split(isSubscription, new GraphQLWsLink(wsClient), new HttpLink({ uri: HTTP_URL })),
      cache: new InMemoryCache(),
    });
  });

  after(async () => {
    client.stop();
    await wsClient.dispose();
    await db.end();
  });

  test('a filtered subscription gets the snapshot, then live changes', async () => {
    await liveUpdatesScenario({
      db,
      table: TABLE,
      subscribe: (query, inbox) => {
        const subscription = client.subscribe({ query: gql(query) }).subscribe({
          next: (result) =>
            inbox.push(result.error ? new Error(`subscription error: ${result.error}`) : result.data[TABLE]),
          error: (error) => inbox.push(new Error(`subscription failed: ${error}`)),
          complete: () => inbox.push(new Error('subscription completed unexpectedly')),
        });
        return () => subscription.unsubscribe();
      },
    });
  });

  test('a one-shot query over HTTP', async () => {
    const result = await client.query({ query: gql(finalQuery(TABLE)), fetchPolicy: 'network-only' });
    assert.equal(result.error, undefined);
    assert.deepEqual(withoutTypename(result.data), { [TABLE]: finalRows });
  });

  test('an invalid argument reaches the result error as GraphQL errors', async () => {
    const inbox = new Inbox();
    const subscription = client.subscribe({ query: gql(invalidSubscription(TABLE)) }).subscribe({
      next: (result) => inbox.push({ next: result }),
      error: (error) => inbox.push({ error }),
      complete: () => inbox.push({ complete: true }),
    });
    try {
      // Apollo Client 4 reports a subscription's errors as `result.error` (errorPolicy "none").
      const first = await inbox.next('the error result');
      assert.ok(first.next?.error, `expected a result with an error, got ${JSON.stringify(first)}`);
      assert.equal(first.next.data, undefined);
      assert.ok(CombinedGraphQLErrors.is(first.next.error), `GraphQL errors, got ${first.next.error}`);
      assertArgumentErrors(first.next.error.errors);
    } finally {
      subscription.unsubscribe();
    }
  });
});
