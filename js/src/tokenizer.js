// Byte-level BPE (GPT-2 style) from a Hugging Face tokenizer.json: the tokenizers this package reads.
import { GraphlensError } from './errors.js';

const SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

function bytesToUnicode() {
  const bs = [];
  for (let i = 33; i <= 126; i++) bs.push(i);
  for (let i = 161; i <= 172; i++) bs.push(i);
  for (let i = 174; i <= 255; i++) bs.push(i);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const encoder = new Map();
  bs.forEach((b, i) => encoder.set(b, String.fromCodePoint(cs[i])));
  return encoder;
}

function byteLevelPart(spec, kind) {
  if (!spec) return null;
  if (spec.type === 'ByteLevel') return spec;
  throw new GraphlensError(`tokenizer.json has a ${spec.type} ${kind}; this package reads byte-level BPE tokenizers (GPT-2 style) only: tokenize in Python and pass token ids`);
}

export class Tokenizer {
  /** @param {object} json the parsed tokenizer.json */
  constructor(json) {
    const model = json.model || {};
    if (model.type !== 'BPE') throw new GraphlensError(`tokenizer.json has a ${model.type} model; only BPE is supported: pass token ids instead of text`);
    this.pre = byteLevelPart(json.pre_tokenizer, 'pre_tokenizer');
    byteLevelPart(json.decoder, 'decoder');
    if (json.normalizer) throw new GraphlensError(`tokenizer.json has a ${json.normalizer.type} normalizer, which this package does not apply: pass token ids instead of text`);
    this.vocab = new Map(Object.entries(model.vocab));
    this.idToToken = new Map([...this.vocab].map(([t, i]) => [i, t]));
    this.ranks = new Map();
    (model.merges || []).forEach((m, i) => this.ranks.set(Array.isArray(m) ? m.join(' ') : m, i));
    this.added = (json.added_tokens || []).map((t) => ({ id: t.id, content: t.content }));
    for (const t of this.added) this.idToToken.set(t.id, t.content);
    this.addedIds = new Set(this.added.map((t) => t.id));
    this.byteEncoder = bytesToUnicode();
    this.byteDecoder = new Map([...this.byteEncoder].map(([b, c]) => [c, b]));
    this.cache = new Map();
  }

  /** Token ids of `text` (no special tokens added; added tokens in the text are matched first). */
  encode(text) {
    const ids = [];
    for (const piece of this.splitAdded(text)) {
      if (typeof piece === 'number') ids.push(piece);
      else ids.push(...this.encodeOrdinary(piece));
    }
    return ids;
  }

  splitAdded(text) {
    const pieces = [];
    let rest = text;
    while (rest.length) {
      let best = null;
      for (const t of this.added) {
        const at = rest.indexOf(t.content);
        if (at >= 0 && (best === null || at < best.at || (at === best.at && t.content.length > best.t.content.length))) best = { at, t };
      }
      if (best === null) {
        pieces.push(rest);
        break;
      }
      if (best.at > 0) pieces.push(rest.slice(0, best.at));
      pieces.push(best.t.id);
      rest = rest.slice(best.at + best.t.content.length);
    }
    return pieces;
  }

  encodeOrdinary(text) {
    if (this.pre && this.pre.add_prefix_space && !/^\s/.test(text)) text = ' ' + text;
    const words = this.pre && this.pre.use_regex === false ? [text] : text.match(SPLIT) || [];
    const ids = [];
    const utf8 = new TextEncoder();
    for (const word of words) {
      const mapped = [...utf8.encode(word)].map((b) => this.byteEncoder.get(b)).join('');
      for (const token of this.bpe(mapped)) {
        const id = this.vocab.get(token);
        if (id === undefined) throw new GraphlensError(`token ${JSON.stringify(token)} is not in the vocabulary (tokenizer.json without byte-level coverage?)`);
        ids.push(id);
      }
    }
    return ids;
  }

  bpe(word) {
    const cached = this.cache.get(word);
    if (cached) return cached;
    let parts = [...word];
    while (parts.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < parts.length - 1; i++) {
        const rank = this.ranks.get(parts[i] + ' ' + parts[i + 1]);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = i;
        }
      }
      if (best < 0) break;
      const a = parts[best];
      const b = parts[best + 1];
      const merged = [];
      for (let i = 0; i < parts.length; i++) {
        if (i < parts.length - 1 && parts[i] === a && parts[i + 1] === b) {
          merged.push(a + b);
          i++;
        } else merged.push(parts[i]);
      }
      parts = merged;
    }
    this.cache.set(word, parts);
    return parts;
  }

  /** The text of `ids` (special tokens kept unless `skipSpecial`). */
  decode(ids, { skipSpecial = false } = {}) {
    let out = '';
    let bytes = [];
    const flush = () => {
      out += new TextDecoder().decode(Uint8Array.from(bytes));
      bytes = [];
    };
    for (const raw of ids) {
      const id = Number(raw);
      if (this.addedIds.has(id)) {
        flush();
        if (!skipSpecial) out += this.idToToken.get(id);
        continue;
      }
      const token = this.idToToken.get(id);
      if (token === undefined) throw new GraphlensError(`token id ${id} is not in the vocabulary (size ${this.idToToken.size})`);
      for (const ch of token) bytes.push(this.byteDecoder.get(ch));
    }
    flush();
    return out;
  }
}
