// An attached SAE read and patched from JavaScript: run by tests/test_saes.py (which writes GRAPHLENS_SAES_REFS),
// kept out of test/ so that the reference suite (tests/test_js.py: nothing skipped) does not see it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadBundle, toFloat32 } from 'graphlens';

const REFS = process.env.GRAPHLENS_SAES_REFS;
const TOLERANCE = 1e-4;

function assertClose(tensor, want, what) {
  const got = toFloat32(tensor);
  assert.equal(got.length, want.length, `${what}: size`);
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
  assert.ok(worst <= TOLERANCE, `${what}: max abs diff ${worst} > ${TOLERANCE}`);
}

test('SAE features, a probe, a feature ablation and feature steering from Node.js', { skip: !REFS }, async () => {
  const refs = JSON.parse(readFileSync(join(REFS, 'saes.json'), 'utf8'));
  const model = await loadBundle(refs.bundle, { ort });
  const { acts, probe, d_sae: dSae, feature } = refs;
  const read = await model.run(refs.tokens, { hooks: [acts, probe] });
  assert.deepEqual(read.hooks[acts].dims.map(Number), refs.acts_dims);
  assertClose(read.hooks[acts], refs.acts_values, acts);
  assertClose(read.hooks[probe], refs.probe_values, probe);
  assertClose(read.logits, refs.logits, 'logits');

  const mask = new Array(dSae).fill(0);
  mask[feature] = 1;
  const ablated = await model.run(refs.tokens, { feeds: { [acts]: {
    patch: { data: new Float32Array(dSae), dims: [1, 1, dSae] }, patch_mask: { data: mask, dims: [1, 1, dSae] } } } });
  assertClose(ablated.logits, refs.ablated, 'ablated logits');

  const add = new Array(dSae).fill(0);
  add[feature] = refs.steer_by;
  const steered = await model.run(refs.tokens, { feeds: { [acts]: { add } } });
  assertClose(steered.logits, refs.steered, 'steered logits');
});
