// The package against references written by Python (tests/test_js.py sets GRAPHLENS_JS_REFS).
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import * as ort from 'onnxruntime-node';
import { loadBundle, toFloat32, GraphlensError } from 'graphlens';

const REFS = process.env.GRAPHLENS_JS_REFS;
const cases = REFS ? JSON.parse(readFileSync(join(REFS, 'cases.json'), 'utf8')) : {};
const TOLERANCE = 1e-5;

function reference(entry) {
  const bytes = readFileSync(join(REFS, entry.file));
  return { data: new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4), dims: entry.dims };
}

/** max |got - ref| ≤ TOLERANCE + rtol·|ref| (rtol 0: the acceptance bound for the native binding). */
function assertClose(tensor, entry, what, rtol = 0) {
  const ref = reference(entry);
  assert.deepEqual(tensor.dims.map(Number), ref.dims, `${what}: dims`);
  const got = toFloat32(tensor);
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const a = got[i];
    const b = ref.data[i];
    if (a === b) continue; // equal infinities (masked attention scores) too
    const excess = Math.abs(a - b) - rtol * Math.abs(b);
    worst = Number.isNaN(excess) ? Infinity : Math.max(worst, excess);
  }
  assert.ok(worst <= TOLERANCE, `${what}: max abs diff (less ${rtol}·|ref|) ${worst} > ${TOLERANCE}`);
}
// WebAssembly kernels round differently from the native CPU ones (max abs diff 1.5e-5 seen on hook_mlp_out in
// float32); in float16 a different rounding is one unit in the last place: 2^-10 relative.
const WEB_RTOL = { float32: 1e-5, float16: 2 ** -10 };

/** Rows of the last position of `tensor` [batch, pos, vocab] as a [batch, vocab] tensor-like. */
function lastPosition(tensor) {
  const [batch, pos, vocab] = tensor.dims;
  const values = toFloat32(tensor);
  const out = new Float32Array(batch * vocab);
  for (let b = 0; b < batch; b++) out.set(values.subarray((b * pos + pos - 1) * vocab, (b * pos + pos) * vocab), b * vocab);
  return { type: 'float32', data: out, dims: [batch, vocab] };
}

test('references are present', { skip: REFS ? false : 'GRAPHLENS_JS_REFS is not set (run tests/test_js.py)' }, () => {
  assert.ok(Object.keys(cases).length >= 3);
});

for (const [name, c] of Object.entries(cases)) {
  describe(name, async () => {
    const model = await loadBundle(c.bundle, { ort });
    const zeros = (n) => new Array(n).fill(0);

    test('tokenizes the prompt as Python does', () => {
      assert.deepEqual(model.toTokens(c.generate.prompt).tokens, c.tokens);
    });

    test('every hook and the logits equal Python', async () => {
      const { logits, hooks } = await model.run(c.tokens, { hooks: c.hooks });
      assert.equal(Object.keys(hooks).length, c.hooks.length);
      for (const hook of c.hooks) assertClose(hooks[hook], c.arrays[`hook:${hook}`], hook);
      assertClose(logits, c.arrays['hook:unembed.hook_out'], 'logits');
    });

    test('loading through readFile (as in a browser) gives the same numbers', async () => {
      const fromBytes = await loadBundle('unused', { ort, readFile: async (file) => new Uint8Array(readFileSync(join(c.bundle, file))) });
      const a = await fromBytes.run(c.tokens);
      assertClose(a.logits, c.arrays['hook:unembed.hook_out'], 'logits');
      assert.deepEqual(await fromBytes.generate(c.tokens, { maxNewTokens: 3, doSample: false, stopAtEos: false }),
        c.generate.greedy.map((r) => r.slice(0, c.tokens[0].length + 3)));
    });

    test('a hook_z head ablation equals Python', async () => {
      const { n_heads: heads, d_head: dHead } = model.cfg;
      const mask = zeros(heads);
      mask[c.ablation.head] = 1;
      const { logits } = await model.run(c.tokens, {
        feeds: { [c.ablation.hook]: { patch: { data: zeros(heads * dHead), dims: [1, 1, heads, dHead] }, patch_mask: { data: mask, dims: [1, 1, heads, 1] } } },
      });
      assertClose(logits, c.arrays.ablated, 'ablated logits');
    });

    test('an .add steering vector equals Python', async () => {
      const { logits } = await model.run(c.tokens, { feeds: { [c.steering.hook]: { add: [[c.steering.vector]] } } });
      assertClose(logits, c.arrays.steered, 'steered logits');
    });

    test('a left-padded batch through the decoder equals Python', async () => {
      const { tokens, attentionMask } = model.toTokens(c.padded.texts);
      assert.deepEqual(tokens, c.padded.tokens);
      assert.deepEqual(attentionMask, c.padded.attention_mask);
      const { logits, hooks } = await model.step(tokens, { attentionMask, hooks: [c.padded.hook] });
      assertClose(lastPosition(logits), c.arrays.padded_last_logits, 'padded logits');
      assertClose(hooks[c.padded.hook], c.arrays.padded_pattern, c.padded.hook);
    });

    test('20 greedy tokens, with and without steering, and a padded batch, equal Python', async () => {
      const options = { maxNewTokens: 20, doSample: false, stopAtEos: false };
      assert.deepEqual(await model.generate(c.tokens, options), c.generate.greedy);
      const steer = { [c.steering.hook]: { add: c.steering.vector } };
      const steered = await model.generate(c.tokens, { ...options, feeds: steer });
      assert.deepEqual(steered, c.generate.steered);
      assert.notDeepEqual(steered, c.generate.greedy);
      assert.equal(await model.generate(c.generate.prompt, options), c.generate.text);
      const padded = await model.generate(c.padded.tokens, { ...options, attentionMask: c.padded.attention_mask });
      assert.deepEqual(padded, c.generate.padded);
      const texts = await model.generate(c.padded.texts, options);
      assert.deepEqual(texts, c.generate.padded.map((row) => model.toString(row, { skipSpecial: true })));
    });

    test('sampling is reproducible with a seed and stays in the top k', async () => {
      const options = { maxNewTokens: 8, doSample: true, topK: 3, temperature: 0.7, seed: 7, stopAtEos: false };
      const a = await model.generate(c.tokens, options);
      assert.deepEqual(await model.generate(c.tokens, options), a);
      assert.deepEqual(await model.generate(c.tokens, { ...options, topK: 1 }), c.generate.greedy.map((r) => r.slice(0, c.tokens[0].length + 8)));
    });

    test('bad feeds are errors, never silently dropped', async () => {
      await assert.rejects(model.run(c.tokens, { feeds: { 'blocks.1.attn.hook_zz': { add: [1] } } }), GraphlensError);
      await assert.rejects(model.run(c.tokens, { feeds: { [c.steering.hook]: { add: zeros(model.cfg.d_model + 1) } } }), /do not broadcast/);
      await assert.rejects(model.run(c.tokens, { feeds: { [c.steering.hook]: { add: { data: zeros(2), dims: [1, 1, 1, 1, 2] } } } }), /has 5 dims/);
      await assert.rejects(model.run(c.tokens, { feeds: { 'blocks.0.attn.hook_q': { add: [1] } } }), /graphlens deploy/);
      await assert.rejects(model.run(c.tokens, { hooks: ['blocks.0.hook_nothing'] }), /not a hook output/);
      const full = await loadBundle(c.full_bundle, { ort });
      await assert.rejects(full.run(c.tokens, { feeds: { [c.steering.hook]: { add: c.steering.vector } } }), /overridable initializer/);
    });

    test('onnxruntime-web (the browser binding, WebAssembly) reads, patches and steers the same', async () => {
      const web = await import('onnxruntime-web');
      web.env.wasm.numThreads = 1;
      const inBrowser = await loadBundle('unused', { ort: web, readFile: async (file) => new Uint8Array(readFileSync(join(c.bundle, file))) });
      const { n_heads: heads, d_head: dHead } = inBrowser.cfg;
      const mask = zeros(heads);
      mask[c.ablation.head] = 1;
      const ablation = { patch: { data: zeros(heads * dHead), dims: [1, 1, heads, dHead] }, patch_mask: { data: mask, dims: [1, 1, heads, 1] } };
      const { hooks } = await inBrowser.run(c.tokens, { hooks: c.hooks });
      for (const hook of c.hooks) assertClose(hooks[hook], c.arrays[`hook:${hook}`], `web ${hook}`, WEB_RTOL[c.dtype]);
      assertClose((await inBrowser.run(c.tokens, { feeds: { [c.ablation.hook]: ablation } })).logits, c.arrays.ablated, 'web ablated', WEB_RTOL[c.dtype]);
      assertClose((await inBrowser.run(c.tokens, { feeds: { [c.steering.hook]: { add: c.steering.vector } } })).logits, c.arrays.steered, 'web steered', WEB_RTOL[c.dtype]);
      const options = { maxNewTokens: 20, doSample: false, stopAtEos: false, feeds: { [c.steering.hook]: { add: c.steering.vector } } };
      assert.deepEqual(await inBrowser.generate(c.tokens, options), c.generate.steered);
    });

    if (name === 'shipped-float32') {
      test('the README JavaScript snippets run as written', () => {
        for (const marker of ['js-quickstart', 'js-raw']) {
          const run = runReadmeBlock(marker, c.bundle);
          assert.equal(run.status, 0, `${marker}: ${run.stderr}`);
          assert.ok(run.stdout.length > 0, marker);
        }
      });

      test('the README raw-binding program steers exactly as the package', async () => {
        const run = runReadmeBlock('js-raw', c.bundle, '\nconsole.log(JSON.stringify(Array.from(logits.data)));\n');
        assert.equal(run.status, 0, run.stderr);
        const raw = Float32Array.from(JSON.parse(run.stdout.trim().split('\n').at(-1)));
        const vector = Array.from({ length: model.cfg.d_model }, (_, i) => (i % 2 ? 2 : -2));
        const ids = [[0, 450, 988, 860]];
        const steered = toFloat32((await model.run(ids, { feeds: { 'blocks.1.hook_resid_pre': { add: vector } } })).logits);
        assert.deepEqual(raw, steered);
        assert.notDeepEqual(raw, toFloat32((await model.run(ids)).logits));
      });
    }

    if (c.tokenizer) {
      test('tokenizer.json encodes and decodes as the Python tokenizer', () => {
        c.tokenizer.texts.forEach((text, i) => {
          assert.deepEqual(model.toTokens(text).tokens[0], c.tokenizer.tokens[i], JSON.stringify(text));
          assert.equal(model.toString(c.tokenizer.tokens[i]), c.tokenizer.decoded[i]);
        });
      });
    }
  });
}

/** Run the ```js block after `<!-- marker -->` in the README on `bundle` (plus `tail`), from inside the package. */
function runReadmeBlock(marker, bundle, tail = '') {
  const here = dirname(fileURLToPath(import.meta.url));
  const readme = readFileSync(join(here, '..', '..', 'README.md'), 'utf8');
  const block = readme.split(`<!-- ${marker} -->`)[1].match(/```js\n([\s\S]*?)```/)[1];
  assert.ok(block.includes("'models/pydoc-gpt2-js'"), marker);
  const file = join(here, `.readme-${marker}.mjs`); // inside the package, so that 'graphlens' resolves
  writeFileSync(file, block.replaceAll("'models/pydoc-gpt2-js'", JSON.stringify(bundle)) + tail);
  try {
    return spawnSync(process.execPath, [file], { encoding: 'utf8' });
  } finally {
    rmSync(file);
  }
}
