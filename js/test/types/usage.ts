// Compiled (not run) by types.test.js: the README's uses of the API type-check against src/index.d.ts.
import * as ort from 'onnxruntime-node';
import { loadBundle, toFloat32, GraphlensError, type Bundle, type Feeds } from 'graphlens';

async function main(): Promise<void> {
  const model: Bundle = await loadBundle('models/pydoc-gpt2-js', { ort });
  const { tokens, attentionMask } = model.toTokens(['a', 'bc']);
  const { logits, hooks } = await model.run(tokens, { hooks: ['blocks.1.attn.hook_pattern'] });
  const values: Float32Array = toFloat32(logits);
  const dims: readonly number[] = hooks['blocks.1.attn.hook_pattern'].dims;
  const feeds: Feeds = { 'blocks.1.attn.hook_z': { patch: { data: new Float32Array(4), dims: [1, 1, 4, 1] }, patch_mask: [[[[true]]]] } };
  await model.run(tokens, { feeds });
  const text: string = await model.generate('The', { maxNewTokens: 2, doSample: false });
  const texts: string[] = await model.generate(['The', 'A'], { maxNewTokens: 2 });
  const rows: number[][] = await model.generate(tokens, { attentionMask, maxNewTokens: 2, seed: 1, topK: 3 });
  const step = await model.step(tokens, { attentionMask, past: null });
  await model.step([[1], [2]], { past: step.present, attentionMask: attentionMask.map((r) => [...r, 1]) });
  console.log(values.length, dims, text, texts, rows, new GraphlensError('x') instanceof Error);
}
void main;
