// A graphlens bundle read from its manifest: hook outputs, patches by hook name, KV-cache generation.
import { GraphlensError } from './errors.js';
import { Tokenizer } from './tokenizer.js';
import { toTensor, defaultTensor, broadcastDims, toFloat32, typedData } from './tensors.js';
import { argmax, sample, seededRandom } from './sampling.js';

export const FORMAT_VERSION = 2;
const KINDS = { patch: 'patch', patch_mask: 'patch_mask', patchMask: 'patch_mask', add: 'add' };

/** `{patch, patch_mask, add}` (any of them) rather than one tensor. */
function isSiteFeeds(value) {
  return value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype
    && !('dims' in value) && Object.keys(value).length > 0 && Object.keys(value).every((k) => k in KINDS);
}

function overridable(name, fix) {
  return new GraphlensError(`${name} is an overridable initializer in this bundle, and ONNX Runtime's JavaScript bindings silently drop feeds for those: load a deployment that has it as a required input (${fix})`);
}

async function nodeReader(dir) {
  const { readFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  return async (name) => new Uint8Array(await readFile(join(dir, name)));
}

/**
 * Load the bundle in `dir` (a folder path in Node; with `readFile`, any source: `name => Uint8Array`).
 * @param {string} dir
 * @param {{ort: object, readFile?: (name: string) => Promise<Uint8Array>, sessionOptions?: object}} options
 */
export async function loadBundle(dir, { ort, readFile, sessionOptions = {} } = {}) {
  if (!ort || !ort.InferenceSession) throw new GraphlensError('loadBundle needs {ort}: import * as ort from "onnxruntime-node" (or onnxruntime-web)');
  const read = readFile ?? (await nodeReader(dir));
  const manifest = JSON.parse(new TextDecoder().decode(await read('graphlens.json')));
  if (manifest.format !== 'graphlens-bundle') throw new GraphlensError(`${dir}/graphlens.json is not a graphlens manifest`);
  if (manifest.format_version > FORMAT_VERSION) throw new GraphlensError(`${dir} has format version ${manifest.format_version}; this package reads up to ${FORMAT_VERSION}: upgrade it`);
  let tokenizer = null;
  if ((manifest.tokenizer_files || []).includes('tokenizer.json')) {
    tokenizer = new Tokenizer(JSON.parse(new TextDecoder().decode(await read('tokenizer.json'))));
  }
  const bundle = new Bundle(ort, manifest, tokenizer, read, { logSeverityLevel: 3, ...sessionOptions }, readFile ? null : dir);
  bundle.session = await bundle.openSession(manifest.model_file);
  return bundle;
}

/** The graph inputs and hooks of one graph (model.onnx or decoder.onnx), as the manifest lists them. */
class GraphSpec {
  constructor(section) {
    this.inputs = new Map(section.inputs.map((i) => [i.name, i]));
    this.hooks = new Map((Array.isArray(section.hooks) ? section.hooks : []).map((h) => [h.name, h]));
    this.substitution = new Map();
    for (const hook of this.hooks.values()) {
      for (const [kind, spec] of Object.entries(hook.substitution_inputs || {})) this.substitution.set(spec.name, { ...spec, kind, hook });
      // version-1 manifests: names only (overridable initializers)
      for (const [kind, name] of Object.entries(hook.inputs || {})) {
        if (!this.substitution.has(name)) this.substitution.set(name, { name, kind, hook, required: false, rank: hook.shape.length });
      }
    }
  }
}

export class Bundle {
  constructor(ort, manifest, tokenizer, read, sessionOptions, dir) {
    this.ort = ort;
    this.manifest = manifest;
    this.cfg = manifest.config;
    this.dtype = manifest.dtype;
    this.tokenizer = tokenizer;
    this.read = read;
    this.sessionOptions = sessionOptions;
    this.dir = dir;
    this.model = new GraphSpec(manifest);
    this.decoderSpec = manifest.decoder ? new GraphSpec(manifest.decoder) : null;
    this.decoderSession = null;
  }

  /** Hook names this bundle outputs, in TransformerLens order. */
  get hookNames() {
    return [...this.model.hooks.keys()];
  }

  /** Hooks whose substitution inputs this binding can feed (required inputs: a `graphlens deploy` bundle). */
  get patchSites() {
    return [...this.model.hooks.values()].filter((h) => Object.values(h.substitution_inputs || {}).some((s) => s.required)).map((h) => h.name);
  }

  async openSession(file) {
    if (this.dir !== null) {
      const { join } = await import('node:path');
      return this.ort.InferenceSession.create(join(this.dir, file), this.sessionOptions);
    }
    const options = { ...this.sessionOptions };
    if (this.manifest.external_data_file) {
      options.externalData = [{ path: this.manifest.external_data_file, data: await this.read(this.manifest.external_data_file) }];
    }
    return this.ort.InferenceSession.create(await this.read(file), options);
  }

  async decoder() {
    if (!this.decoderSpec) throw new GraphlensError('this bundle has no decoder graph (an intervened bundle, or exported with --no-decoder): export or deploy it with the decoder');
    if (!this.manifest.decoder.layers) throw new GraphlensError('this manifest (format 1) describes its decoder in prose only: export the bundle again to generate from JavaScript');
    if (!this.decoderSession) this.decoderSession = await this.openSession(this.manifest.decoder.file);
    return this.decoderSession;
  }

  // ---- tokens --------------------------------------------------------------------------------------
  requireTokenizer() {
    if (!this.tokenizer) throw new GraphlensError('this bundle has no tokenizer.json: pass token ids instead of text');
    if (!this.manifest.tokenizer) throw new GraphlensError('this manifest (format 1) has no tokenizer entry (special token ids): export the bundle again, or pass token ids');
    return this.tokenizer;
  }

  /**
   * Token rows and their attention mask, as TransformerLens' to_tokens (BOS prepended unless
   * prependBos is false; several texts are padded with pad_token_id on `paddingSide`).
   */
  toTokens(input, { prependBos = true, paddingSide } = {}) {
    const tok = this.requireTokenizer();
    const info = this.manifest.tokenizer || {};
    const texts = typeof input === 'string' ? [input] : input;
    const rows = texts.map((t) => {
      const ids = tok.encode(t);
      if (info.prepends_bos) return prependBos ? ids : ids.slice(ids[0] === info.bos_token_id ? 1 : 0);
      return prependBos ? [info.bos_token_id, ...ids] : ids;
    });
    const side = paddingSide ?? (texts.length > 1 ? 'left' : info.padding_side || 'right');
    return this.pad(rows, side);
  }

  /** Pad token rows (lists of ids) to one length; the mask marks each row's own tokens (its BOS included) with 1. */
  pad(rows, side = 'left') {
    const info = this.manifest.tokenizer || {};
    const width = Math.max(...rows.map((r) => r.length));
    const pad = info.pad_token_id ?? 0;
    const tokens = rows.map((r) => (side === 'left' ? [...new Array(width - r.length).fill(pad), ...r] : [...r, ...new Array(width - r.length).fill(pad)]));
    const mask = rows.map((r) => {
      const real = new Array(width).fill(1);
      const n = width - r.length;
      for (let i = 0; i < n; i++) real[side === 'left' ? i : width - 1 - i] = 0;
      return real;
    });
    return { tokens, attentionMask: mask };
  }

  tokensTensor(tokens) {
    if (tokens instanceof this.ort.Tensor) return tokens;
    const rows = typeof tokens[0] === 'number' || typeof tokens[0] === 'bigint' ? [tokens] : tokens;
    return new this.ort.Tensor('int64', typedData(rows.flat(), 'int64'), [rows.length, rows[0].length]);
  }

  toString(ids, options) {
    return this.requireTokenizer().decode(ids, options);
  }

  // ---- feeds ---------------------------------------------------------------------------------------
  /**
   * The feeds for one run of `session` (a graph described by `spec`): `given` by hook name
   * (`{hook: {patch, patch_mask, add}}`) or by input name, checked against the manifest, plus the
   * "no intervention" default of every required input not given.
   */
  buildFeeds(session, spec, base, given, sizes) {
    const feeds = { ...base };
    for (const [key, value] of Object.entries(given || {})) {
      if (!spec.hooks.has(key)) {
        this.addFeed(feeds, spec, key, value, sizes);
        continue;
      }
      if (!isSiteFeeds(value)) throw new GraphlensError(`feed for hook ${key}: give {patch, patch_mask, add} (any of them), or key the tensor by input name (${key}.add)`);
      for (const [kind, v] of Object.entries(value)) this.addFeed(feeds, spec, `${key}.${KINDS[kind]}`, v, sizes);
    }
    for (const name of session.inputNames) {
      if (name in feeds) continue;
      const entry = spec.substitution.get(name) ?? spec.inputs.get(name);
      if (!entry || !entry.default) throw new GraphlensError(`the graph needs input ${name}, which the manifest gives no default for: feed it`);
      feeds[name] = defaultTensor(this.ort, entry.default, entry.dtype);
    }
    return feeds;
  }

  unknown(key, spec) {
    const sites = [...spec.hooks.values()].filter((h) => Object.keys(h.inputs || {}).length).map((h) => h.name);
    return new GraphlensError(`${key} is neither a hook nor an input of this graph; its sites with substitution inputs: ${sites.slice(0, 6).join(', ')}${sites.length > 6 ? ', …' : ''}`);
  }

  addFeed(feeds, spec, name, value, sizes) {
    const sub = spec.substitution.get(name);
    if (sub) {
      if (!sub.required) throw overridable(name, `graphlens deploy BUNDLE --patch ${sub.hook.name} -o OUT`);
      const dtype = sub.dtype ?? (sub.kind === 'patch_mask' ? 'bool' : this.dtype);
      const tensor = toTensor(this.ort, value, dtype, name);
      const dims = broadcastDims(tensor.dims, sub.hook.shape, sizes, name);
      feeds[name] = dims.length === tensor.dims.length ? tensor : tensor.reshape(dims);
      return;
    }
    const input = spec.inputs.get(name);
    const hook = name.slice(0, name.lastIndexOf('.'));
    if (!input && spec.hooks.has(hook)) throw new GraphlensError(`${hook} has no ${name.slice(hook.length + 1)} input in this bundle: make a deployment with it as a patch site (graphlens deploy BUNDLE --patch ${hook} -o OUT)`);
    if (!input) throw this.unknown(name, spec);
    if (!input.required) throw overridable(name, 'graphlens deploy BUNDLE -o OUT');
    feeds[name] = toTensor(this.ort, value, input.dtype, name);
  }

  checkHooks(names, spec) {
    for (const name of names) {
      if (!spec.hooks.has(name)) {
        throw new GraphlensError(`${name} is not a hook output of this bundle${this.manifest.deployment ? ' (deploy it with --hooks ' + name + ')' : ''}; it has ${spec.hooks.size} hooks, e.g. ${[...spec.hooks.keys()].slice(0, 3).join(', ')}`);
      }
    }
  }

  // ---- runs ----------------------------------------------------------------------------------------
  /**
   * One pass of model.onnx: `{logits, hooks: {name: Tensor}}`.
   * @param tokens token ids: number[] (one row), number[][] or an int64 ort.Tensor
   * @param {{hooks?: string[], feeds?: object}} options
   */
  async run(tokens, { hooks = [], feeds = {} } = {}) {
    const ids = this.tokensTensor(tokens);
    this.checkHooks(hooks, this.model);
    const [batch, pos] = ids.dims;
    const sizes = { batch, pos, query_pos: pos, key_pos: pos };
    const inputs = this.buildFeeds(this.session, this.model, { input_ids: ids }, feeds, sizes);
    const out = await this.session.run(inputs, ['logits', ...hooks]);
    return { logits: out.logits, hooks: Object.fromEntries(hooks.map((h) => [h, out[h]])) };
  }

  /** Empty past keys/values for `batch` rows (the decoder's first step). */
  emptyPast(batch) {
    const entry = this.manifest.decoder;
    const shape = entry.empty_past.shape.map((d) => (d === 'batch' ? batch : d));
    const past = {};
    for (const layer of entry.layers) {
      for (const name of [layer.past_key, layer.past_value]) past[name] = new this.ort.Tensor(entry.empty_past.dtype, typedData([], entry.empty_past.dtype), shape);
    }
    return past;
  }

  /**
   * One decoder step: the new `tokens` [batch, new] after `past` (null: empty), with the attention
   * mask over past + new positions. Returns `{logits, present, hooks}`; `present` is the next past.
   */
  async step(tokens, { attentionMask, past = null, hooks = [], feeds = {} } = {}) {
    const session = await this.decoder();
    const ids = this.tokensTensor(tokens);
    const [batch, pos] = ids.dims;
    const mask = attentionMask ?? Array.from({ length: batch }, () => new Array(pos + this.pastLength(past)).fill(1));
    if (!Array.isArray(mask) || mask.length !== batch) throw new GraphlensError(`attentionMask: give ${batch} rows of 1 (token) / 0 (padding) over past + new positions`);
    const total = mask[0].length;
    if (total !== pos + this.pastLength(past)) throw new GraphlensError(`attentionMask has ${total} columns; past (${this.pastLength(past)}) + new (${pos}) positions need ${pos + this.pastLength(past)}`);
    const positions = mask.map((row) => {
      let sum = 0;
      return row.map((m) => Math.max((sum += Number(m)) - 1, 0)).slice(total - pos);
    });
    this.checkHooks(hooks, this.decoderSpec);
    const base = {
      input_ids: ids,
      attention_mask: new this.ort.Tensor('int64', typedData(mask.flat(), 'int64'), [batch, total]),
      position_ids: new this.ort.Tensor('int64', typedData(positions.flat(), 'int64'), [batch, pos]),
      ...(past ?? this.emptyPast(batch)),
    };
    const sizes = { batch, pos, query_pos: pos, key_pos: total };
    const inputs = this.buildFeeds(session, this.decoderSpec, base, feeds, sizes);
    const layers = this.manifest.decoder.layers;
    const presentNames = layers.flatMap((l) => [l.present_key, l.present_value]);
    const out = await session.run(inputs, ['logits', ...presentNames, ...hooks]);
    const present = {};
    for (const l of layers) {
      present[l.past_key] = out[l.present_key];
      present[l.past_value] = out[l.present_value];
    }
    return { logits: out.logits, present, hooks: Object.fromEntries(hooks.map((h) => [h, out[h]])) };
  }

  pastLength(past) {
    if (!past) return 0;
    return Object.values(past)[0].dims[2];
  }

  /**
   * Generate up to `maxNewTokens` tokens with the KV cache, as TransformerLens' generate: text in →
   * text out (several texts are left-padded), token rows in → token rows out (`attentionMask` marks
   * their padding). `doSample: false` is greedy.
   */
  async generate(input, { maxNewTokens = 10, doSample = true, temperature = 1, topK, topP, freqPenalty = 0, seed = 0,
    stopAtEos = true, eosTokenId, feeds = {}, prependBos = true, paddingSide, attentionMask, onToken } = {}) {
    const isText = typeof input === 'string' || (Array.isArray(input) && typeof input[0] === 'string');
    let tokens;
    let mask;
    if (isText) ({ tokens, attentionMask: mask } = this.toTokens(input, { prependBos, paddingSide }));
    else {
      tokens = (typeof input[0] === 'number' ? [input] : input).map((r) => r.map(Number));
      mask = attentionMask ? attentionMask.map((r) => r.map(Number)) : tokens.map((r) => r.map(() => 1));
    }
    if (tokens[0].length + maxNewTokens > this.cfg.n_ctx) {
      throw new GraphlensError(`${tokens[0].length} prompt tokens + maxNewTokens=${maxNewTokens} exceed the context n_ctx=${this.cfg.n_ctx}`);
    }
    const eos = eosTokenId ?? this.manifest.tokenizer?.eos_token_id;
    if (stopAtEos && (eos === undefined || eos === null)) throw new GraphlensError('stopAtEos needs an eosTokenId: pass eosTokenId or stopAtEos: false');
    const random = seededRandom(seed);
    const batch = tokens.length;
    const finished = new Array(batch).fill(false);
    let past = null;
    let fresh = tokens;
    for (let n = 0; n < maxNewTokens; n++) {
      const { logits, present } = await this.step(fresh, { attentionMask: mask, past, feeds });
      past = present;
      const [, pos, vocab] = logits.dims;
      const values = toFloat32(logits);
      const next = [];
      for (let b = 0; b < batch; b++) {
        const row = values.subarray((b * pos + pos - 1) * vocab, (b * pos + pos) * vocab);
        let t = doSample ? sample(row, random, { temperature, topK, topP, freqPenalty, previous: tokens[b] }) : argmax(row);
        if (stopAtEos) {
          if (finished[b]) t = eos;
          if (t === eos) finished[b] = true;
        }
        next.push(t);
      }
      tokens = tokens.map((r, b) => [...r, next[b]]);
      mask = mask.map((r) => [...r, 1]);
      fresh = next.map((t) => [t]);
      if (onToken) onToken(next);
      if (stopAtEos && finished.every(Boolean)) break;
    }
    if (!isText) return tokens;
    const texts = tokens.map((r) => this.toString(r, { skipSpecial: true }));
    return typeof input === 'string' ? texts[0] : texts;
  }
}
