// graphql-sse's client ("distinct connections" mode: one HTTP request per operation, an
// event stream of `next` results and a `complete`), with Node's own fetch.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { createClient } from 'graphql-sse';

import {
  HTTP_URL,
  Inbox,
  assertArgumentErrors,
  connectDb,
  finalQuery,
  finalRows,
  invalidSubscription,
  liveUpdatesScenario,
} from './helpers.js';

const TABLE = 'items_sse';

describe('graphql-sse over Server-Sent Events', () => {
  let db;
  let client;

  before(async () => {
    db = await connectDb();
    client = createClient({ url: HTTP_URL, singleConnection: false, retryAttempts: 0 });
  });

  after(async () => {
    client.dispose();
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
            error: (error) => inbox.push(error instanceof Error ? error : new Error(JSON.stringify(error))),
            complete: () => {},
          },
        ),
    });
  });

  test('a one-shot query, then complete', async () => {
    const results = [];
    await new Promise((resolve, reject) => {
      client.subscribe({ query: finalQuery(TABLE) }, { next: (r) => results.push(r), error: reject, complete: resolve });
    });
    assert.deepEqual(results, [{ data: { [TABLE]: finalRows } }]);
  });

  test('an invalid argument arrives as GraphQL errors with a code', async () => {
    const inbox = new Inbox();
    const stop = client.subscribe(
      { query: invalidSubscription(TABLE) },
      { next: (r) => inbox.push(r), error: (e) => inbox.push({ failed: e }), complete: () => {} },
    );
    try {
      const first = await inbox.next('the error result');
      assert.ok(Array.isArray(first.errors), `expected GraphQL errors, got ${JSON.stringify(first)}`);
      assertArgumentErrors(first.errors);
      assert.equal(first.errors[0].extensions.code, 'GRAPHQL_VALIDATION_FAILED');
    } finally {
      stop();
    }
  });
});
