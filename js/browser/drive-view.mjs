// Drive a `graphlens view` page in headless Chromium and print what it shows, as JSON.
// node drive-view.mjs URL PROMPT HEAD QUERY SCREENSHOT   (HEAD "layer:head" is selected, hovered from QUERY, then ablated)
import { chromium } from 'playwright-core';

const [url, prompt, head, query, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
const errors = [];
page.on('pageerror', (err) => errors.push(String(err)));
page.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()); });

/** Run `action` and wait until the page has finished what it started (status ready again, or an error). */
async function settled(action) {
  await page.evaluate(() => { document.getElementById('status').dataset.state = 'stale'; });
  await action();
  await page.waitForFunction(() => ['ready', 'error'].includes(document.getElementById('status').dataset.state), null, { timeout: 120000 });
  const state = await page.$eval('#status', (s) => [s.dataset.state, s.textContent]);
  if (state[0] === 'error') throw new Error(`the page says ${state[1]}; console: ${errors.join(' | ')}`);
}

const rows = () => page.$$eval('#topk tr[data-id]', (trs) => trs.map((tr) => ({ ...tr.dataset, text: [...tr.children].map((td) => td.textContent) })));
try {
  await page.goto(url);
  await page.waitForFunction(() => ['ready', 'error'].includes(document.getElementById('status').dataset.state), null, { timeout: 120000 });
  await settled(async () => { await page.fill('#prompt', prompt); await page.click('#run'); });
  const result = {};
  result.tokens = await page.$$eval('.tok', (s) => s.map((t) => Number(t.dataset.id)));
  result.clean = await rows();
  result.lens = await page.$$eval('#lens td', (tds) => tds.map((td) => ({ ...td.dataset, text: td.textContent })));
  result.target = await page.$eval('#target-info', (s) => Number(s.dataset.id));
  result.dla = await page.$$eval('#dla td', (tds) => tds.map((td) => ({ ...td.dataset, text: td.textContent })));
  await page.click(`[data-head="${head}"] canvas`);
  await page.hover(`.tok[data-pos="${query}"]`);
  result.attends = await page.$$eval('.tok', (s) => s.map((t) => (t.dataset.attn === undefined ? null : Number(t.dataset.attn))));
  result.attendReadout = await page.$eval('#attend-readout', (p) => p.textContent);
  await settled(() => page.click(`[data-head="${head}"] button`));
  result.ablated = await rows();
  result.summary = await page.$eval('#ablation-summary', (p) => p.textContent);
  await page.hover(`.tok[data-pos="${query}"]`);
  await page.screenshot({ path: screenshot, fullPage: true });
  result.errors = errors;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
