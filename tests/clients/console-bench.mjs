// Measures the console's live table in headless Chromium while something else loads its
// source (`viewcast-bench … --console` runs it): frame intervals (requestAnimationFrame),
// round-trips to the page's main thread, rows shown and updates applied. Prints `ready <rows>`
// once the snapshot is drawn, then, after the given seconds, one JSON line of figures.
//
//   node tests/clients/console-bench.mjs http://127.0.0.1:4000 bench 20
//
// VIEWCAST_CONSOLE_VIEW adds the view's parameters (e.g. `sort=value:desc`, `where=…`).
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
const view = process.env.VIEWCAST_CONSOLE_VIEW ? `?${process.env.VIEWCAST_CONSOLE_VIEW}` : '';
await page.goto(`${origin}/console#/live/${encodeURIComponent(source)}${view}`);
await page.waitForFunction(() => document.getElementById('page').dataset.state === 'live', null, { timeout: 300_000 });
const rows = await page.evaluate(() => Number(document.getElementById('page').dataset.rows));
console.log(`ready ${rows}`);

await page.evaluate(() => {
  window.__frames = [];
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

const quantile = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
};
const round = (x) => (x === null ? null : Math.round(x * 10) / 10);
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
