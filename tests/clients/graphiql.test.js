// GraphiQL as a browser runs it: headless Chromium (Debian's `chromium`, driven by
// playwright-core) opens the page that `GET /graphql` serves to browsers, types a subscription
// into GraphiQL's query editor and a header into its Headers tab (as the demo's banner tells
// a user to paste a token), runs it with the execute button, sees the rows written through
// `pg` appear live in the result pane, and the header sent in the WebSocket's
// `connection_init` (where the server reads credentials). The page loads GraphiQL, React and ReactDOM from
// unpkg.com; this test answers those requests from the same files installed in node_modules
// (the devDependencies graphiql@4, react@18, react-dom@18), so the real GraphiQL code runs
// offline.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, normalize, sep } from 'node:path';
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

const require = createRequire(import.meta.url);

/** The packages the page loads from unpkg.com, found by the name in the URL's first segment. */
const CDN_PACKAGES = ['graphiql', 'react', 'react-dom'];

const CONTENT_TYPES = { '.js': 'application/javascript', '.css': 'text/css', '.map': 'application/json' };

/**
 * The local file for an unpkg.com URL path such as `/graphiql@4/graphiql.min.js`: the package
 * must be one of CDN_PACKAGES and its installed version must match the requested one (a major
 * version such as `4` or an exact version). Returns a reason instead when it cannot be served.
 */
function localAsset(pathname) {
  const match = /^\/((?:@[^/]+\/)?[^/@]+)@([^/]+)\/(.+)$/.exec(pathname);
  if (!match) {
    return { missing: 'not of the form /<package>@<version>/<file>' };
  }
  const [, name, wanted, file] = match;
  if (!CDN_PACKAGES.includes(name)) {
    return { missing: `${name} is not one of the packages served locally (${CDN_PACKAGES.join(', ')})` };
  }
  const root = dirname(require.resolve(`${name}/package.json`));
  const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  if (wanted !== version && wanted !== version.split('.')[0]) {
    return { missing: `the page wants ${name}@${wanted}, tests/clients has ${name}@${version}` };
  }
  const path = normalize(join(root, file));
  if (!path.startsWith(root + sep) || !existsSync(path)) {
    return { missing: `${name}@${version} has no file ${file}` };
  }
  const extension = path.slice(path.lastIndexOf('.'));
  return { path, contentType: CONTENT_TYPES[extension] ?? 'application/octet-stream' };
}

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

    // Everything off the server's own origin: unpkg.com from node_modules, graphql.org's favicon
    // as an empty icon, anything else refused and listed in the failure.
    const serverOrigin = new URL(HTTP_URL).origin;
    const missing = [];
    const served = [];
    await page.route('**/*', async (route) => {
      const url = new URL(route.request().url());
      if (url.origin === serverOrigin) {
        return route.continue();
      }
      if (url.hostname === 'unpkg.com') {
        const asset = localAsset(url.pathname);
        if (asset.path) {
          served.push(url.pathname);
          return route.fulfill({
            status: 200,
            path: asset.path,
            contentType: asset.contentType,
            headers: { 'access-control-allow-origin': '*' },
          });
        }
        missing.push(`${url.href}: ${asset.missing}`);
        return route.fulfill({ status: 404, body: asset.missing });
      }
      if (url.hostname === 'graphql.org' && url.pathname === '/favicon.ico') {
        return route.fulfill({ status: 200, contentType: 'image/x-icon', body: '' });
      }
      missing.push(`${url.href}: not served offline by this test`);
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
          `GraphiQL's query editor never appeared.\nAssets not served: ${JSON.stringify(missing, null, 2)}\n` +
            `Page errors: ${JSON.stringify(pageErrors, null, 2)}`,
          { cause: error },
        );
      }
      assert.deepEqual(missing, [], 'every asset the page loads is served from node_modules');
      for (const asset of ['/graphiql@4/graphiql.min.js', '/graphiql@4/graphiql.min.css']) {
        assert.ok(served.includes(asset), `the page loaded ${asset} (it loaded ${served.join(', ')})`);
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
