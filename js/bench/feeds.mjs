// What onnxruntime-node does with substitution feeds, and what a deployment costs: ratios in one run.
//   node bench/feeds.mjs BUNDLE DEPLOYMENT [SITE]
// BUNDLE: a `graphlens export` bundle; DEPLOYMENT: `graphlens deploy BUNDLE --patch SITE -o DEPLOYMENT`.
import * as ort from 'onnxruntime-node';
import { loadBundle, toFloat32 } from 'graphlens';

const [bundleDir, deployDir, site = 'blocks.1.attn.hook_z'] = process.argv.slice(2);
if (!deployDir) throw new Error('usage: node bench/feeds.mjs BUNDLE DEPLOYMENT [SITE]');
const full = await loadBundle(bundleDir, { ort });
const deployed = await loadBundle(deployDir, { ort });
const { d_vocab: vocab, n_ctx: nCtx } = full.cfg;
const pos = Math.min(64, nCtx);
const tokens = [Array.from({ length: pos }, (_, i) => (i * 7919) % vocab)];
const hook = full.manifest.hooks.find((h) => h.name === site);
const dims = hook.shape.map((d) => (typeof d === 'number' ? d : 1));
const size = dims.reduce((a, b) => a * b, 1);
const patch = { patch: { data: new Float32Array(size), dims }, patch_mask: { data: new Array(size).fill(1), dims } };

const maxDiff = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
const base = toFloat32((await full.run(tokens)).logits);
// the raw binding on the bundle: feeds for overridable initializers
const raw = Object.fromEntries(Object.entries(patch).map(([k, v]) => [`${site}.${k}`, new ort.Tensor(k === 'patch' ? 'float32' : 'bool', k === 'patch' ? v.data : Uint8Array.from(v.data), v.dims)]));
const ids = new ort.Tensor('int64', BigInt64Array.from(tokens[0], BigInt), [1, pos]);
const dropped = toFloat32((await full.session.run({ input_ids: ids, ...raw }, ['logits'])).logits);
const patched = toFloat32((await deployed.run(tokens, { feeds: { [site]: patch } })).logits);
console.log(`session.inputNames: bundle ${full.session.inputNames.length}, deployment ${deployed.session.inputNames.length}`);
console.log(`zero-patching ${site} on the bundle (raw feeds) changes logits by ${maxDiff(base, dropped)} (dropped)`);
console.log(`the same patch on the deployment changes them by ${maxDiff(base, patched).toFixed(3)}`);

async function median(fn, repeats = 15) {
  const times = [];
  for (let i = 0; i < repeats + 2; i++) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  return times.slice(2).sort((a, b) => a - b)[Math.floor(repeats / 2)];
}
const plain = await median(() => full.session.run({ input_ids: ids }, ['logits']));
const dep = await median(() => deployed.run(tokens));
const depPatched = await median(() => deployed.run(tokens, { feeds: { [site]: patch } }));
console.log(`forward, batch 1 × ${pos}: deployment ${(dep / plain).toFixed(2)}x the bundle's model.onnx, patched ${(depPatched / plain).toFixed(2)}x`);
