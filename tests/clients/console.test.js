// The console as a person uses it, in headless Chromium (Debian's `chromium`, driven by
// playwright-core), with every request to anywhere but the server refused: the Sources page,
// then the live table of a source while rows are written through `pg` — they appear, change
// and disappear; the filter builder narrows them to exactly the rows the same filter selects
// in PostgreSQL, and puts the filter in the URL; a dropped WebSocket is resumed with the last
// cursor, showing the reconnecting state meanwhile, and nothing is missed or doubled. Then a
// run started from the Runs page, whose timeline is watched through a TCP proxy that drops
// every connection mid-run: every event shows once, in order, and the progress reaches 100 %.
// Then a trigger created in the console whose receiver fails: its delivery lands in the dead
// letters, and Redeliver sends it again to the receiver, which now accepts it. Last, against
// a second server with auth on: without a credential the console is the unauthenticated role
// and shows only what it may read; with a token typed in, the token's role, on every request
// (the live table's WebSocket included), for as long as the tab lives.
// Screenshots of each page go to target/console-screenshots/.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

import { chromium } from 'playwright-core';

import { DEADLINE_MS, HTTP_URL, connectDb, env } from './helpers.js';

const TABLE = 'items_console';
const CHROMIUM = process.env.VIEWCAST_CHROMIUM || '/usr/bin/chromium';
const SHOTS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'target', 'console-screenshots');
const ORIGIN = new URL(HTTP_URL).origin;

/** A TCP proxy to the server that can drop every connection through it, as a network does,
 * and refuse new ones while blocked. */
async function proxy(to = HTTP_URL) {
  const target = new URL(to);
  const open = new Set();
  let blocked = false;
  const server = net.createServer((client) => {
    if (blocked) {
      client.destroy();
      return;
    }
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
    block() {
      blocked = true;
      this.dropAll();
    },
    unblock() {
      blocked = false;
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

/** The controls on the page that have no accessible name (label, aria-label, text). */
async function unlabelled(page) {
  return page.evaluate(() => {
    const named = (el) =>
      (el.labels && el.labels.length > 0) ||
      el.getAttribute('aria-label') ||
      el.getAttribute('aria-labelledby') ||
      (el.tagName === 'BUTTON' && el.textContent.trim());
    return [...document.querySelectorAll('input, select, textarea, button')]
      .filter((el) => !named(el))
      .map((el) => el.outerHTML.slice(0, 160));
  });
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
    assert.deepEqual(await unlabelled(page), [], 'every control on Sources has a name');

    // The live table, reached with the keyboard: the snapshot, then every change.
    let focused = '';
    for (let i = 0; i < 30 && focused !== `#/live/${TABLE}`; i += 1) {
      await page.keyboard.press('Tab');
      focused = await page.evaluate(() => document.activeElement?.getAttribute('href') ?? '');
    }
    assert.equal(focused, `#/live/${TABLE}`, 'Tab reaches the link to the live table');
    await page.keyboard.press('Enter');
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
    await page.locator('.viewport tr.leaving').waitFor();
    await showsExactly(page, [[2, '65'], [3, '70']], 'the deleted row gone');

    // Sorting by a column, ascending then descending, as its header says.
    const scores = () =>
      page.$$eval('.viewport tbody tr:not(.spacer):not(.leaving) td[data-column="score"]', (cells) => cells.map((c) => Number(c.textContent)));
    const sorted = (order) =>
      page.waitForFunction((o) => document.querySelector('th[data-column="score"]').getAttribute('aria-sort') === o, order);
    const inOrder = async (expected) => {
      const deadline = Date.now() + DEADLINE_MS;
      let last;
      while (Date.now() < deadline) {
        last = await scores();
        if (JSON.stringify(last) === JSON.stringify(expected)) {
          return;
        }
        await page.waitForTimeout(50);
      }
      assert.deepEqual(last, expected, 'the rows never took that order');
    };
    await page.locator('th[data-column="score"] button').click();
    await sorted('ascending');
    await inOrder([65, 70]);
    await page.locator('th[data-column="score"] button').click();
    await sorted('descending');
    await inOrder([70, 65]);

    // Pause holds changes until Resume.
    await page.getByRole('button', { name: 'Pause' }).click();
    await db.query(`UPDATE ${TABLE} SET score = 71 WHERE id = 3`);
    await page.waitForFunction(() => /Paused: 1 changes/.test(document.querySelector('.toolbar .state').textContent));
    assert.deepEqual(await shown(page), [[2, '65'], [3, '70']]);
    await page.getByRole('button', { name: 'Resume' }).click();
    await showsExactly(page, [[2, '65'], [3, '71']], 'the held change, after Resume');

    // The column chooser: without `name`, in the table and in the URL.
    await page.getByRole('checkbox', { name: 'name' }).uncheck();
    await page.waitForFunction(() => window.location.hash.includes('columns=') && document.getElementById('page').dataset.state === 'live');
    assert.equal(await page.locator('th[data-column="name"]').count(), 0);
    assert.equal(await page.locator('th[data-column="score"]').count(), 1);

    // The filter builder: score >= 62 (any of: that, or name = 'zeta', which no row has).
    await page.getByText('Filter', { exact: true }).click();
    await page.getByRole('button', { name: '+ condition' }).first().click();
    assert.deepEqual(await unlabelled(page), [], 'every control of the live table and its filter has a name');
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

    // A link whose filter is not JSON says so, and shows every row.
    await page.goto(`${ORIGIN}/console#/live/${TABLE}?where=not-json`);
    await page.getByRole('alert').getByText('not JSON').waitFor();
    await page.goto(link);
    await page.waitForFunction(() => document.getElementById('page').dataset.state === 'live');

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
      assert.deepEqual(await unlabelled(page), [], 'every control of the timeline has a name');

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
      assert.deepEqual(await unlabelled(page), [], 'every control of Runs has a name');

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


      // A run that failed shows its error; the list pages 20 at a time.
      const post = async (path, body) => {
        const reply = await fetch(`${ORIGIN}${path}`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify(body),
        });
        assert.ok(reply.ok, `POST ${path}: ${reply.status}`);
        return reply.json();
      };
      const failed = await post('/runs', { kind: 'console_external', input: {} });
      await post(`/runs/${failed.id}/events`, { events: [{ type: 'STARTED' }, { type: 'FAILED', message: 'disk full' }] });
      for (let i = 0; i < 20; i += 1) {
        await post('/runs', { kind: 'console_external', input: { i } });
      }
      await page.goto(`${network.origin}/console#/runs/${failed.id}`);
      await page.waitForFunction(() => document.getElementById('page').dataset.state === 'ended');
      assert.equal(await page.locator('.run-status').textContent(), 'FAILED');
      assert.equal(await page.locator('.failure').textContent(), 'disk full');
      await page.goto(`${network.origin}/console#/runs?kind=console_external`);
      await page.locator('tbody tr[data-run]').nth(19).waitFor();
      assert.equal(await page.locator('tbody tr[data-run]').count(), 20);
      assert.equal(await page.locator(`tr[data-run="${failed.id}"]`).count(), 0, 'the oldest is on the next page');
      await page.getByRole('link', { name: 'Next page' }).click();
      await page.locator(`tr[data-run="${failed.id}"]`).waitFor();
      assert.equal(await page.locator('tbody tr[data-run]').count(), 1);

      assert.deepEqual(offOrigin, [], 'the console asks nothing of any other server');
      assert.deepEqual(pageErrors, [], 'no script errors');
    } finally {
      await page.close();
      await network.close();
    }
  });

  test('a trigger whose receiver fails: dead letter, then redelivered from the console', async () => {
    // The receiver answers 500 until told otherwise, and keeps what it was sent.
    let accept = false;
    const received = [];
    const receiver = http.createServer((request, response) => {
      let body = '';
      request.on('data', (chunk) => {
        body += chunk;
      });
      request.on('end', () => {
        received.push({ id: request.headers['webhook-id'], status: accept ? 200 : 500, body });
        response.writeHead(accept ? 200 : 500).end();
      });
    });
    await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const hook = `http://127.0.0.1:${receiver.address().port}/hook`;
    const { page, offOrigin, pageErrors } = await openPage(browser, ORIGIN);
    try {
      await page.goto(`${ORIGIN}/console#/triggers`);
      const section = page.locator(`section[data-source="${TABLE}"]`);
      await section.getByText(`New trigger on ${TABLE}`).click();
      const form = page.getByRole('form', { name: `New trigger on ${TABLE}` });
      await form.getByLabel('Name').fill('big');
      await form.getByLabel('Webhook URL').fill(hook);
      const fire = form.locator('.filter.fire');
      await fire.getByRole('button', { name: '+ condition' }).click();
      await fire.getByLabel('Column').selectOption('score');
      await fire.getByLabel('Operator').selectOption('_gte');
      await fire.getByLabel('Value').fill('90');
      await form.getByLabel('Attempts').fill('1');
      assert.deepEqual(await unlabelled(page), [], 'every control of Triggers and its form has a name');
      await form.getByRole('button', { name: 'Create' }).click();
      await section.locator('tr[data-trigger="big"]').waitFor();
      assert.match(await section.locator('tr[data-trigger="big"]').textContent(), /ACTIVE/);

      // A row enters the condition: one attempt, refused, so a dead letter.
      await db.query(`INSERT INTO ${TABLE} (id, name, score) VALUES (7, 'big one', 95)`);
      await page.waitForFunction(
        (table) => /dead 1/.test(document.querySelector(`section[data-source="${table}"] tr[data-trigger="big"]`)?.textContent ?? ''),
        TABLE,
      );
      await page.screenshot({ path: join(SHOTS, 'triggers.png'), fullPage: true });
      await section.getByRole('link', { name: 'big' }).click();
      await page.getByLabel('Dead letters').check();
      const dead = page.locator('tbody tr.delivery-DEAD');
      await dead.waitFor();
      assert.equal(await dead.count(), 1);
      assert.equal(received.length, 1);
      assert.equal(received[0].status, 500);

      // The receiver is fixed; Redeliver sends the same event again, and it is delivered.
      accept = true;
      await dead.getByRole('button', { name: 'Redeliver' }).click();
      await page.getByLabel('All deliveries').check();
      await page.locator('tbody tr.delivery-DELIVERED').waitFor();
      await page.screenshot({ path: join(SHOTS, 'trigger-deliveries.png'), fullPage: true });
      assert.deepEqual(await unlabelled(page), [], "every control of a trigger's page has a name");
      assert.equal(received.length, 2);
      assert.equal(received[1].status, 200);
      assert.equal(received[1].id, received[0].id, 'a redelivery keeps the event id');
      assert.match(received[1].body, /big one/);

      // Edit: the conditions change (the trigger is created again, as the page says).
      await page.getByText('Edit', { exact: true }).click();
      const edit = page.getByRole('form', { name: 'Edit trigger big' });
      await edit.getByLabel('Webhook URL').fill(hook);
      await edit.locator('.filter.fire').getByLabel('Value').fill('98');
      await edit.getByRole('button', { name: /^Save/ }).click();
      await page.waitForFunction(() => document.querySelector('.summary')?.textContent.includes('"_gte":98'));

      // Disable and enable from the list.
      await page.goto(`${ORIGIN}/console#/triggers`);
      const row = page.locator(`section[data-source="${TABLE}"] tr[data-trigger="big"]`);
      await row.getByRole('button', { name: 'Disable' }).click();
      await row.getByText('DISABLED').waitFor();
      await row.getByRole('button', { name: 'Enable' }).click();
      await row.getByText('ACTIVE').waitFor();
      assert.deepEqual(offOrigin, [], 'the console asks nothing of any other server');
      assert.deepEqual(pageErrors, [], 'no script errors');
    } finally {
      await page.close();
      await new Promise((resolve) => receiver.close(resolve));
    }
  });

  test('with auth: the unauthenticated role, then a token typed in, on every request', async () => {
    const origin = new URL(env('VIEWCAST_AUTH_HTTP')).origin;
    const { page, offOrigin, pageErrors } = await openPage(browser, origin);
    try {
      const { rows: all } = await db.query(`SELECT count(*)::int AS n FROM ${TABLE}`);
      const { rows: high } = await db.query(`SELECT id, score FROM ${TABLE} WHERE score >= 60 ORDER BY id`);
      await page.goto(`${origin}/console#/sources`);
      await page.waitForFunction(() => document.getElementById('whoami').textContent === 'guest');
      // The guest reads one source, two of its columns, and no trigger.
      const sources = page.locator('tr[data-source]');
      await page.locator(`tr[data-source="${TABLE}"]`).waitFor();
      assert.equal(await sources.count(), 1);
      await page.waitForFunction(
        ([table, n]) => document.querySelector(`tr[data-source="${table}"] td:nth-child(3)`)?.textContent === String(n),
        [TABLE, all[0].n],
      );
      await page.goto(`${origin}/console#/live/${TABLE}`);
      await page.waitForFunction(() => document.getElementById('page').dataset.state === 'live');
      assert.deepEqual(await page.$$eval('input[name="column"]', (boxes) => boxes.map((b) => b.value)), ['id', 'name']);
      await page.goto(`${origin}/console#/triggers`);
      await page.getByText('This credential may see no trigger.').waitFor();

      // The analyst's token: its role, its rows, over HTTP and the WebSocket alike.
      await page.getByLabel('Credential kind').selectOption('bearer');
      await page.locator('#credential-value').fill(env('VIEWCAST_AUTH_TOKEN'));
      await page.getByRole('button', { name: 'Use', exact: true }).click();
      await page.waitForFunction(() => document.getElementById('whoami').textContent === 'analyst (ana)');
      await page.goto(`${origin}/console#/live/${TABLE}?sort=id:asc`);
      await page.waitForFunction(() => document.getElementById('page').dataset.state === 'live');
      await showsExactly(page, high.map((r) => [r.id, String(r.score)]), "the analyst's rows");
      // Kept for the tab: a reload is still the analyst.
      await page.reload();
      await page.waitForFunction(() => document.getElementById('whoami').textContent === 'analyst (ana)');
      await page.screenshot({ path: join(SHOTS, 'credential.png') });
      assert.deepEqual(offOrigin, [], 'the console asks nothing of any other server');
      assert.deepEqual(pageErrors, [], 'no script errors');
    } finally {
      await page.close();
    }
  });

  test('a resume after the server forgot the cursor: RESET, then the table drawn again', async () => {
    // The server with auth keeps 8 changes of history (tests/clients.rs).
    const network = await proxy(env('VIEWCAST_AUTH_HTTP'));
    const { page, offOrigin, pageErrors } = await openPage(browser, network.origin);
    const received = [];
    page.on('websocket', (socket) => socket.on('framereceived', ({ payload }) => received.push(String(payload))));
    const asAnalyst = async (query) => {
      const reply = await fetch(env('VIEWCAST_AUTH_HTTP'), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${env('VIEWCAST_AUTH_TOKEN')}` },
        body: JSON.stringify({ query }),
      });
      return reply.json();
    };
    try {
      await page.goto(`${network.origin}/console#/live/${TABLE}`);
      await page.locator('#credential-value').fill(env('VIEWCAST_AUTH_TOKEN'));
      await page.getByRole('button', { name: 'Use', exact: true }).click();
      await page.waitForFunction(() => document.getElementById('whoami').textContent === 'analyst (ana)');
      await page.waitForFunction(() => document.getElementById('page').dataset.state === 'live');

      // Cut off while twelve changes go by, more than the server keeps.
      network.block();
      await page.waitForFunction(() => document.getElementById('page').dataset.state === 'reconnecting');
      for (let i = 1; i <= 12; i += 1) {
        await db.query(`UPDATE ${TABLE} SET score = ${60 + i} WHERE id = 2`);
      }
      // The server has them all (asked directly, not through the proxy).
      const deadline = Date.now() + DEADLINE_MS;
      while ((await asAnalyst(`{ ${TABLE}(where: {id: {_eq: 2}}) { score } }`)).data?.[TABLE]?.[0]?.score !== 72) {
        assert.ok(Date.now() < deadline, 'the server never saw the last change');
        await page.waitForTimeout(50);
      }
      network.unblock();
      await page.waitForFunction(() => document.getElementById('page').dataset.state === 'live');
      const { rows } = await db.query(`SELECT id, score FROM ${TABLE} WHERE score >= 60 ORDER BY id`);
      await showsExactly(page, rows.map((r) => [r.id, String(r.score)]), 'the rows after the RESET');
      assert.ok(received.some((frame) => frame.includes('"RESET"')), 'the resumed subscription was told RESET');
      assert.deepEqual(offOrigin, [], 'the console asks nothing of any other server');
      assert.deepEqual(pageErrors, [], 'no script errors');
    } finally {
      await page.close();
      await network.close();
    }
  });
});
