// Drive a `graphlens view` page in headless Chromium and print what it shows, as JSON.
// node drive-view.mjs SPEC   SPEC is JSON: {url, args, prompt, head, query, screenshot, steer, alsoLoad: [...]}
//   args: extra Chromium flags (e.g. ["--enable-unsafe-webgpu"]); head "layer:head" is selected, hovered from
//   token `query`, then ablated; steer {layer, coefficient, rank, head, headCoefficient}: steer along the
//   unembedding of the logit lens' last cell's token (every position), then along head `head`'s output
//   (last position, headCoefficient set with the slider), then along the clean top-k's token at `rank`
//   (every position); alsoLoad: addresses relative to url (e.g. "?backend=wasm") loaded afterwards, one by one,
//   in another tab of the same browser, whose status and backend are reported.
import { chromium } from 'playwright-core';

const spec = JSON.parse(process.argv[2]);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox', ...(spec.args ?? [])] });
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
const errors = [];
page.on('pageerror', (err) => errors.push(String(err)));
page.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()); });

const finished = (p) => p.waitForFunction(() => ['ready', 'error'].includes(document.getElementById('status').dataset.state), null, { timeout: 120000 });

/** Run `action` and wait until the page has finished what it started (status ready again, or an error). */
async function settled(action) {
  await page.evaluate(() => { document.getElementById('status').dataset.state = 'stale'; });
  await action();
  await finished(page);
  const state = await page.$eval('#status', (s) => [s.dataset.state, s.textContent]);
  if (state[0] === 'error') throw new Error(`the page says ${state[1]}; console: ${errors.join(' | ')}`);
}

/** What navigator.gpu says in this browser, asked directly (not through the page's code). */
const probe = (p) => p.evaluate(async () => {
  if (!navigator.gpu) return { gpu: false, adapter: null };
  const adapter = await navigator.gpu.requestAdapter();
  return { gpu: true, adapter: adapter ? { ...['vendor', 'architecture', 'description', 'isFallbackAdapter'].reduce((o, k) => ({ ...o, [k]: adapter.info?.[k] }), {}) } : null };
});
const backend = (p) => p.$eval('#backend', (b) => ({ ...b.dataset, text: b.textContent }));
const rows = (table) => page.$$eval(`${table} tr[data-id]`, (trs) => trs.map((tr) => ({ ...tr.dataset, text: [...tr.children].map((td) => td.textContent) })));
const steering = async () => ({ summary: await page.$eval('#steer-summary', (p) => ({ ...p.dataset, text: p.textContent })), rows: await rows('#steer-topk') });
/** Type the coefficient (`input` "#steer-coef-value", a change event) or drag the slider (`input` "#steer-coef"). */
const setCoefficient = (value, input = '#steer-coef-value') => page.$eval(input, (el, v) => {
  el.value = v;
  el.dispatchEvent(new Event(el.type === 'range' ? 'input' : 'change'));
}, String(value));

try {
  await page.goto(spec.url);
  await finished(page);
  const result = { probe: await probe(page), backend: await backend(page) };
  await settled(async () => { await page.fill('#prompt', spec.prompt); await page.click('#run'); });
  result.status = await page.$eval('#status', (s) => s.textContent);
  result.tokens = await page.$$eval('.tok', (s) => s.map((t) => Number(t.dataset.id)));
  result.clean = await rows('#topk');
  result.lens = await page.$$eval('#lens td', (tds) => tds.map((td) => ({ ...td.dataset, text: td.textContent })));
  result.target = await page.$eval('#target-info', (s) => Number(s.dataset.id));
  result.dla = await page.$$eval('#dla td', (tds) => tds.map((td) => ({ ...td.dataset, text: td.textContent })));
  await page.click(`[data-head="${spec.head}"] canvas`);
  await page.hover(`.tok[data-pos="${spec.query}"]`);
  result.attends = await page.$$eval('.tok', (s) => s.map((t) => (t.dataset.attn === undefined ? null : Number(t.dataset.attn))));
  result.attendReadout = await page.$eval('#attend-readout', (p) => p.textContent);
  await settled(() => page.click(`[data-head="${spec.head}"] button:not(.steer)`));
  result.ablated = await rows('#topk');
  result.summary = await page.$eval('#ablation-summary', (p) => p.textContent);

  const { steer } = spec;
  await settled(() => page.selectOption('#steer-layer', String(steer.layer)));
  await settled(() => setCoefficient(steer.coefficient));
  await settled(() => page.locator('#lens td.pick').last().click());
  result.steerLens = await steering();
  result.steerLensCell = await page.$eval('#lens tr:last-child td:last-child', (td) => ({ ...td.dataset }));
  await settled(() => page.selectOption('#steer-positions', 'last'));
  await settled(() => setCoefficient(steer.headCoefficient, '#steer-coef'));
  await settled(() => page.click(`[data-head="${steer.head}"] button.steer`));
  result.steerHead = await steering();
  await settled(() => page.selectOption('#steer-positions', 'all'));
  await settled(() => setCoefficient(steer.coefficient));
  await settled(() => page.locator('#topk tr[data-id]').nth(steer.rank).locator('td.pick').first().click());
  result.steerToken = await steering();
  await page.hover(`.tok[data-pos="${spec.query}"]`);
  await page.screenshot({ path: spec.screenshot, fullPage: true });
  result.errors = errors;

  result.alsoLoaded = [];
  for (const address of spec.alsoLoad ?? []) {
    const other = await browser.newPage();
    await other.goto(new URL(address, spec.url).href);
    await finished(other);
    result.alsoLoaded.push({ status: await other.$eval('#status', (s) => ({ ...s.dataset, text: s.textContent })), backend: await backend(other) });
    await other.close();
  }
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
