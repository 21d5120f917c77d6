// Measures the console's live table in headless Chromium while something else loads its
// source (`viewcast-bench … --console` runs it): frame intervals (requestAnimationFrame),
// round-trips to the page's main thread, rows shown and updates applied. Prints `ready <rows>`
// once the snapshot is drawn, then, after the given seconds, one JSON line of figures.
//
//   node tests/clients/console-bench.mjs http://127.0.0.1:4000 bench 20
//
// VIEWCAST_CONSOLE_VIEW adds the view's parameters (e.g. `sort=value:desc`, `where=…`).
// VIEWCAST_CONSOLE_RUN_EVENTS=N measures a run's timeline instead: a run of N events is
// appended over HTTP, its timeline opened, and the frames counted until all N are drawn.
import { chromium } from 'playwright-core';

const [origin, source, seconds = '20'] = process.argv.slice(2);
if (!origin || !source) {
  console.error('usage: node console-bench.mjs <server origin> <source> [seconds]');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.VIEWCAST_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });

const quantile = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
};
const round = (x) => (x === null ? null : Math.round(x * 10) / 10);

/** Records requestAnimationFrame intervals in the page until `window.__stop`. */
async function recordFrames() {
  await page.evaluate(() => {
    window.__frames = [];
    window.__stop = false;
    let last = performance.now();
    const loop = (now) => {
      window.__frames.push(now - last);
      last = now;
      if (!window.__stop) {
        requestAnimationFrame(loop);
      }
    };
    requestAnimationFrame(loop);
  });
}

// `--run-events N`: a run of N events (appended 1,000 at a time), its timeline opened, and the
// frames until every event is on the page.
const runEvents = Number(process.env.VIEWCAST_CONSOLE_RUN_EVENTS || 0);
if (runEvents > 0) {
  const post = async (path, body) => {
    const response = await fetch(`${origin}${path}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      throw new Error(`POST ${path}: ${response.status} ${await response.text()}`);
    }
    return response.json();
  };
  const run = await post('/runs', { kind: 'console-bench', input: {} });
  for (let seq = 0; seq < runEvents; seq += 1000) {
    const events = Array.from({ length: Math.min(1000, runEvents - seq) }, (_, i) => ({
      type: 'PROGRESS',
      stage: 'Bench',
      message: `event ${seq + i + 1} of ${runEvents}`,
      percentage: ((seq + i + 1) * 100) / runEvents,
      counters: { events_done: seq + i + 1, events_total: runEvents },
    }));
    await post(`/runs/${run.id}/events`, { events });
  }
  await page.goto(`${origin}/console#/runs`);
  await recordFrames();
  const started = performance.now();
  await page.evaluate((id) => {
    window.location.hash = `#/runs/${id}`;
  }, run.id);
  await page.waitForFunction((n) => Number(document.getElementById('page').dataset.lastSeq) === n, runEvents, {
    timeout: 300_000,
    polling: 50,
  });
  const drawn = performance.now() - started;
  const frames = await page.evaluate(() => {
    window.__stop = true;
    return window.__frames.slice(1);
  });
  const items = await page.locator('ol.timeline li').count();
  await browser.close();
  console.log(
    JSON.stringify({
      events: runEvents,
      items,
      all_drawn_ms: Math.round(drawn),
      frame_ms: { p50: round(quantile(frames, 0.5)), p99: round(quantile(frames, 0.99)), max: round(Math.max(...frames)) },
      long_frames: frames.filter((f) => f > 50).length,
    }),
  );
  process.exit(0);
}
const view = process.env.VIEWCAST_CONSOLE_VIEW ? `?${process.env.VIEWCAST_CONSOLE_VIEW}` : '';
await page.goto(`${origin}/console#/live/${encodeURIComponent(source)}${view}`);
await page.waitForFunction(() => document.getElementById('page').dataset.state === 'live', null, { timeout: 300_000 });
const rows = await page.evaluate(() => Number(document.getElementById('page').dataset.rows));
console.log(`ready ${rows}`);

await recordFrames();
const applied0 = await page.evaluate(() => Number(document.getElementById('page').dataset.applied));
const started = performance.now();
const rtts = [];
while (performance.now() - started < Number(seconds) * 1000) {
  const t0 = performance.now();
  await page.evaluate(() => 0);
  rtts.push(performance.now() - t0);
  // Pacing of the probe, not synchronisation: one round-trip every 100 ms.
  await new Promise((resolve) => setTimeout(resolve, 100));
}
const elapsed = (performance.now() - started) / 1000;
const { frames, applied, shown } = await page.evaluate(() => {
  window.__stop = true;
  const root = document.getElementById('page');
  return { frames: window.__frames.slice(1), applied: Number(root.dataset.applied), shown: Number(root.dataset.rows) };
});
await browser.close();

console.log(
  JSON.stringify({
    seconds: round(elapsed),
    rows: shown,
    updates_per_sec: round((applied - applied0) / elapsed),
    fps: round(frames.length / elapsed),
    frame_ms: { p50: round(quantile(frames, 0.5)), p99: round(quantile(frames, 0.99)), max: round(Math.max(...frames)) },
    long_frames: frames.filter((f) => f > 50).length,
    main_thread_rtt_ms: { p50: round(quantile(rtts, 0.5)), p99: round(quantile(rtts, 0.99)), max: round(Math.max(...rtts)) },
  }),
);
