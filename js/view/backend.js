// Which onnxruntime-web backend the page runs on: WebGPU when navigator.gpu gives an adapter, else
// WebAssembly; `?backend=wasm|webgpu|auto` forces one (auto is the default). Each backend has its own
// build of onnxruntime-web in ./ort/ (graphlens.view.ORT_BUILDS), imported only when chosen.
const BUILDS = { wasm: './ort/ort.wasm.min.mjs', webgpu: './ort/ort.webgpu.min.mjs' };
export const BACKEND_NAMES = { wasm: 'WebAssembly', webgpu: 'WebGPU' };

/** The backend `?backend=` asks for: "auto" (default), "wasm" or "webgpu"; anything else is an error. */
export function askedBackend(search) {
  const asked = new URLSearchParams(search).get('backend') ?? 'auto';
  if (!['auto', ...Object.keys(BUILDS)].includes(asked)) throw new Error(`?backend=${asked}: give ?backend=wasm, ?backend=webgpu or ?backend=auto`);
  return asked;
}

/** `{adapter, text}` from navigator.gpu, or `{adapter: null, reason}` saying why there is none. */
export async function webgpuAdapter() {
  if (!globalThis.navigator?.gpu) return { adapter: null, reason: 'this browser has no navigator.gpu (WebGPU is off or unsupported here)' };
  let adapter;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (err) {
    return { adapter: null, reason: `navigator.gpu.requestAdapter() failed: ${err.message ?? err}` };
  }
  if (!adapter) return { adapter: null, reason: 'navigator.gpu.requestAdapter() gave no adapter' };
  const info = adapter.info ?? {};
  const name = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'an adapter';
  return { adapter, text: `${name}${info.isFallbackAdapter ? ', a software fallback adapter' : ''}` };
}

/** The onnxruntime-web module of `backend`, set up to load its WebAssembly from ./ort/ with one thread. */
export async function importOrt(backend) {
  const ort = await import(BUILDS[backend]);
  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  ort.env.wasm.numThreads = 1; // a static server sends no cross-origin isolation headers: one thread
  return ort;
}

/**
 * Open a session with `open(ort, executionProviders)` on the backend `?backend=` asks for (auto: WebGPU when
 * there is an adapter and its session opens, else WebAssembly). Returns `{ort, result, backend, detail}`:
 * `detail` says which adapter, or why WebGPU is not used. A forced backend that fails is an error.
 */
export async function openOnBackend(search, open) {
  const asked = askedBackend(search);
  if (asked === 'wasm') {
    const ort = await importOrt('wasm');
    return { ort, result: await open(ort, ['wasm']), backend: 'wasm', detail: 'forced with ?backend=wasm' };
  }
  const gpu = await webgpuAdapter();
  let reason = gpu.reason;
  if (gpu.adapter) {
    try {
      const ort = await importOrt('webgpu');
      return { ort, result: await open(ort, ['webgpu']), backend: 'webgpu', detail: gpu.text };
    } catch (err) {
      reason = `onnxruntime-web's WebGPU session failed: ${err.message ?? err}`;
      if (asked === 'webgpu') throw new Error(`${reason}; run on WebAssembly (?backend=wasm)`);
    }
  } else if (asked === 'webgpu') {
    throw new Error(`?backend=webgpu, but ${reason}: run on WebAssembly (?backend=wasm), or enable WebGPU in the browser`);
  }
  const ort = await importOrt('wasm');
  return { ort, result: await open(ort, ['wasm']), backend: 'wasm', detail: `no WebGPU: ${reason}` };
}
