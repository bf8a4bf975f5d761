"""``graphlens view``: a static page that runs a bundle in the browser with onnxruntime-web (WebGPU or WebAssembly).

The page (``js/view/``) loads a deployment of the bundle (``graphlens.deploy``: the attention patterns,
the residual stream before each block and after the last, every ``hook_z`` with required ``.patch``
inputs, every ``hook_resid_pre`` with a required ``.add`` for steering, the final norm's scale), the
JavaScript package (``js/src``) for tokenizing and feeding it, and onnxruntime-web's files from
``js/node_modules`` (its WebAssembly build, and its WebGPU build for browsers whose ``navigator.gpu``
gives an adapter): nothing comes from a CDN, and no Python runs while it is open. The logit lens, direct
logit attribution and the steering directions (a token's ``W_U`` column, a head's ``hook_z · W_O``) need
``W_U``, ``b_U``, ``W_O`` and the final norm, which the page reads from ``lens.bin`` (float32, laid out as
``lens.json`` says).
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
from pathlib import Path

import numpy as np

from graphlens.bundle import read_manifest, writing_bundle
from graphlens.errors import BundleError, InputError

JS = Path(__file__).resolve().parents[1] / "js"
ORT_WEB = JS / "node_modules" / "onnxruntime-web" / "dist"
# per backend, onnxruntime-web's entry module and the runtime it imports: the WebAssembly build (CPU kernels
# only), and the WebGPU build (its WebGPU execution provider, compiled with asyncify; CPU kernels for the rest)
ORT_BUILDS = {
    "wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
}
ORT_FILES = tuple(name for files in ORT_BUILDS.values() for name in files)
# the deployment's substitution inputs: .patch at every head's hook_z (ablation), .add at every resid_pre (steering)
PATCH_SITES = ("blocks.*.attn.hook_z", "blocks.*.hook_resid_pre")
# onnxruntime-web runs in 32-bit WebAssembly (4 GiB of memory at most) and holds the weights twice while a
# session opens (the fetched bytes and its copy). Measured in headless Chromium (js/bench/browser-size/probe.sh):
# 1.0 GiB of weights open with a 2.2 GiB renderer, 1.5 GiB with 3.2 GiB; larger sizes were not tried here
# (the machine's per-process memory rule), so 1.5 GiB is the largest size known to open.
BROWSER_LIMIT_BYTES = 3 * 2**29


def view_hooks(cfg: dict, names: list[str]) -> list[str]:
    """The hooks the page reads: patterns, residual stream per layer (and after the last), hook_z, final scale."""
    n = cfg["n_layers"]
    wanted = [f"blocks.{l}.{h}" for l in range(n) for h in ("attn.hook_pattern", "hook_resid_pre", "attn.hook_z")]
    wanted += [f"blocks.{n - 1}.hook_resid_post", "ln_final.hook_scale"]
    missing = [h for h in wanted if h not in names and h != "ln_final.hook_scale"]
    if missing:
        raise BundleError(f"the bundle has no {missing[0]} output, which graphlens view needs: export it again with every hook")
    return [h for h in wanted if h in names]


def bundle_bytes(bundle: Path, manifest: dict) -> int:
    """Bytes of the bundle's model.onnx and its external data (what a browser session would hold)."""
    files = [manifest["model_file"], manifest.get("external_data_file")]
    return sum((bundle / f).stat().st_size for f in files if f and (bundle / f).exists())


def check_browser_size(size: int, what: str) -> None:
    if size > BROWSER_LIMIT_BYTES:
        raise InputError(f"{what} is {size / 2**30:.2f} GiB, over the {BROWSER_LIMIT_BYTES / 2**30:.1f} GiB a browser tab can "
                         "open with onnxruntime-web (32-bit WebAssembly): view a smaller model, or export it in float16")


def write_lens(model, out: Path) -> dict:
    """``lens.bin`` (float32 arrays back to back) and its index: what the logit lens and attribution multiply by."""
    arrays = {"W_U": model.W_U, "b_U": model.b_U, "W_O": model.W_O}
    norm = model.ln_final
    for key, value in (("ln_final.w", norm.w), ("ln_final.b", norm.b)):
        if value is not None:
            arrays[key] = value
    index, offset = {}, 0
    with open(out / "lens.bin", "wb") as f:
        for key, value in arrays.items():
            data = np.ascontiguousarray(value, dtype="<f4")
            f.write(data.tobytes())
            index[key] = {"offset": offset, "dims": list(data.shape)}
            offset += data.nbytes
    lens = {"normalization_type": norm.normalization_type, "eps": float(norm.eps), "arrays": index}
    (out / "lens.json").write_text(json.dumps(lens, indent=1))
    return lens


DEFAULT_PROMPT = "The return statement leaves the current function. The return statement leaves the current function."


def check_page_destination(out: Path, overwrite: bool) -> None:
    """``out`` may be new, empty, or a page ``graphlens view`` wrote (it has ``view.json``), replaced only with
    ``overwrite``; anything else is refused and left untouched."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out / "view.json").is_file():
        raise BundleError(f"{out} is a non-empty folder that is not a graphlens view page; graphlens deletes nothing "
                          f"it did not write: choose a new or empty folder")
    if not overwrite:
        raise BundleError(f"{out} already holds a graphlens view page; pass --force (overwrite=True) to replace it")


def build_view(bundle: str | Path, out: str | Path, overwrite: bool = False, prompt: str = DEFAULT_PROMPT) -> Path:
    """Write the page for ``bundle`` into ``out`` (index.html, the JavaScript, onnxruntime-web, a deployment);
    ``prompt`` is the one it opens with."""
    from graphlens.deploy import deploy
    from graphlens.runtime.hooked_transformer import HookedTransformer

    bundle, out = Path(bundle), Path(out)
    check_page_destination(out, overwrite)
    if not (JS / "view" / "index.html").is_file():
        raise InputError(f"the page's sources are not at {JS / 'view'}: graphlens view runs from a source checkout (pip install -e .)")
    missing = [f for f in ORT_FILES if not (ORT_WEB / f).is_file()]
    if missing:
        raise InputError(f"onnxruntime-web is not installed next to graphlens ({ORT_WEB / missing[0]} is missing): "
                         f"run (cd {JS} && ONNXRUNTIME_NODE_INSTALL=skip npm ci)")
    manifest = read_manifest(bundle)
    if "deployment" in manifest:
        raise InputError(f"{bundle} is a deployment; view its source bundle ({manifest['deployment']['source_bundle']})")
    check_browser_size(bundle_bytes(bundle, manifest), f"{bundle}'s model")
    hooks = view_hooks(manifest["config"], [h["name"] for h in manifest["hooks"]])
    with writing_bundle(out, overwrite, check=check_page_destination) as tmp:
        for page in (JS / "view").iterdir():
            shutil.copy2(page, tmp / page.name)
        shutil.copytree(JS / "src", tmp / "graphlens", ignore=shutil.ignore_patterns("*.d.ts"))
        (tmp / "ort").mkdir()
        for name in ORT_FILES:
            shutil.copy2(ORT_WEB / name, tmp / "ort" / name)
        deployed = deploy(bundle, tmp / "bundle", hooks=hooks, patch=PATCH_SITES, decoder=False)
        write_lens(HookedTransformer.from_pretrained(str(bundle)), tmp)
        size = bundle_bytes(deployed, read_manifest(deployed)) + (tmp / "lens.bin").stat().st_size
        check_browser_size(size, "the page's deployment and lens weights")
        source = Path((manifest.get("source") or {}).get("model") or bundle.name).name
        name = f"{source} ({manifest['architecture']}, {manifest['dtype']})"
        (tmp / "view.json").write_text(json.dumps({"name": name, "prompt": prompt}))
    return out


def serve(folder: Path, port: int, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``folder`` (not started): JavaScript modules and WebAssembly with their MIME types."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                          ".json": "application/json"}

        def log_message(self, *args) -> None:  # quiet: the page's requests are not news
            pass

    return http.server.ThreadingHTTPServer((host, port), functools.partial(Handler, directory=str(folder)))


__all__ = ["BROWSER_LIMIT_BYTES", "ORT_BUILDS", "PATCH_SITES", "build_view", "serve", "view_hooks"]
