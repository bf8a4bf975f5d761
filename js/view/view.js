// graphlens view: a bundle's attention patterns, logit lens, head attribution, head ablation and steering,
// computed in the browser by onnxruntime-web (WebGPU when navigator.gpu gives an adapter, else WebAssembly)
// from a `graphlens deploy` bundle in ./bundle/. `?backend=wasm|webgpu|auto` (default auto) chooses.
import { loadBundle, toFloat32 } from './graphlens/index.js';
import { BACKEND_NAMES, openOnBackend } from './backend.js';

const TOP_K = 8;
const $ = (id) => document.getElementById(id);
function append(node, children) { for (const c of children) node.append(c); return node; }
const fmt = (x) => x.toFixed(4);
const state = { ablated: new Set(), selected: [0, 0], query: null, steer: null, queue: Promise.resolve(), steerGeneration: 0 };
let ort = null; // the onnxruntime-web build of the chosen backend

function status(text, kind = 'running') {
  $('status').textContent = text;
  $('status').dataset.state = kind;
}

async function fetchBytes(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

/** The float32 arrays of lens.bin (W_U [d_model, vocab], b_U, W_O [layers, heads, d_head, d_model], ln_final.*). */
async function loadLens() {
  const index = JSON.parse(new TextDecoder().decode(await fetchBytes('lens.json')));
  const bytes = await fetchBytes('lens.bin');
  const arrays = {};
  for (const [key, { offset, dims }] of Object.entries(index.arrays)) {
    arrays[key] = new Float32Array(bytes.buffer, bytes.byteOffset + offset, dims.reduce((a, b) => a * b, 1));
  }
  return { ...index, ...arrays };
}

/** ln_final applied to one residual vector, with its own statistics (TransformerLens' arithmetic). */
function finalNorm(x, lens) {
  const kind = lens.normalization_type;
  if (!['LN', 'LNPre', 'RMS', 'RMSPre'].includes(kind)) return x;
  const d = x.length;
  let y = Float64Array.from(x);
  if (kind.startsWith('LN')) {
    const mean = y.reduce((a, b) => a + b, 0) / d;
    y = y.map((v) => v - mean);
  }
  const scale = Math.sqrt(y.reduce((a, b) => a + b * b, 0) / d + lens.eps);
  return y.map((v, i) => v / scale * ((kind === 'LN' || kind === 'RMS') && lens['ln_final.w'] ? lens['ln_final.w'][i] : 1)
    + (kind === 'LN' && lens['ln_final.b'] ? lens['ln_final.b'][i] : 0));
}

/** x [d_model] @ W_U + b_U: the logits of a residual direction. */
function unembed(x, lens) {
  const vocab = lens.b_U.length;
  const out = Float64Array.from(lens.b_U);
  for (let i = 0; i < x.length; i++) {
    const row = lens.W_U.subarray(i * vocab, (i + 1) * vocab);
    for (let v = 0; v < vocab; v++) out[v] += x[i] * row[v];
  }
  return out;
}

function topk(values, k) {
  return [...values.keys()].sort((a, b) => values[b] - values[a]).slice(0, k);
}

function tokenText(id) {
  return state.model.toString([id]).replace(/\n/g, '⏎').replace(/\t/g, '⇥');
}

// ---- runs ------------------------------------------------------------------------------------------
function hookNames(cfg) {
  const n = cfg.n_layers;
  const names = [];
  for (let l = 0; l < n; l++) names.push(`blocks.${l}.attn.hook_pattern`, `blocks.${l}.hook_resid_pre`, `blocks.${l}.attn.hook_z`);
  names.push(`blocks.${n - 1}.hook_resid_post`);
  if (state.model.hookNames.includes('ln_final.hook_scale')) names.push('ln_final.hook_scale');
  return names;
}

/** Feeds that zero the hook_z of every ablated head (its layer's .patch and .patch_mask). */
function ablationFeeds() {
  const { n_heads: H, d_head: D } = state.model.cfg;
  const feeds = {};
  for (const key of state.ablated) {
    const [l, h] = key.split(':').map(Number);
    const name = `blocks.${l}.attn.hook_z`;
    feeds[name] ??= { patch: { data: new Float32Array(H * D), dims: [1, 1, H, D] }, patch_mask: { data: new Array(H).fill(0), dims: [1, 1, H, 1] } };
    feeds[name].patch_mask.data[h] = 1;
  }
  return feeds;
}

async function analyse() {
  const { model } = state;
  status('running…');
  const { tokens } = model.toTokens($('prompt').value);
  const row = tokens[0];
  if (row.length > model.cfg.n_ctx) throw new Error(`${row.length} tokens: the model's context is ${model.cfg.n_ctx}`);
  const out = await model.run([row], { hooks: hookNames(model.cfg) });
  const hooks = Object.fromEntries(Object.entries(out.hooks).map(([k, t]) => [k, toFloat32(t)]));
  const vocab = out.logits.dims[2];
  const logits = toFloat32(out.logits);
  state.run = { row, hooks, last: logits.slice((row.length - 1) * vocab, row.length * vocab) };
  state.query = null;
  renderTokens();
  renderGrid();
  renderLens();
  state.target = topk(state.run.last, 1)[0];
  $('target').value = tokenText(state.target);
  renderAttribution();
  await renderPrediction();
  steeringScale();
  await renderSteering();
}

// ---- views -----------------------------------------------------------------------------------------
function pattern(layer) {
  return state.run.hooks[`blocks.${layer}.attn.hook_pattern`];
}

function renderTokens() {
  const { row } = state.run;
  const strip = $('tokens');
  strip.replaceChildren(...row.map((id, pos) => {
    const span = append(document.createElement('span'), [tokenText(id)]);
    Object.assign(span.dataset, { pos, id });
    span.className = 'tok';
    span.title = `position ${pos}, token ${id}`;
    span.addEventListener('mouseenter', () => { state.query = pos; showAttends(); });
    return span;
  }));
}

/** Colour every token by the selected head's attention from the hovered one (data-attn holds the weight). */
function showAttends() {
  const [layer, head] = state.selected;
  const T = state.run.row.length;
  const q = state.query;
  const p = pattern(layer);
  for (const span of $('tokens').children) {
    const k = Number(span.dataset.pos);
    span.classList.toggle('query', k === q);
    if (q === null) { span.style.background = ''; delete span.dataset.attn; continue; }
    const w = p[(head * T + q) * T + k];
    span.dataset.attn = String(w);
    span.style.background = `rgba(214, 96, 0, ${w.toFixed(3)})`;
  }
  if (q === null) return;
  const best = topk(Array.from({ length: q + 1 }, (_, k) => p[(head * T + q) * T + k]), 3);
  $('attend-readout').textContent = `L${layer}H${head} from ${q} “${tokenText(state.run.row[q])}”: `
    + best.map((k) => `${k} “${tokenText(state.run.row[k])}” ${fmt(p[(head * T + q) * T + k])}`).join(', ');
}

function drawPattern(canvas, layer, head) {
  const T = state.run.row.length;
  const p = pattern(layer);
  const ctx = canvas.getContext('2d');
  const cell = canvas.width / T;
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let q = 0; q < T; q++) {
    for (let k = 0; k <= q; k++) {
      const w = p[(head * T + q) * T + k];
      ctx.fillStyle = `rgba(20, 60, 170, ${w})`;
      ctx.fillRect(k * cell, q * cell, Math.ceil(cell), Math.ceil(cell));
    }
  }
}

function renderGrid() {
  const { n_layers: L, n_heads: H } = state.model.cfg;
  const rows = [];
  for (let l = 0; l < L; l++) {
    const heads = [];
    for (let h = 0; h < H; h++) {
      const key = `${l}:${h}`;
      const canvas = Object.assign(document.createElement('canvas'), { width: 84, height: 84, title: `L${l}H${h}` });
      drawPattern(canvas, l, h);
      canvas.addEventListener('click', () => { state.selected = [l, h]; renderGrid(); showAttends(); });
      const button = append(document.createElement('button'), [state.ablated.has(key) ? 'restore' : 'ablate']);
      button.addEventListener('click', async () => {
        if (state.ablated.has(key)) state.ablated.delete(key); else state.ablated.add(key);
        renderGrid();
        serial(renderPrediction);
      });
      const steer = append(document.createElement('button'), ['steer']);
      steer.className = 'steer' + (steeringHead() === key ? ' on' : '');
      steer.title = `steer along L${l}H${h}'s output at the last position (hook_z · W_O)`;
      steer.addEventListener('click', () => setSteer({ kind: 'head', layer: l, head: h }));
      const box = append(document.createElement('div'), [canvas, `L${l}H${h}`, document.createElement('br'), button, ' ', steer]);
      box.className = 'head' + (state.ablated.has(key) ? ' ablated' : '') + (state.selected[0] === l && state.selected[1] === h ? ' selected' : '');
      box.dataset.head = key;
      heads.push(box);
    }
    rows.push(append(Object.assign(document.createElement('div'), { className: 'layer-row' }), [append(document.createElement('span'), [`L${l}`]), ...heads]));
  }
  $('grid').replaceChildren(...rows);
  const [l, h] = state.selected;
  $('enlarged-title').textContent = `L${l}H${h}: query (rows) × key (columns)`;
  drawPattern($('big'), l, h);
}

function bigCanvasHover(event) {
  if (!state.run) return;
  const T = state.run.row.length;
  const rect = $('big').getBoundingClientRect();
  const k = Math.floor((event.clientX - rect.left) / rect.width * T);
  const q = Math.floor((event.clientY - rect.top) / rect.height * T);
  if (q < 0 || k < 0 || q >= T || k >= T) return;
  const [l, h] = state.selected;
  const w = k <= q ? pattern(l)[(h * T + q) * T + k] : 0;
  $('cell-readout').textContent = `q ${q} “${tokenText(state.run.row[q])}” → k ${k} “${tokenText(state.run.row[k])}”: ${fmt(w)}`;
  $('cell-readout').dataset.value = String(w);
}

function renderLens() {
  const { row, hooks } = state.run;
  const { n_layers: L, d_model: d } = state.model.cfg;
  const T = row.length;
  const header = append(document.createElement('tr'), [append(document.createElement('th'), ['']),
    ...row.map((id, pos) => append(document.createElement('th'), [`${pos} ${tokenText(id)}`]))]);
  const rows = [header];
  for (let l = 0; l <= L; l++) {
    const resid = l < L ? hooks[`blocks.${l}.hook_resid_pre`] : hooks[`blocks.${L - 1}.hook_resid_post`];
    const label = l < L ? `${l}_pre` : 'final_post';
    const cells = [];
    for (let pos = 0; pos < T; pos++) {
      const logits = unembed(finalNorm(resid.subarray(pos * d, (pos + 1) * d), state.lens), state.lens);
      const best = topk(logits, 1)[0];
      const td = append(document.createElement('td'), [tokenText(best)]);
      Object.assign(td.dataset, { layer: label, pos, id: best, value: String(logits[best]) });
      td.title = `logit ${fmt(logits[best])}`;
      pickable(td, best);
      cells.push(td);
    }
    rows.push(append(document.createElement('tr'), [append(document.createElement('th'), [label]), ...cells]));
  }
  $('lens').replaceChildren(...rows);
}

/** The attribution target from the text field (⏎ and ⇥ stand for a newline and a tab): one token. */
function setTarget(text) {
  const ids = state.model.tokenizer.encode(text.replace(/⏎/g, '\n').replace(/⇥/g, '\t'));
  if (ids.length !== 1) {
    $('target-info').textContent = `“${text}” is ${ids.length} tokens: give one token`;
    $('dla').replaceChildren();
    return;
  }
  state.target = ids[0];
  renderAttribution();
}

/** Head `head` of layer `layer`'s output at `pos` (its hook_z · W_O, TransformerLens' hook_result). */
function headResult(layer, head, pos) {
  const { n_heads: H, d_head: D, d_model: d } = state.model.cfg;
  const z = state.run.hooks[`blocks.${layer}.attn.hook_z`];
  const result = new Float64Array(d);
  for (let e = 0; e < D; e++) {
    const zv = z[(pos * H + head) * D + e];
    const w = state.lens.W_O.subarray(((layer * H + head) * D + e) * d, ((layer * H + head) * D + e + 1) * d);
    for (let i = 0; i < d; i++) result[i] += zv * w[i];
  }
  return result;
}

/** Each head's direct contribution to the target's logit at the last position: z W_O, final scale, W_U[:, target]. */
function renderAttribution() {
  const { model, lens } = state;
  const { n_layers: L, n_heads: H, d_model: d } = model.cfg;
  const target = state.target;
  $('target-info').textContent = `token ${target}`;
  $('target-info').dataset.id = target;
  const T = state.run.row.length;
  const vocab = lens.b_U.length;
  const scaleHook = state.run.hooks['ln_final.hook_scale'];
  const scale = scaleHook ? scaleHook[T - 1] : 1;
  const centre = lens.normalization_type === 'LN' || lens.normalization_type === 'LNPre';
  const rows = [append(document.createElement('tr'), [append(document.createElement('th'), ['']),
    ...Array.from({ length: H }, (_, h) => append(document.createElement('th'), [`H${h}`]))])];
  for (let l = 0; l < L; l++) {
    const cells = [];
    for (let h = 0; h < H; h++) {
      const result = headResult(l, h, T - 1);
      const mean = centre ? result.reduce((a, b) => a + b, 0) / d : 0;
      let value = 0;
      for (let i = 0; i < d; i++) value += (result[i] - mean) / scale * lens.W_U[i * vocab + target];
      const td = append(document.createElement('td'), [fmt(value)]);
      Object.assign(td.dataset, { head: `${l}:${h}`, value: String(value) });
      td.style.background = `rgba(${value > 0 ? '0,120,0' : '180,0,0'}, ${Math.min(Math.abs(value) / 4, 0.6).toFixed(3)})`;
      cells.push(td);
    }
    rows.push(append(document.createElement('tr'), [append(document.createElement('th'), [`L${l}`]), ...cells]));
  }
  $('dla').replaceChildren(...rows);
}

/** Table rows: the clean top-k tokens' clean and `label` logits and change, and the `label` top-k beside them
 * (row data: id, clean, <label>, <label>Top, <label>TopValue). A token cell click steers along that token. */
function comparisonRows(clean, other, label) {
  const header = append(document.createElement('tr'), ['rank', 'token', 'clean logit', `${label} logit`, 'change', '', `${label} top`, 'logit']
    .map((t) => append(document.createElement('th'), [t])));
  const cleanTop = topk(clean, TOP_K);
  const otherTop = topk(other, TOP_K);
  const rows = cleanTop.map((id, rank) => {
    const change = other[id] - clean[id];
    const cells = [String(rank + 1), tokenText(id), fmt(clean[id]), fmt(other[id]), signed(change), '',
      tokenText(otherTop[rank]), fmt(other[otherTop[rank]])].map((t) => append(document.createElement('td'), [t]));
    cells[4].className = change > 0 ? 'up' : change < 0 ? 'down' : '';
    pickable(cells[1], id);
    pickable(cells[6], otherTop[rank]);
    const tr = append(document.createElement('tr'), cells);
    Object.assign(tr.dataset, { id, clean: String(clean[id]), [label]: String(other[id]), [`${label}Top`]: otherTop[rank], [`${label}TopValue`]: String(other[otherTop[rank]]) });
    return tr;
  });
  return [header, ...rows];
}

const signed = (x) => (x >= 0 ? '+' : '') + fmt(x);

/** Clicking `cell` steers along token `id`'s unembedding direction. */
function pickable(cell, id) {
  cell.classList.add('pick');
  cell.dataset.pick = id;
  cell.title = `${cell.title ? cell.title + '; ' : ''}click: steer along W_U[:, ${id}]`;
  cell.addEventListener('click', () => setSteer({ kind: 'token', id }));
}

/** Top-k next tokens, clean and with the ablated heads (one more run through the hook_z patch inputs). */
async function renderPrediction() {
  const { model } = state;
  const clean = state.run.last;
  let ablated = clean;
  if (state.ablated.size) {
    status('running the ablation…');
    const out = await model.run([state.run.row], { feeds: ablationFeeds() });
    const vocab = out.logits.dims[2];
    const T = state.run.row.length;
    ablated = toFloat32(out.logits).slice((T - 1) * vocab, T * vocab);
  }
  const heads = [...state.ablated].map((k) => k.split(':')).map(([l, h]) => `L${l}H${h}`);
  $('ablation-summary').textContent = heads.length ? `ablated (hook_z = 0): ${heads.join(', ')}` : 'no head ablated: click “ablate” under a head';
  $('topk').replaceChildren(...comparisonRows(clean, ablated, 'ablated'));
}

// ---- steering --------------------------------------------------------------------------------------
// A unit direction × the coefficient, added to blocks.<layer>.hook_resid_pre (the deployment's .add input) at
// every position or the last; the direction is a token's unembedding W_U[:, t] or a head's output at the last
// position. The table compares the steered next-token logits with the clean ones.

function setUpSteering() {
  const L = state.model.cfg.n_layers;
  $('steer-layer').replaceChildren(...Array.from({ length: L }, (_, l) => Object.assign(document.createElement('option'), { value: l, textContent: `blocks.${l}.hook_resid_pre` })));
  $('steer-layer').value = String(Math.floor(L / 2));
  $('steer-coef').addEventListener('input', () => { $('steer-coef-value').value = $('steer-coef').value; scheduleSteering(); });
  $('steer-coef-value').addEventListener('change', () => { $('steer-coef').value = $('steer-coef-value').value; scheduleSteering(); });
  $('steer-layer').addEventListener('change', () => { steeringScale(); scheduleSteering(); });
  $('steer-positions').addEventListener('change', scheduleSteering);
  $('steer-clear').addEventListener('click', () => setSteer(null));
}

/** The slider's range (±3 × the largest residual norm at the last position) and the chosen layer's norm beside it. */
function steeringScale() {
  const { n_layers: L, d_model: d } = state.model.cfg;
  const T = state.run.row.length;
  const norms = Array.from({ length: L }, (_, l) => Math.hypot(...state.run.hooks[`blocks.${l}.hook_resid_pre`].subarray((T - 1) * d, T * d)));
  const range = Math.max(10, Math.ceil(3 * Math.max(...norms)));
  Object.assign($('steer-coef'), { min: -range, max: range, step: 10 ** Math.floor(Math.log10(range / 100)) });
  if ($('steer-coef-value').value === '') {
    $('steer-coef-value').value = String(Math.round(norms[L - 1]));
    $('steer-coef').value = $('steer-coef-value').value;
  }
  const layer = Number($('steer-layer').value);
  $('steer-scale').textContent = `(|resid_pre| of layer ${layer} at the last position: ${norms[layer].toFixed(2)})`;
}

function setSteer(direction) {
  state.steer = direction;
  for (const button of document.querySelectorAll('.head button.steer')) button.classList.toggle('on', button.parentElement.dataset.head === steeringHead());
  return scheduleSteering();
}

/** "layer:head" of the head steered along, or null. */
function steeringHead() {
  return state.steer?.kind === 'head' ? `${state.steer.layer}:${state.steer.head}` : null;
}

/** Queue a steering run; one queued behind a newer one (a dragged slider) is skipped. */
function scheduleSteering() {
  const generation = ++state.steerGeneration;
  return serial(async () => { if (generation === state.steerGeneration) await renderSteering(); });
}

function describeDirection(steer) {
  return steer.kind === 'token' ? `W_U[:, ${steer.id}] (“${tokenText(steer.id)}”)` : `L${steer.layer}H${steer.head}'s output at the last position`;
}

/** The steering direction at unit norm: W_U[:, id], or the head's hook_z · W_O at the last position. */
function steerVector(steer) {
  const d = state.model.cfg.d_model;
  let v;
  if (steer.kind === 'token') {
    const vocab = state.lens.b_U.length;
    v = Float64Array.from({ length: d }, (_, i) => state.lens.W_U[i * vocab + steer.id]);
  } else {
    v = headResult(steer.layer, steer.head, state.run.row.length - 1);
  }
  const norm = Math.hypot(...v);
  if (!(norm > 0)) throw new Error(`${describeDirection(steer)} is the zero vector: pick another direction`);
  return v.map((x) => x / norm);
}

/** The .add feed: coefficient × direction at every position ([1, 1, d] broadcasts) or the last one only. */
function steeringFeeds(vector, layer, coefficient, lastOnly) {
  const d = vector.length;
  const rows = lastOnly ? state.run.row.length : 1;
  const data = new Float32Array(rows * d);
  for (let i = 0; i < d; i++) data[(rows - 1) * d + i] = coefficient * vector[i];
  return { [`blocks.${layer}.hook_resid_pre`]: { add: { data, dims: [1, rows, d] } } };
}

async function renderSteering() {
  const steer = state.steer;
  const summary = $('steer-summary');
  for (const key of Object.keys(summary.dataset)) delete summary.dataset[key];
  if (!steer || !state.run) {
    $('steer-direction').textContent = 'none: click a token in the logit lens or the next-token table, or “steer” under a head';
    summary.textContent = '';
    $('steer-topk').replaceChildren();
    return;
  }
  const coefficient = Number($('steer-coef-value').value);
  if (!Number.isFinite(coefficient)) throw new Error(`coefficient “${$('steer-coef-value').value}”: give a number`);
  const layer = Number($('steer-layer').value);
  const lastOnly = $('steer-positions').value === 'last';
  $('steer-direction').textContent = describeDirection(steer);
  status('running the steering…');
  const T = state.run.row.length;
  const out = await state.model.run([state.run.row], { feeds: steeringFeeds(steerVector(steer), layer, coefficient, lastOnly) });
  const vocab = out.logits.dims[2];
  const steered = toFloat32(out.logits).slice((T - 1) * vocab, T * vocab);
  const clean = state.run.last;
  const where = `blocks.${layer}.hook_resid_pre${lastOnly ? ' at the last position' : ' at every position'}`;
  let text = `${coefficient} × ${describeDirection(steer)} added to ${where}`;
  Object.assign(summary.dataset, { direction: steer.kind === 'token' ? `token:${steer.id}` : `head:${steer.layer}:${steer.head}`, layer, coefficient, positions: lastOnly ? 'last' : 'all' });
  if (steer.kind === 'token') {
    text += `: “${tokenText(steer.id)}” logit ${fmt(clean[steer.id])} → ${fmt(steered[steer.id])} (${signed(steered[steer.id] - clean[steer.id])})`;
    Object.assign(summary.dataset, { id: steer.id, clean: String(clean[steer.id]), steered: String(steered[steer.id]) });
  }
  summary.textContent = text;
  $('steer-topk').replaceChildren(...comparisonRows(clean, steered, 'steered'));
}

function ready() {
  status(`ready: ${state.run.row.length} tokens, computed in the browser (onnxruntime-web ${ort.env.versions?.web ?? ''}, ${BACKEND_NAMES[state.backend]})`, 'ready');
}

async function guarded(fn) {
  try {
    await fn();
  } catch (err) {
    status(`error: ${err.message ?? err}`, 'error');
    console.error(err);
  }
}

/** Run `fn` after everything queued before it (a session runs one thing at a time); then say ready, or the error. */
function serial(fn) {
  state.queue = state.queue.then(() => guarded(async () => {
    await fn();
    if (state.run) ready();
  }));
  return state.queue;
}

async function main() {
  if (location.protocol === 'file:') throw new Error('a page opened from file:// cannot fetch its bundle: serve the folder (graphlens view BUNDLE, or python -m http.server)');
  const view = JSON.parse(new TextDecoder().decode(await fetchBytes('view.json')));
  $('model-name').textContent = view.name;
  const readFile = (name) => fetchBytes(`bundle/${name}`);
  const opened = await openOnBackend(location.search, (module, executionProviders) => loadBundle('bundle', { ort: module, readFile, sessionOptions: { executionProviders } }));
  ort = opened.ort;
  state.model = opened.result;
  state.backend = opened.backend;
  Object.assign($('backend').dataset, { backend: opened.backend, detail: opened.detail });
  $('backend').textContent = `backend: ${BACKEND_NAMES[opened.backend]} (${opened.detail}); ?backend=wasm|webgpu|auto chooses`;
  state.lens = await loadLens();
  $('prompt').value = view.prompt;
  $('prompt-form').addEventListener('submit', (event) => { event.preventDefault(); serial(analyse); });
  $('target').addEventListener('change', () => serial(async () => setTarget($('target').value)));
  $('big').addEventListener('mousemove', bigCanvasHover);
  setUpSteering();
  await serial(analyse);
}

guarded(main);
