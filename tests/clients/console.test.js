// The console as a person uses it, in headless Chromium (Debian's `chromium`, driven by
// playwright-core), with every request to anywhere but the server refused: the Sources page,
// then the live table of a source while rows are written through `pg` — they appear, change
// and disappear; the filter builder narrows them to exactly the rows the same filter selects
// in PostgreSQL, and puts the filter in the URL; a dropped WebSocket is resumed with the last
// cursor, showing the reconnecting state meanwhile, and nothing is missed or doubled. Then a
// run started from the Runs page, whose timeline is watched through a TCP proxy that drops
// every connection mid-run: every event shows once, in order, and the progress reaches 100 %.
// Screenshots of each page go to target/console-screenshots/.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

import { chromium } from 'playwright-core';

import { DEADLINE_MS, HTTP_URL, connectDb } from './helpers.js';

const TABLE = 'items_console';
const CHROMIUM = process.env.VIEWCAST_CHROMIUM || '/usr/bin/chromium';
const SHOTS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'target', 'console-screenshots');
const ORIGIN = new URL(HTTP_URL).origin;

/** A TCP proxy to the server that can drop every connection through it, as a network does. */
async function proxy() {
  const target = new URL(HTTP_URL);
  const open = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    open.add(client);
    open.add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    for (const socket of [client, upstream]) {
      socket.on('error', () => {});
      socket.on('close', () => {
        open.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    dropAll() {
      const dropped = open.size;
      for (const socket of open) {
        socket.destroy();
      }
      return dropped;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** A page that may reach `origin` only; what it tried elsewhere and its script errors. */
async function openPage(browser, origin) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(DEADLINE_MS);
  const offOrigin = [];
  await page.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.origin === origin) {
      return route.continue();
    }
    offOrigin.push(url.href);
    return route.abort('blockedbyclient');
  });
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(String(error)));
  return { page, offOrigin, pageErrors };
}

/** The ids and one column of the rows the live table shows (every row: the test's tables are
 * small enough to be all in view). */
async function shown(page, column = 'score') {
  return page.evaluate((column) => {
    const rows = [...document.querySelectorAll('.viewport tbody tr:not(.spacer)')];
    return rows
      .filter((tr) => !tr.classList.contains('leaving'))
      .map((tr) => [
        Number(tr.querySelector('td[data-column="id"]').textContent),
        tr.querySelector(`td[data-column="${column}"]`)?.textContent,
      ])
      .sort((a, b) => a[0] - b[0]);
  }, column);
}

/** Waits until the live table shows exactly `expected` ([id, score as text] pairs). */
async function showsExactly(page, expected, what) {
  const deadline = Date.now() + DEADLINE_MS;
  let last;
  while (Date.now() < deadline) {
    last = await shown(page);
    if (JSON.stringify(last) === JSON.stringify(expected)) {
      return;
    }
    await page.waitForTimeout(50);
  }
  assert.deepEqual(last, expected, `the live table never showed ${what}`);
}

describe('the console in headless Chromium', () => {
  let db;
  let browser;

  before(async () => {
    db = await connectDb();
    mkdirSync(SHOTS, { recursive: true });
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium; .ci/run does)`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    });
  });

  after(async () => {
    await browser?.close();
    await db.end();
  });

  test('sources, then a live table that follows the table, filters and survives a dropped connection', async () => {
    const { page, offOrigin, pageErrors } = await openPage(browser, ORIGIN);
    // Each WebSocket the page opens, to drop one as a network would, and the frames it sent.
    await page.addInitScript(() => {
      window.__sockets = [];
      const Native = window.WebSocket;
      window.WebSocket = class extends Native {
        constructor(...args) {
          super(...args);
          window.__sockets.push(this);
        }
      };
    });
    const subscribes = [];
    page.on('websocket', (socket) =>
      socket.on('framesent', ({ payload }) => {
        const frame = JSON.parse(String(payload));
        if (frame.type === 'subscribe') {
          subscribes.push(frame.payload.variables);
        }
      }),
    );

    await db.query(`INSERT INTO ${TABLE} (id, name, score) VALUES (1, 'alpha', 10), (2, 'beta', 60)`);

    // `/` is the console; its Sources page lists the source, live, with its rows.
    await page.goto(`${ORIGIN}/`);
    assert.equal(new URL(page.url()).pathname, '/console');
    const source = page.locator(`tr[data-source="${TABLE}"]`);
    await source.waitFor();
    await page.waitForFunction(
      (table) => document.querySelector(`tr[data-source="${table}"] td:nth-child(3)`)?.textContent === '2',
      TABLE,
    );
    assert.match(await source.textContent(), /LIVE/);
    await page.screenshot({ path: join(SHOTS, 'sources.png') });

    // The live table: the snapshot, then every change.
    await source.getByRole('link', { name: TABLE, exact: true }).click();
    await page.waitForFunction(() => document.getElementById('page').dataset.state === 'live');
    await showsExactly(page, [[1, '10'], [2, '60']], 'the snapshot');
    await db.query(`INSERT INTO ${TABLE} (id, name, score) VALUES (3, 'gamma', 70)`);
    await showsExactly(page, [[1, '10'], [2, '60'], [3, '70']], 'the inserted row');
    assert.ok(await page.locator('.viewport tr.entered').count() >= 1, 'a row that enters is marked');
    await db.query(`UPDATE ${TABLE} SET score = 65 WHERE id = 2`);
    await showsExactly(page, [[1, '10'], [2, '65'], [3, '70']], 'the updated row');
    assert.equal(await page.locator('.viewport td.changed[data-column="score"]').count(), 1, 'the changed cell is marked');
    await page.screenshot({ path: join(SHOTS, 'live-table.png') });
    await db.query(`DELETE FROM ${TABLE} WHERE id = 1`);
    await showsExactly(page, [[2, '65'], [3, '70']], 'the deleted row gone');

    // The filter builder: score >= 62 (any of: that, or name = 'zeta', which no row has).
    await page.getByText('Filter', { exact: true }).click();
    await page.getByRole('button', { name: '+ condition' }).first().click();
    const condition = page.locator('.filter .condition').first();
    await condition.getByLabel('Column').selectOption('score');
    await condition.getByLabel('Operator').selectOption('_gte');
    await condition.getByLabel('Value').fill('62');
    await page.getByRole('button', { name: 'Apply filter' }).click();
    await page.waitForFunction(() => decodeURIComponent(window.location.hash).includes('"_gte":62'));
    await db.query(`INSERT INTO ${TABLE} (id, name, score) VALUES (4, 'delta', 61), (5, 'eps', 99)`);
    const { rows: expected } = await db.query(`SELECT id, score FROM ${TABLE} WHERE score >= 62 ORDER BY id`);
    await showsExactly(
      page,
      expected.map((r) => [r.id, String(r.score)]),
      'exactly the rows with score >= 62',
    );
    // The URL holds the view: opened afresh, it shows the same rows.
    const link = page.url();
    await page.goto('about:blank');
    await page.goto(link);
    await page.waitForFunction(() => document.getElementById('page').dataset.state === 'live');
    await showsExactly(page, expected.map((r) => [r.id, String(r.score)]), 'the same rows from the link');

    // A dropped connection: the page says it reconnects, then resumes after its cursor (no
    // fresh snapshot) and shows what changed meanwhile, once.
    const before = subscribes.length;
    await page.evaluate(() => window.__sockets.at(-1).close());
    await page.waitForFunction(() => document.getElementById('page').dataset.state === 'reconnecting');
    await db.query(`UPDATE ${TABLE} SET score = 80 WHERE id = 3`);
    await db.query(`INSERT INTO ${TABLE} (id, name, score) VALUES (6, 'zeta', 77)`);
    await page.waitForFunction(() => document.getElementById('page').dataset.state === 'live');
    await showsExactly(page, [[2, '65'], [3, '80'], [5, '99'], [6, '77']], 'the changes made while disconnected');
    const resumed = subscribes.slice(before);
    assert.ok(resumed.length >= 1 && resumed.every((v) => typeof v.after === 'string'), JSON.stringify(resumed));

    assert.deepEqual(offOrigin, [], 'the console asks nothing of any other server');
    assert.deepEqual(pageErrors, [], 'no script errors');
  });

  test('a run started from the console, its timeline followed through dropped connections', async () => {
    const network = await proxy();
    const { page, offOrigin, pageErrors } = await openPage(browser, network.origin);
    try {
      await page.goto(`${network.origin}/console#/runs`);
      const form = page.getByRole('form', { name: 'Start a run' });
      await form.getByLabel('Kind').fill('console_demo');
      await form.getByLabel('Input (JSON)').fill('{"portfolio": "test"}');
      await form.getByRole('button', { name: 'Start' }).click();
      await page.waitForFunction(() => /^#\/runs\/[^/]+$/.test(window.location.hash));
      const id = decodeURIComponent(page.url().split('#/runs/')[1]);

      // Mid-run, every connection through the proxy is dropped: the timeline says it
      // reconnects, resumes after its last event, and carries on.
      await page.waitForFunction(() => Number(document.getElementById('page').dataset.lastSeq) >= 3);
      assert.ok(network.dropAll() > 0, 'the event stream was open');
      await page.waitForFunction(() => document.getElementById('page').dataset.state === 'reconnecting');
      await page.waitForFunction(() => document.getElementById('page').dataset.state === 'ended');
      await page.screenshot({ path: join(SHOTS, 'run-timeline.png'), fullPage: true });

      // Every event of the run, once and in order, and the run's end.
      const response = await fetch(HTTP_URL, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ query: `{ run(id: "${id}") { status lastSeq } }` }),
      });
      const { data } = await response.json();
      assert.equal(data.run.status, 'COMPLETED');
      const seqs = await page.$$eval('ol.timeline li', (items) => items.map((li) => Number(li.dataset.seq)));
      assert.deepEqual(seqs, Array.from({ length: data.run.lastSeq }, (_, i) => i + 1));
      assert.equal(await page.locator('progress').evaluate((bar) => bar.value), 100);
      assert.equal(await page.locator('.run-status').textContent(), 'COMPLETED');
      assert.match(await page.locator('.totals').textContent(), /30 of 30/);

      // The list shows it, completed.
      await page.goto(`${network.origin}/console#/runs?kind=console_demo`);
      await page.locator(`tr[data-run="${id}"]`).getByText('COMPLETED').waitFor();
      await page.screenshot({ path: join(SHOTS, 'runs.png') });

      // Another run, cancelled from its timeline: it ends CANCELLED, and so does its list entry.
      await page.getByRole('form', { name: 'Start a run' }).getByLabel('Kind').fill('console_demo');
      await page.getByRole('form', { name: 'Start a run' }).getByRole('button', { name: 'Start' }).click();
      await page.waitForFunction((first) => !window.location.hash.endsWith(first) && /^#\/runs\/[^/?]+$/.test(window.location.hash), id);
      await page.waitForFunction(() => Number(document.getElementById('page').dataset.lastSeq) >= 1);
      await page.getByRole('button', { name: 'Cancel' }).click();
      await page.waitForFunction(() => document.getElementById('page').dataset.state === 'ended');
      assert.equal(await page.locator('.run-status').textContent(), 'CANCELLED');
      assert.equal(await page.locator('ol.timeline li').last().getAttribute('data-seq'), await page.evaluate(() => document.getElementById('page').dataset.lastSeq));
      assert.match(await page.locator('ol.timeline li').last().textContent(), /CANCELLED/);

      assert.deepEqual(offOrigin, [], 'the console asks nothing of any other server');
      assert.deepEqual(pageErrors, [], 'no script errors');
    } finally {
      await page.close();
      await network.close();
    }
  });
});
