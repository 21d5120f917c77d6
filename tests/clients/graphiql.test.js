// GraphiQL as a browser runs it: headless Chromium (Debian's `chromium`, driven by
// playwright-core) opens the page that `GET /graphql` serves to browsers with every request to
// anywhere but the server refused (the page and everything it loads are embedded in the
// binary), types a subscription into GraphiQL's query editor and a header into its Headers tab
// (as the demo's banner tells a user to paste a token), runs it with the execute button, sees
// the rows written through `pg` appear live in the result pane, and the header sent in the
// WebSocket's `connection_init` (where the server reads credentials).
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { chromium } from 'playwright-core';

import { DEADLINE_MS, HTTP_URL, WS_URL, connectDb } from './helpers.js';

const TABLE = 'items_graphiql';
const SUBSCRIPTION = `subscription { ${TABLE} { operation data { id name score } } }`;
/** A header line as `viewcast demo` prints it (this server has no auth: it is carried, not checked). */
const HEADERS = '{"Authorization": "Bearer graphiql-test-token"}';

const CHROMIUM = process.env.VIEWCAST_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** `page.waitForFunction` until GraphiQL's result pane contains every one of `texts`. */
async function resultPaneShows(page, texts, what) {
  try {
    await page.waitForFunction(
      (expected) => {
        const pane = document.querySelector('.graphiql-response');
        return pane !== null && expected.every((text) => pane.innerText.includes(text));
      },
      texts,
      { timeout: DEADLINE_MS, polling: 100 },
    );
  } catch (error) {
    const shown = await page
      .locator('.graphiql-response')
      .innerText()
      .catch(() => '(no result pane)');
    throw new Error(`the result pane never showed ${what} (${texts.join(', ')}); it shows:\n${shown}`, {
      cause: error,
    });
  }
}

describe('GraphiQL in headless Chromium', () => {
  let db;
  let browser;

  before(async () => {
    db = await connectDb();
  });

  after(async () => {
    await browser?.close();
    await db.end();
  });

  test('runs a subscription typed into the editor and shows live updates', async (t) => {
    assert.ok(
      existsSync(CHROMIUM),
      `no Chromium at ${CHROMIUM}: install Debian's \`chromium\` package (apt-get install chromium; ` +
        '.ci/run does) or set VIEWCAST_CHROMIUM to a Chromium executable',
    );
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
    const page = await browser.newPage();
    page.setDefaultTimeout(DEADLINE_MS);

    // Nothing but the server: every other request is refused and listed in the failure.
    const serverOrigin = new URL(HTTP_URL).origin;
    const offOrigin = [];
    const loaded = [];
    await page.route('**/*', async (route) => {
      const url = new URL(route.request().url());
      if (url.origin === serverOrigin) {
        loaded.push(url.pathname);
        return route.continue();
      }
      offOrigin.push(url.href);
      return route.abort('blockedbyclient');
    });

    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(String(error)));
    page.on('console', (message) => {
      if (message.type() === 'error') {
        pageErrors.push(message.text());
      }
    });
    // The frames the server sends on GraphiQL's WebSocket, to check the transport it used.
    const sockets = [];
    page.on('websocket', (socket) => {
      const entry = { url: socket.url(), received: [], sent: [] };
      sockets.push(entry);
      socket.on('framereceived', ({ payload }) => entry.received.push(JSON.parse(String(payload))));
      socket.on('framesent', ({ payload }) => entry.sent.push(JSON.parse(String(payload))));
    });

    try {
      await db.query(`INSERT INTO ${TABLE} (id, name, score) VALUES (1, 'already-there', 10)`);

      // A browser navigation (Accept: text/html...) to the GraphQL endpoint gets GraphiQL.
      const response = await page.goto(HTTP_URL);
      assert.match(response.request().headers().accept, /text\/html/);
      assert.equal(response.status(), 200);
      assert.match(response.headers()['content-type'], /^text\/html/);

      const editor = page.locator('.graphiql-query-editor .CodeMirror');
      try {
        await editor.waitFor({ state: 'visible' });
      } catch (error) {
        throw new Error(
          `GraphiQL's query editor never appeared.\nRequests off the server: ${JSON.stringify(offOrigin, null, 2)}\n` +
            `Page errors: ${JSON.stringify(pageErrors, null, 2)}`,
          { cause: error },
        );
      }
      assert.deepEqual(offOrigin, [], 'the page asks nothing of any other server');
      for (const asset of ['/assets/graphiql-4.1.2/graphiql.min.js', '/assets/graphiql-4.1.2/graphiql.min.css']) {
        assert.ok(loaded.includes(asset), `the page loaded ${asset} (it loaded ${loaded.join(', ')})`);
      }

      // Replace the editor's text as a user would: focus, select all, type. insertText types the
      // whole string as one input, so the editor's bracket auto-closing adds nothing.
      await editor.click();
      await page.keyboard.press('ControlOrMeta+A');
      await page.keyboard.insertText(SUBSCRIPTION);
      assert.equal(
        await editor.evaluate((element) => element.CodeMirror.getValue()),
        SUBSCRIPTION,
        'the query editor holds the subscription',
      );

      // GraphiQL parses the editor's text after a 100 ms debounce; until then its fetcher does
      // not know the operation is a subscription and would send it over HTTP. Wait for the
      // parsed document, as a user would wait for the editor to settle.
      await page.waitForFunction(
        () =>
          document.querySelector('.graphiql-query-editor .CodeMirror')?.CodeMirror?.documentAST?.definitions?.[0]
            ?.operation === 'subscription',
        undefined,
        { timeout: DEADLINE_MS, polling: 50 },
      );
      // The Headers tab, below the query editor: paste the header line there.
      await page.locator('.graphiql-editor-tools button[data-name="headers"]').click();
      const headers = page.locator('.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror');
      await headers.click();
      await page.keyboard.press('ControlOrMeta+A');
      await page.keyboard.insertText(HEADERS);
      assert.equal(
        await headers.evaluate((element) => element.CodeMirror.getValue()),
        HEADERS,
        'the headers editor holds the header line',
      );

      await page.locator('.graphiql-execute-button').click();
      await resultPaneShows(page, ['"already-there"', '"INSERT"'], 'the snapshot row');

      await db.query(`INSERT INTO ${TABLE} (id, name, score) VALUES (2, 'typed-live', 20)`);
      await resultPaneShows(page, ['"INSERT"', '"typed-live"', '"score": 20'], 'the inserted row');

      await db.query(`UPDATE ${TABLE} SET score = 77 WHERE id = 2`);
      // An update carries the key and the changed columns (the others are null).
      await resultPaneShows(page, ['"UPDATE"', '"id": 2', '"score": 77'], 'the updated row');

      const socket = sockets.find((s) => s.url === WS_URL);
      assert.ok(socket, `GraphiQL opened a WebSocket to ${WS_URL} (it opened ${JSON.stringify(sockets.map((s) => s.url))})`);
      assert.equal(socket.received[0]?.type, 'connection_ack', 'graphql-transport-ws: the server acknowledges first');
      assert.deepEqual(
        socket.sent[0],
        { type: 'connection_init', payload: JSON.parse(HEADERS) },
        'GraphiQL sends the Headers tab as the connection_init payload',
      );
      assert.ok(
        socket.received.some((f) => f.type === 'next' && f.payload?.data?.[TABLE]?.data?.name === 'typed-live'),
        'the live row came as a graphql-transport-ws `next` frame',
      );
    } catch (error) {
      const screenshot = join(mkdtempSync(join(tmpdir(), 'viewcast-graphiql-')), 'failure.png');
      await page.screenshot({ path: screenshot, fullPage: true }).then(
        () => {
          t.diagnostic(`screenshot of the failed page: ${screenshot}`);
          console.error(`graphiql.test.js: screenshot of the failed page: ${screenshot}`);
        },
        (e) => console.error(`graphiql.test.js: no screenshot of the failed page: ${e}`),
      );
      throw error;
    }
  });
});
