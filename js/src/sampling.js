// Next-token choice: greedy (numpy's argmax: the first maximum) or TransformerLens-style sampling.
import { GraphlensError } from './errors.js';

/** A seeded uniform [0, 1) generator (mulberry32): the same seed gives the same tokens. */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** Temperature, frequency penalty, then top_k or top_p (top_k wins), as TransformerLens' sample_logits. */
export function sample(row, random, { temperature = 1, topK, topP, freqPenalty = 0, previous = [] } = {}) {
  if (!(temperature > 0)) throw new GraphlensError(`temperature must be > 0 to sample (got ${temperature}); use doSample: false for greedy`);
  const logits = Float64Array.from(row, (v) => v / temperature);
  if (freqPenalty > 0) for (const t of previous) if (t < logits.length) logits[t] -= freqPenalty;
  const order = [...logits.keys()].sort((a, b) => logits[b] - logits[a] || a - b);
  let keep = order.length;
  if (topK !== undefined && topK !== null) {
    if (!(topK > 0)) throw new GraphlensError(`topK must be > 0, got ${topK}`);
    const kth = logits[order[Math.min(topK, order.length) - 1]];
    keep = order.findIndex((i) => logits[i] < kth);
    if (keep < 0) keep = order.length;
  } else if (topP !== undefined && topP !== null) {
    if (!(topP > 0 && topP <= 1)) throw new GraphlensError(`topP must be in (0, 1], got ${topP}`);
    const max = logits[order[0]];
    const probs = order.map((i) => Math.exp(logits[i] - max));
    const total = probs.reduce((a, b) => a + b, 0);
    let mass = 0;
    keep = 0;
    while (keep < order.length && (keep === 0 || mass <= topP)) {
      mass += probs[keep] / total;
      keep++;
    }
  }
  const kept = order.slice(0, keep);
  const max = logits[kept[0]];
  const weights = kept.map((i) => Math.exp(logits[i] - max));
  let u = random() * weights.reduce((a, b) => a + b, 0);
  for (let j = 0; j < kept.length; j++) {
    u -= weights[j];
    if (u < 0) return kept[j];
  }
  return kept[kept.length - 1];
}
