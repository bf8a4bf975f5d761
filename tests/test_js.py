"""The JavaScript package (js/) against Python: Python writes the references, Node's test runner checks them.

Cases: the shipped model in float32 and float16, and a GQA Llama. The references come from graphlens'
HookedTransformer on the exported bundle; the JavaScript side runs the `graphlens deploy` bundle made
from it through onnxruntime-node (tokenization included), and through onnxruntime-web's WebAssembly backend. Node and js/node_modules are needed: without
them the test is skipped, unless GRAPHLENS_REQUIRE_JS=1 (as in .ci/run), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from graphlens import HookedTransformer
from graphlens.deploy import deploy
from graphlens.export.pipeline import export_bundle
from graphlens.runtime.inputs import attention_mask_for, offset_position_ids

REPO = Path(__file__).resolve().parents[1]
JS = REPO / "js"
SHIPPED = REPO / "models" / "shipped" / "pydoc-gpt2"
ABLATED, STEERED = "blocks.1.attn.hook_z", "blocks.1.hook_resid_pre"
PROMPT = "The return statement leaves the current function"
BATCH = ["The import statement", "A list comprehension is a compact way"]
TEXTS = [PROMPT, "  two  spaces\nand a newline", "déjà vu: naïve café ☕", "<|endoftext|>after a special token",
         "numbers 12345 and symbols {}[]()!?"]


def _node_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS / "node_modules" / "onnxruntime-node").is_dir():
        return "js/node_modules is missing: (cd js && ONNXRUNTIME_NODE_INSTALL=skip npm ci)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _needs_node():
    reason = _node_ready()
    if reason:
        if os.environ.get("GRAPHLENS_REQUIRE_JS") == "1":
            pytest.fail(f"GRAPHLENS_REQUIRE_JS=1 but {reason}")
        pytest.skip(reason)


class _Refs:
    """Arrays as little-endian float32 .bin files plus one JSON index that the JavaScript tests read."""

    def __init__(self, folder: Path):
        self.folder, self.index = folder, {}

    def array(self, case: str, key: str, value: np.ndarray) -> dict:
        file = f"{case}.{key}.bin".replace("/", "_")
        np.ascontiguousarray(value, dtype="<f4").tofile(self.folder / file)
        return {"file": file, "dims": list(value.shape)}


def _write_case(refs: _Refs, name: str, bundle: Path, deployed: Path, tokenizer_texts: bool) -> dict:
    model = HookedTransformer.from_pretrained(str(bundle))
    tokens = model.to_tokens(PROMPT)
    d_model, n_heads, d_head = model.cfg.d_model, model.cfg.n_heads, model.cfg.d_head
    case: dict = {"bundle": str(deployed), "full_bundle": str(bundle), "dtype": model.cfg.dtype,
                  "tokens": tokens.tolist(), "arrays": {}}
    arrays = case["arrays"]

    _, cache = model.run_with_cache(tokens)
    case["hooks"] = list(cache.keys())
    for hook in cache.keys():
        arrays[f"hook:{hook}"] = refs.array(name, f"hook-{hook}", cache[hook])

    mask = np.zeros((1, 1, n_heads, 1), dtype=bool)
    mask[:, :, 0] = True
    ablation = {f"{ABLATED}.patch": np.zeros((1, 1, n_heads, d_head), model.cfg.dtype), f"{ABLATED}.patch_mask": mask}
    case["ablation"] = {"hook": ABLATED, "head": 0}
    # fetched with every hook, as the deployment outputs them: in float16, which outputs a graph has
    # changes what ONNX Runtime fuses, and so the last bits
    every = ["logits", *cache.keys()]
    arrays["ablated"] = refs.array(name, "ablated", model.run_graph(tokens, every, ablation)["logits"])

    vector = (np.random.default_rng(0).standard_normal(d_model) * 4).astype(model.cfg.dtype)
    case["steering"] = {"hook": STEERED, "vector": vector.astype(np.float32).tolist()}
    steer = {f"{STEERED}.add": vector[None, None]}
    arrays["steered"] = refs.array(name, "steered", model.run_graph(tokens, every, steer)["logits"])

    # a left-padded batch through the decoder (empty past), as generate builds it
    tok = model.tokenizer
    padded = model.to_tokens(BATCH, padding_side="left")
    pad_mask = attention_mask_for(padded, tok.pad_token_id, tok.bos_token_id, True, "left")
    decoder = model._kv_decoder(len(BATCH))
    pattern = "blocks.0.attn.hook_pattern"
    logits, hooks = decoder.step(padded, pad_mask, offset_position_ids(pad_mask), every[1:])  # every hook: as above
    case["padded"] = {"texts": BATCH, "tokens": padded.tolist(), "attention_mask": pad_mask.tolist(), "hook": pattern}
    arrays["padded_last_logits"] = refs.array(name, "padded-logits", logits[:, -1])
    arrays["padded_pattern"] = refs.array(name, "padded-pattern", hooks[pattern])

    greedy = dict(max_new_tokens=20, do_sample=False, stop_at_eos=False, verbose=False)
    case["generate"] = {
        "prompt": PROMPT,
        "greedy": model.generate(tokens, **greedy).tolist(),
        "steered": model.generate(tokens, **greedy, feeds={f"{STEERED}.add": vector}).tolist(),
        "padded": model.generate(padded, padding_side="left", **greedy).tolist(),
        "text": model.generate(PROMPT, **greedy),
    }
    if tokenizer_texts:
        case["tokenizer"] = {"texts": TEXTS, "tokens": [model.to_tokens(t)[0].tolist() for t in TEXTS],
                             "decoded": [model.to_string(model.to_tokens(t)[0]) for t in TEXTS]}
    return case


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    from tests.models import make_causal_lm
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("js")
    refs_dir = root / "refs"
    refs_dir.mkdir()
    refs = _Refs(refs_dir)
    gqa = make_causal_lm(root / "hf-gqa", LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                      num_key_value_heads=2, intermediate_size=96, vocab_size=300,
                                                      max_position_embeddings=64), seed=3)
    sources = {"shipped-float32": (SHIPPED, "float32"), "shipped-float16": (SHIPPED, "float16"), "gqa-float32": (gqa, "float32")}
    cases = {}
    for name, (source, dtype) in sources.items():
        bundle = export_bundle(str(source), root / name, dtype=dtype, progress=None)
        deployed = deploy(bundle, root / f"{name}-deploy", patch=[ABLATED, STEERED])
        cases[name] = _write_case(refs, name, bundle, deployed, tokenizer_texts=name == "shipped-float32")
    (refs_dir / "cases.json").write_text(json.dumps(cases))
    return refs_dir


def test_js_package_equals_python(references):
    env = {**os.environ, "GRAPHLENS_JS_REFS": str(references)}
    run = subprocess.run(["node", "--test", "--test-reporter=spec", "test/"], cwd=JS, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    # with references every JavaScript test runs: none may be skipped
    assert "ℹ fail 0" in run.stdout and "ℹ skipped 0" in run.stdout, run.stdout[-3000:]
