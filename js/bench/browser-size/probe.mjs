// Load m<MIB>.onnx (+ external data) served on :8766 into onnxruntime-web in headless Chromium; print the outcome.
import { chromium } from 'playwright-core';

const mib = Number(process.argv[2]);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage();
await page.goto('http://127.0.0.1:8766/index.html');
await page.waitForFunction(() => window.ready);
console.log(mib, JSON.stringify(await page.evaluate((m) => window.probe(m), mib)));
await browser.close();
