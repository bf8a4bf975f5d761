"""``graphlens view`` in a real browser: headless Chromium types a prompt into the page, and the numbers it shows
(top tokens and logits, an ablated logit, an attention weight, the logit lens, head attribution, steered logits)
equal Python's for the same bundle, on both backends: Chromium as it starts headless (no WebGPU adapter: the
page falls back to WebAssembly and says why) and with ``--enable-unsafe-webgpu`` (a SwiftShader adapter here: the
page runs onnxruntime-web's WebGPU execution provider). The page runs the bundle with onnxruntime-web; Python's
numbers come from graphlens' HookedTransformer (tested against TransformerLens elsewhere). Chromium (Debian's
``chromium``), node and js/node_modules are needed: without them the browser test is skipped, unless CI=true
or GRAPHLENS_REQUIRE_JS=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from graphlens import HookedTransformer
from graphlens.analysis.lens import head_logit_attribution, logit_lens
from graphlens.cli import main
from graphlens.errors import InputError
from graphlens.export.pipeline import export_bundle
from graphlens import view as view_module
from graphlens.view import ORT_BUILDS, build_view, serve

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "shipped" / "pydoc-gpt2"
ARTIFACTS = Path(os.environ.get("GRAPHLENS_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PROMPT = "The import statement binds a name. The import statement binds a name"
LAYER, HEAD, QUERY = 1, 0, 14
ATOL = 1e-4
# steering at resid_pre of layer 1: the logit lens' last cell's token (every position), L1H0's output at the
# last position (last position only), the clean top-k's 4th token (every position; the screenshot shows it)
STEER = {"layer": 1, "coefficient": 8, "rank": 3, "head": "1:0", "headCoefficient": -5}
# Chromium's flags per run, and the pages loaded afterwards in another tab: the other backend forced, and (with
# WebGPU) a copy of the page without onnxruntime-web's WebGPU runtime (BROKEN), whose WebGPU session fails
BROKEN = "page-without-webgpu-wasm"
BROWSERS = {
    "no-webgpu": {"args": [], "alsoLoad": ["?backend=webgpu"], "screenshot": "view.png"},
    "webgpu": {"args": ["--enable-unsafe-webgpu"], "alsoLoad": ["?backend=wasm", f"../{BROKEN}/", f"../{BROKEN}/?backend=webgpu"],
               "screenshot": "view-webgpu.png"},
}


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: apt-get install -y chromium (or set CHROMIUM)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (REPO / "js" / "node_modules" / "playwright-core").is_dir():
        return "js/node_modules is missing: (cd js && ONNXRUNTIME_NODE_INSTALL=skip npm ci)"
    return None


@contextlib.contextmanager
def _serving(folder: Path):
    """``folder`` served by graphlens.view.serve on a free port, for the block: yields its base URL."""
    server = serve(folder, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def shipped_bundle(tmp_path_factory):
    return export_bundle(str(SHIPPED), tmp_path_factory.mktemp("view") / "bundle", progress=None)


@pytest.fixture(scope="module")
def page_folder(shipped_bundle):
    reason = _browser_missing()
    if reason:
        if os.environ.get("CI") == "true" or os.environ.get("GRAPHLENS_REQUIRE_JS") == "1":
            pytest.fail(f"CI=true / GRAPHLENS_REQUIRE_JS=1 but {reason}")
        pytest.skip(reason)
    folder = build_view(shipped_bundle, shipped_bundle.parent / "page")
    broken = shutil.copytree(folder, folder.parent / BROKEN)
    (broken / "ort" / ORT_BUILDS["webgpu"][-1]).unlink()
    return folder


@pytest.fixture(scope="module", params=list(BROWSERS))
def page(request, page_folder):
    """What the page shows after the driver typed PROMPT, hovered, selected and ablated L1H0, and steered
    (JSON from js/browser/drive-view.mjs), in Chromium started with BROWSERS[param]'s flags."""
    browser = BROWSERS[request.param]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / browser["screenshot"]
    with _serving(page_folder.parent) as base:
        spec = {"url": f"{base}/{page_folder.name}/", "args": browser["args"], "alsoLoad": browser["alsoLoad"], "prompt": PROMPT,
                "head": f"{LAYER}:{HEAD}", "query": QUERY, "screenshot": str(shot), "steer": STEER}
        run = subprocess.run(["node", "drive-view.mjs", json.dumps(spec)],
                             cwd=REPO / "js" / "browser", capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert shot.stat().st_size > 10_000
    return {"browser": request.param, **json.loads(run.stdout)}


@pytest.fixture(scope="module")
def python(shipped_bundle):
    model = HookedTransformer.from_pretrained(str(shipped_bundle))
    tokens = model.to_tokens(PROMPT)
    logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


def _shown(text: str, value: float) -> None:
    """The text the page shows is the value behind it, rounded to 4 decimals."""
    assert float(text) == pytest.approx(round(value, 4), abs=1.5e-4)


def test_page_shows_pythons_top_tokens_and_pattern(page, python):
    model, tokens, logits, cache = python
    assert page["errors"] == []
    assert page["tokens"] == tokens[0].tolist()
    last = logits[0, -1]
    top = np.argsort(-last, kind="stable")[: len(page["clean"])]
    assert [int(r["id"]) for r in page["clean"]] == top.tolist()
    for row in page["clean"]:
        np.testing.assert_allclose(float(row["clean"]), last[int(row["id"])], atol=ATOL)
        _shown(row["text"][2], float(row["clean"]))
    # hovering token QUERY with L1H0 selected: each token's weight is L1H0's pattern row QUERY
    pattern = cache[f"blocks.{LAYER}.attn.hook_pattern"][0, HEAD, QUERY]
    attends = page["attends"]
    np.testing.assert_allclose(np.array(attends[: QUERY + 1], dtype=float), pattern[: QUERY + 1], atol=ATOL)
    assert all(a is None or a == 0 for a in attends[QUERY + 1:])


def test_page_ablation_equals_python(page, python):
    model, tokens, _, _ = python
    cfg = model.cfg
    mask = np.zeros((1, 1, cfg.n_heads, 1), dtype=bool)
    mask[..., HEAD, :] = True
    hook = f"blocks.{LAYER}.attn.hook_z"
    feeds = {f"{hook}.patch": np.zeros((1, 1, cfg.n_heads, cfg.d_head), cfg.dtype), f"{hook}.patch_mask": mask}
    ablated = model.run_graph(tokens, ["logits"], feeds)["logits"][0, -1]
    assert page["summary"].endswith(f"L{LAYER}H{HEAD}")
    for row in page["ablated"]:
        np.testing.assert_allclose(float(row["ablated"]), ablated[int(row["id"])], atol=ATOL)
        np.testing.assert_allclose(float(row["ablatedTopValue"]), ablated[int(row["ablatedTop"])], atol=ATOL)
        _shown(row["text"][3], float(row["ablated"]))
    assert [int(r["ablatedTop"]) for r in page["ablated"]] == np.argsort(-ablated, kind="stable")[: len(page["ablated"])].tolist()
    # the induction head matters here: ablating it moves the logits
    assert max(abs(float(r["ablated"]) - float(r["clean"])) for r in page["ablated"]) > 0.1


def test_page_logit_lens_and_attribution_equal_python(page, python):
    model, tokens, logits, cache = python
    lens, labels = logit_lens(cache)  # [layers + 1, batch, pos, vocab]
    for cell in page["lens"]:
        row = lens[labels.index(cell["layer"]), 0, int(cell["pos"])]
        assert int(cell["id"]) == int(row.argmax())
        np.testing.assert_allclose(float(cell["value"]), row.max(), atol=ATOL)
    assert len(page["lens"]) == len(labels) * tokens.shape[1]
    target = page["target"]
    assert target == int(logits[0, -1].argmax())
    # TransformerLens' idiom: the heads' outputs at the last position, scaled by the final norm, on W_U[:, target]
    attrs = cache.logit_attrs(cache.stack_head_results(pos_slice=-1), target, pos_slice=-1)[:, 0]
    # graphlens.analysis' helper (graphlens plot --kind head-attribution) computes the same numbers
    np.testing.assert_allclose(head_logit_attribution(cache, target)[..., 0].ravel(), attrs, rtol=1e-6)
    shown = {c["head"]: float(c["value"]) for c in page["dla"]}
    expected = {f"{l}:{h}": attrs[l * model.cfg.n_heads + h] for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)}
    assert shown.keys() == expected.keys()
    np.testing.assert_allclose([shown[k] for k in expected], list(expected.values()), atol=ATOL)
    for cell in page["dla"]:
        _shown(cell["text"], float(cell["value"]))


def test_page_runs_on_the_backend_the_browser_offers(page):
    """WebGPU when navigator.gpu gives an adapter (asked for in the page's tab, not through the page's code) and its
    session opens, else WebAssembly with the reason shown; ?backend= forces one, and a forced WebGPU that cannot
    run is an error."""
    adapter = page["probe"]["adapter"]
    shown = page["backend"]
    assert shown["backend"] == ("webgpu" if adapter else "wasm")
    name = "WebGPU" if adapter else "WebAssembly"
    assert page["status"].endswith(f", {name})") and shown["text"].startswith(f"backend: {name} (")
    if adapter:
        assert shown["detail"].startswith(f"{adapter['vendor']} {adapter['architecture']}")
    else:
        assert shown["detail"] == "no WebGPU: navigator.gpu.requestAdapter() gave no adapter"
    if page["browser"] == "no-webgpu":
        assert adapter is None  # headless Chromium without --enable-unsafe-webgpu has none
        [forced] = page["alsoLoaded"]
        assert forced["status"]["state"] == "error" and "?backend=webgpu, but navigator.gpu.requestAdapter() gave no adapter" in forced["status"]["text"]
        return
    forced, broken, broken_forced = page["alsoLoaded"]
    assert forced["backend"]["backend"] == "wasm" and forced["backend"]["detail"] == "forced with ?backend=wasm"
    assert forced["status"]["state"] == "ready" and forced["status"]["text"].endswith(", WebAssembly)")
    if adapter:
        # WebGPU's session fails to open (its runtime is missing): auto falls back and says why, forced is an error
        assert broken["backend"]["backend"] == "wasm" and broken["status"]["state"] == "ready"
        assert broken["backend"]["detail"].startswith("no WebGPU: onnxruntime-web's WebGPU session failed: ")
        assert broken_forced["status"]["state"] == "error"
        assert broken_forced["status"]["text"].startswith("error: onnxruntime-web's WebGPU session failed: ")
        assert broken_forced["status"]["text"].endswith("; run on WebAssembly (?backend=wasm)")


def _steered(model, tokens, hook: str, direction, last_only: bool):
    """Python's last-position logits with ``direction`` added at ``hook`` (a TransformerLens-style hook function)."""
    def add(act, hook):
        if last_only:
            act = act.copy()
            act[:, -1] += direction
            return act
        return act + direction
    return model.run_with_hooks(tokens, fwd_hooks=[(hook, add)])[0, -1]


def _unit(v):
    return v / np.linalg.norm(v)


def _check_steering(shown, steered, clean) -> None:
    """The page's steering table and summary are Python's steered and clean logits."""
    for row in shown["rows"]:
        np.testing.assert_allclose(float(row["steered"]), steered[int(row["id"])], atol=ATOL)
        np.testing.assert_allclose(float(row["clean"]), clean[int(row["id"])], atol=ATOL)
        _shown(row["text"][3], float(row["steered"]))
    assert [int(r["steeredTop"]) for r in shown["rows"]] == np.argsort(-steered, kind="stable")[: len(shown["rows"])].tolist()
    for row in shown["rows"]:
        np.testing.assert_allclose(float(row["steeredTopValue"]), steered[int(row["steeredTop"])], atol=ATOL)


def test_page_steering_equals_python(page, python):
    model, tokens, logits, cache = python
    clean = logits[0, -1]
    hook = f"blocks.{STEER['layer']}.hook_resid_pre"

    # a token of the clean top-k, clicked: its unembedding direction at every position
    shown = page["steerToken"]
    token = int(np.argsort(-clean, kind="stable")[STEER["rank"]])
    assert shown["summary"]["direction"] == f"token:{token}" and shown["summary"]["positions"] == "all"
    assert float(shown["summary"]["coefficient"]) == STEER["coefficient"]  # typed
    steered = _steered(model, tokens, hook, STEER["coefficient"] * _unit(model.W_U[:, token]), last_only=False)
    _check_steering(shown, steered, clean)
    np.testing.assert_allclose(float(shown["summary"]["steered"]), steered[token], atol=ATOL)
    assert steered[token] - clean[token] > 1  # the steering moves its own token's logit up

    # a head's "steer": its output at the last position (hook_z · W_O), added at the last position only,
    # through the bundle's .add input in Python too
    shown = page["steerHead"]
    layer, head = map(int, STEER["head"].split(":"))
    result = cache[f"blocks.{layer}.attn.hook_z"][0, -1, head] @ model.W_O[layer, head]
    assert shown["summary"]["direction"] == f"head:{layer}:{head}" and shown["summary"]["positions"] == "last"
    assert float(shown["summary"]["coefficient"]) == STEER["headCoefficient"]  # set with the slider (on its step grid)
    add = np.zeros((1, tokens.shape[1], model.cfg.d_model), model.cfg.dtype)
    add[0, -1] = STEER["headCoefficient"] * _unit(result)
    steered = model.run_graph(tokens, ["logits"], {f"{hook}.add": add})["logits"][0, -1]
    np.testing.assert_allclose(steered, _steered(model, tokens, hook, add[0, -1], last_only=True), atol=1e-5)
    _check_steering(shown, steered, clean)

    # the logit lens' last cell, clicked: the final prediction's token
    shown = page["steerLens"]
    token = int(page["steerLensCell"]["id"])
    assert token == int(clean.argmax()) and shown["summary"]["direction"] == f"token:{token}"
    _check_steering(shown, _steered(model, tokens, hook, STEER["coefficient"] * _unit(model.W_U[:, token]), last_only=False), clean)


def test_view_writes_a_static_page(shipped_bundle, tmp_path):
    out = tmp_path / "page"
    result = CliRunner().invoke(main, ["view", str(shipped_bundle), "--out", str(out)])
    assert result.exit_code == 0, result.output
    # both backends' onnxruntime-web builds (entry module, runtime, WebAssembly), the JavaScript package, the page
    assert all((out / "ort" / name).is_file() for files in ORT_BUILDS.values() for name in files)
    assert (out / "graphlens" / "bundle.js").is_file() and (out / "backend.js").is_file()
    manifest = json.loads((out / "bundle" / "graphlens.json").read_text())
    # ablation patches every hook_z, steering adds to every resid_pre
    assert sorted(manifest["deployment"]["patch_sites"]) == sorted(f"blocks.{l}.{h}" for l in range(2) for h in ("attn.hook_z", "hook_resid_pre"))
    resid = next(h for h in manifest["hooks"] if h["name"] == "blocks.1.hook_resid_pre")
    assert resid["substitution_inputs"]["add"]["required"]
    lens = json.loads((out / "lens.json").read_text())
    model = HookedTransformer.from_pretrained(str(shipped_bundle))
    entry = lens["arrays"]["W_U"]
    stored = np.fromfile(out / "lens.bin", dtype="<f4", count=int(np.prod(entry["dims"])), offset=entry["offset"])
    np.testing.assert_array_equal(stored.reshape(entry["dims"]), model.W_U)
    with _serving(out) as base:
        with urllib.request.urlopen(f"{base}/ort/ort-wasm-simd-threaded.wasm") as wasm, urllib.request.urlopen(f"{base}/view.js") as js:
            # browsers compile WebAssembly and run modules only with these types
            assert wasm.headers["Content-Type"] == "application/wasm" and js.headers["Content-Type"].startswith("text/javascript")
            assert wasm.read() == (out / "ort" / "ort-wasm-simd-threaded.wasm").read_bytes()
    again = CliRunner().invoke(main, ["view", str(shipped_bundle), "--out", str(out)])
    assert again.exit_code != 0 and "--force" in again.output


def test_view_refuses_a_bundle_too_large_for_the_browser(shipped_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(view_module, "BROWSER_LIMIT_BYTES", 1_000_000)
    with pytest.raises(InputError, match="browser tab"):
        build_view(shipped_bundle, tmp_path / "page")
    assert not (tmp_path / "page").exists()


def test_view_without_onnxruntime_web_says_how_to_install_it(shipped_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(view_module, "ORT_WEB", tmp_path / "nowhere")
    result = CliRunner().invoke(main, ["view", str(shipped_bundle), "--out", str(tmp_path / "page")])
    assert result.exit_code != 0 and "npm ci" in result.output
    assert not (tmp_path / "page").exists()


def test_view_serves_until_interrupted_and_cleans_up(shipped_bundle, monkeypatch):
    """Without --out, the command serves a page built in a temporary folder, and removes it when stopped."""
    seen = {}

    def fake_serve(folder, port):
        server = serve(folder, 0)
        seen["folder"], seen["port"] = folder, port

        def interrupted():
            seen["index"] = (folder / "index.html").is_file() and (folder / "bundle" / "graphlens.json").is_file()
            raise KeyboardInterrupt

        server.serve_forever = interrupted
        return server

    monkeypatch.setattr(view_module, "serve", fake_serve)
    result = CliRunner().invoke(main, ["view", str(shipped_bundle), "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert seen["port"] == 8123 and seen["index"]
    assert "http://127.0.0.1:" in result.output
    assert not seen["folder"].exists()
