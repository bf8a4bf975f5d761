"""SAEs, transcoders and probes inside the graph, against SAELens' HookedSAETransformer on the same weights.

Every SAE is randomly initialised with SAELens' own classes (biases, thresholds and r_mag perturbed so
each architecture's path matters), saved with ``sae.save_model`` and read by graphlens from the folder.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from graphlens import HookedTransformer
from graphlens.errors import InputError, NotSupportedError, UnknownHookError

sae_lens = pytest.importorskip("sae_lens")
torch = pytest.importorskip("torch")

from sae_lens import HookedSAETransformer  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

ATOL = 1e-4
D_SAE = 96


def make_sae(arch: str, hook: str, d_in: int, seed: int, hook_out: str | None = None, **cfg):
    """An SAELens inference SAE of ``arch`` with random weights, reading ``hook``."""
    from sae_lens.saes import (GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE,
                               StandardSAEConfig, TopKSAE, TopKSAEConfig, Transcoder, TranscoderConfig)

    classes = {"standard": (StandardSAE, StandardSAEConfig), "topk": (TopKSAE, TopKSAEConfig),
               "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig), "gated": (GatedSAE, GatedSAEConfig),
               "transcoder": (Transcoder, TranscoderConfig)}
    sae_cls, cfg_cls = classes[arch]
    metadata = SAEMetadata(hook_name=hook, hook_name_out=hook_out) if hook_out else SAEMetadata(hook_name=hook)
    extra = {"d_out": d_in, "apply_b_dec_to_input": False} if arch == "transcoder" else {}
    sae = sae_cls(cfg_cls(d_in=d_in, d_sae=D_SAE, metadata=metadata, **extra, **cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name == "threshold":
                param.copy_(0.3 * torch.rand(param.shape, generator=gen))
            elif param.ndim == 1:
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
    return sae.eval()


def saelens_model(tl_model) -> HookedSAETransformer:
    """TransformerLens 3.9 model ``tl_model`` as SAELens' HookedSAETransformer (same weights)."""
    model = HookedSAETransformer(copy.deepcopy(tl_model.cfg))
    model.load_state_dict(tl_model.state_dict())
    if tl_model.tokenizer is not None:
        model.set_tokenizer(tl_model.tokenizer)
    return model.eval()


# (architecture, hook read, hook written or None, SAELens config extras)
GPT2_CASES = {
    "standard-resid_pre": ("standard", "blocks.1.hook_resid_pre", None, {}),
    "topk-hook_z": ("topk", "blocks.0.attn.hook_z", None, dict(k=8, rescale_acts_by_decoder_norm=True,
                                                              reshape_activations="hook_z")),
    "jumprelu-mlp_out-layer_norm": ("jumprelu", "blocks.0.hook_mlp_out", None, dict(normalize_activations="layer_norm")),
    "gated-resid_pre-rescale": ("gated", "blocks.0.hook_resid_pre", None,
                                dict(normalize_activations="constant_norm_rescale", apply_b_dec_to_input=False)),
    "transcoder": ("transcoder", "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", {}),
}
LLAMA_CASES = ("standard-resid_pre", "topk-hook_z", "transcoder")


@pytest.fixture(scope="module")
def gpt2(small_bundle, small_hf):
    from tests.models import tl_reference

    return HookedTransformer(small_bundle), saelens_model(tl_reference(small_hf))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from transformers import LlamaConfig

    from graphlens.export.pipeline import export_bundle
    from tests.models import make_causal_lm, tl_reference_from_folder

    root = tmp_path_factory.mktemp("sae-rms")  # no "llama" in the path: TransformerLens picks configs by name
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=300, max_position_embeddings=64)
    hf = make_causal_lm(root / "rms", config)
    bundle = export_bundle(str(hf), root / "bundle", decoder=False, progress=None)
    return HookedTransformer(bundle), saelens_model(tl_reference_from_folder(hf))


@pytest.fixture(scope="module")
def sae_folders(tmp_path_factory):
    """case name → (SAELens SAE, its saved folder), per model's d_model (64 for both)."""
    root = tmp_path_factory.mktemp("saes")
    made = {}
    for seed, (case, (arch, hook, hook_out, cfg)) in enumerate(GPT2_CASES.items()):
        d_in = 64
        sae = make_sae(arch, hook, d_in, seed, hook_out, **cfg)
        sae.save_model(root / case)
        made[case] = (sae, root / case)
    return made


def _tokens(seed: int = 0, shape=(2, 7)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 300, shape)


def _assert_same_hooks(ours_cache, ref_cache, names, ours_logits, ref_logits):
    for name in names:
        want = ref_cache[name].detach().numpy()
        got = ours_cache[name]
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=name)
    np.testing.assert_allclose(ours_logits, ref_logits.detach().numpy(), atol=ATOL, rtol=0)


def _compare(models, sae, folder, use_error_term: bool):
    ours, ref = models
    tokens = _tokens()
    ref_logits, ref_cache = ref.run_with_cache_with_saes(torch.tensor(tokens), saes=[sae], use_error_term=use_error_term)
    logits, cache = ours.run_with_cache_with_saes(tokens, saes=[folder], use_error_term=use_error_term)
    names = [n for n in ref_cache.keys() if ".hook_sae_" in n]
    expected = 6 if use_error_term else 5
    assert len(names) == expected and set(names) <= set(cache.keys())
    _assert_same_hooks(cache, ref_cache, names, logits, ref_logits)
    if use_error_term:  # the model's output is unchanged
        np.testing.assert_allclose(logits, ours(tokens), atol=ATOL, rtol=0)
    else:
        assert np.abs(logits - ours(tokens)).max() > 1e-3  # the reconstruction really replaced the activation
    assert not ours.acts_to_saes  # run_with_cache_with_saes detached it again


@pytest.mark.parametrize("use_error_term", [False, True])
@pytest.mark.parametrize("case", list(GPT2_CASES))
def test_gpt2_sae_hooks_equal_saelens(gpt2, sae_folders, case, use_error_term):
    sae, folder = sae_folders[case]
    _compare(gpt2, sae, folder, use_error_term)


@pytest.mark.parametrize("use_error_term", [False, True])
@pytest.mark.parametrize("case", LLAMA_CASES)
def test_llama_sae_hooks_equal_saelens(llama, sae_folders, case, use_error_term):
    sae, folder = sae_folders[case]
    _compare(llama, sae, folder, use_error_term)


def test_hook_z_shapes_as_saelens(gpt2, sae_folders):
    ours, _ = gpt2
    _, folder = sae_folders["topk-hook_z"]
    _, cache = ours.run_with_cache_with_saes(_tokens(), saes=[folder])
    hook = "blocks.0.attn.hook_z"
    assert cache[f"{hook}.hook_sae_input"].shape == (2, 7, 64)
    assert cache[f"{hook}.hook_sae_acts_post"].shape == (2, 7, D_SAE)
    assert cache[f"{hook}.hook_sae_output"].shape == (2, 7, 4, 16)
    assert ((cache[f"{hook}.hook_sae_acts_post"] > 0).sum(-1) <= 8).all()  # top k


@pytest.mark.parametrize("use_error_term", [False, True])
def test_feature_ablation_through_substitution_equals_saelens_hook(gpt2, sae_folders, use_error_term):
    ours, ref = gpt2
    sae, folder = sae_folders["standard-resid_pre"]
    hook = "blocks.1.hook_resid_pre.hook_sae_acts_post"
    tokens = _tokens(1)
    _, plain = ours.run_with_cache_with_saes(tokens, saes=[folder], names_filter=hook)
    feature = int(np.argmax(plain[hook].sum((0, 1))))  # the most active feature: its ablation matters

    def ablate(acts, hook):
        acts[..., feature] = 0.0
        return acts

    with ref.saes(saes=[sae], use_error_term=use_error_term):
        want = ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=[(hook, ablate)]).detach().numpy()
    mask = np.zeros((1, 1, D_SAE), dtype=bool)
    mask[..., feature] = True
    feeds = {f"{hook}.patch": np.zeros((1, 1, D_SAE), np.float32), f"{hook}.patch_mask": mask}
    with ours.saes(saes=[folder], use_error_term=use_error_term):
        got = ours.run_graph(tokens, ["logits"], feeds)["logits"]
        clean = ours(tokens)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert np.abs(got - clean).max() > 1e-3


def test_python_hook_on_sae_hook_equals_saelens(gpt2, sae_folders):
    ours, ref = gpt2
    sae, folder = sae_folders["jumprelu-mlp_out-layer_norm"]
    hook = "blocks.0.hook_mlp_out.hook_sae_acts_post"
    tokens = _tokens(2)

    def double(acts, hook):
        return acts * 2

    want = ref.run_with_hooks_with_saes(torch.tensor(tokens), saes=[sae], fwd_hooks=[(hook, double)])
    got = ours.run_with_hooks_with_saes(tokens, saes=[folder], fwd_hooks=[(hook, double)])
    np.testing.assert_allclose(got, want.detach().numpy(), atol=ATOL, rtol=0)


def test_add_and_reset_saes(gpt2, sae_folders):
    ours, _ = gpt2
    tokens = _tokens()
    clean = ours(tokens)
    ours.add_sae(sae_folders["standard-resid_pre"][1])
    ours.add_sae(sae_folders["transcoder"][1], use_error_term=True)
    try:
        assert set(ours.acts_to_saes) == {"blocks.1.hook_resid_pre", "blocks.1.ln2.hook_normalized"}
        assert "blocks.1.hook_mlp_out.hook_sae_error" in ours.hook_names
        changed = ours(tokens)
        ours.reset_saes("blocks.1.hook_resid_pre")
        np.testing.assert_allclose(ours(tokens), clean, atol=ATOL, rtol=0)  # the transcoder has its error term
        ours.add_sae(sae_folders["standard-resid_pre"][1])
        np.testing.assert_allclose(ours(tokens), changed, atol=1e-6, rtol=0)
    finally:
        ours.reset_saes()
    assert not ours.acts_to_saes and not any(".hook_sae_" in n for n in ours.hook_names)
    np.testing.assert_array_equal(ours(tokens), clean)


def test_attach_writes_a_bundle_that_generates_with_the_sae(gpt2, sae_folders, small_bundle, tmp_path):
    from graphlens.saes import attach

    ours, ref = gpt2
    sae, folder = sae_folders["standard-resid_pre"]
    probe_w = np.random.default_rng(3).normal(size=(D_SAE, 2)).astype(np.float32)
    probe_b = np.array([0.5, -0.5], np.float32)
    out = attach(small_bundle, {"blocks.1.hook_resid_pre": folder}, tmp_path / "attached",
                 probes={"blocks.1.hook_resid_pre.hook_sae_acts_post": {"refusal": (probe_w, probe_b)}})
    manifest = json.loads((out / "graphlens.json").read_text())
    (entry,) = manifest["saes"]
    assert entry["architecture"] == "standard" and entry["source"]["folder"] == str(folder.resolve())
    assert entry["hooks"][0] == "blocks.1.hook_resid_pre.hook_sae_input" and not entry["use_error_term"]
    probe = "blocks.1.hook_resid_pre.hook_sae_acts_post.probe.refusal"
    assert manifest["probes"] == [{"name": probe, "hook": "blocks.1.hook_resid_pre.hook_sae_acts_post", "d_out": 2}]
    attached = HookedTransformer(out)
    tokens = _tokens()
    ref_logits, ref_cache = ref.run_with_cache_with_saes(torch.tensor(tokens), saes=[sae])
    logits, cache = attached.run_with_cache(tokens)
    _assert_same_hooks(cache, ref_cache, [n for n in ref_cache.keys() if ".hook_sae_" in n], logits, ref_logits)
    acts = ref_cache["blocks.1.hook_resid_pre.hook_sae_acts_post"].numpy()
    np.testing.assert_allclose(cache[probe], acts @ probe_w + probe_b, atol=ATOL, rtol=0)
    assert cache[probe].shape == (2, 7, 2)
    # generation runs the rewritten decoder graph (KV cache): the same tokens as SAELens' generate
    prompt = tokens[:1, :4]
    with ref.saes(saes=[sae]):
        want = ref.generate(torch.tensor(prompt), max_new_tokens=6, do_sample=False, verbose=False).numpy()
    np.testing.assert_array_equal(attached.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False), want)


def test_monitor_graph_returns_only_probe_scores_and_features(sae_folders, small_bundle, tmp_path):
    """The README's monitor recipe: specialise the attached graph to the probe and the features, run it in ORT."""
    import onnx
    import onnxruntime as ort

    from graphlens.rewrite.specialise import specialise
    from graphlens.saes import attach

    _, folder = sae_folders["standard-resid_pre"]
    w = np.random.default_rng(4).normal(size=(64,)).astype(np.float32)
    out = attach(small_bundle, [folder], tmp_path / "monitor-src", use_error_term=True,
                 probes={"blocks.1.hook_resid_pre": {"deception": (w, np.zeros(1, np.float32))}})
    model = HookedTransformer(out)
    wanted = ["blocks.1.hook_resid_pre.probe.deception", "blocks.1.hook_resid_pre.hook_sae_acts_post"]
    monitor = specialise(onnx.load(str(out / "model.onnx")), wanted)
    session = ort.InferenceSession(monitor.SerializeToString())
    assert sorted(o.name for o in session.get_outputs()) == sorted(wanted)
    tokens = _tokens(5)
    got = dict(zip(wanted, session.run(wanted, {"input_ids": tokens})))
    _, cache = model.run_with_cache(tokens, names_filter=wanted + ["blocks.1.hook_resid_pre"])
    np.testing.assert_allclose(got[wanted[0]][..., 0], cache["blocks.1.hook_resid_pre"] @ w, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got[wanted[1]], cache[wanted[1]], atol=ATOL, rtol=0)


def test_cli_attach(sae_folders, small_bundle, tmp_path):
    from click.testing import CliRunner

    from graphlens.cli import main

    _, folder = sae_folders["gated-resid_pre-rescale"]
    np.savez(tmp_path / "sentiment.npz", W=np.ones((64, 3), np.float32), b=np.zeros(3, np.float32))
    result = CliRunner().invoke(main, ["attach", str(small_bundle), "--sae", f"blocks.0.hook_resid_pre={folder}",
                                       "--error-term", "--probe", f"blocks.1.hook_resid_post={tmp_path / 'sentiment.npz'}",
                                       "-o", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    model = HookedTransformer(tmp_path / "cli")
    tokens = _tokens()
    _, cache = model.run_with_cache(tokens)
    np.testing.assert_allclose(cache["blocks.1.hook_resid_post.probe.sentiment"],
                               cache["blocks.1.hook_resid_post"].sum(-1, keepdims=True).repeat(3, -1), atol=ATOL, rtol=0)
    np.testing.assert_allclose(model(tokens), HookedTransformer(small_bundle)(tokens), atol=ATOL, rtol=0)  # error term
    again = CliRunner().invoke(main, ["attach", str(tmp_path / "cli"), "--sae", f"blocks.0.hook_resid_pre={folder}",
                                      "-o", str(tmp_path / "cli2")])
    assert again.exit_code == 1 and "already has an SAE at blocks.0.hook_resid_pre" in again.output


def test_bad_saes_raise_graphlens_errors(gpt2, sae_folders, tmp_path):
    ours, _ = gpt2
    with pytest.raises(InputError, match="no cfg.json"):
        ours.add_sae(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        ours.add_sae(tmp_path / "missing")
    _, folder = sae_folders["standard-resid_pre"]
    cfg = json.loads((folder / "cfg.json").read_text())
    for change, error, message in [({"architecture": "matryoshka"}, NotSupportedError, "not supported"),
                                   ({"metadata": {"hook_name": "blocks.9.hook_resid_pre"}}, UnknownHookError, "blocks.9"),
                                   ({"metadata": {"hook_name": "blocks.0.mlp.hook_post"}}, InputError, "d_in is 64")]:
        bad = tmp_path / change.get("architecture", "hook")
        bad.mkdir(exist_ok=True)
        (bad / "cfg.json").write_text(json.dumps({**cfg, **change}))
        (bad / "sae_weights.safetensors").write_bytes((folder / "sae_weights.safetensors").read_bytes())
        with pytest.raises(error, match=message):
            ours.add_sae(bad)
        assert not ours.acts_to_saes
    from graphlens.saes import attach

    with pytest.raises(InputError, match="W .* do not fit"):
        attach(ours.bundle_dir, probes={"blocks.0.hook_resid_pre": (np.ones((3, 2)), np.ones(2))}, out=tmp_path / "p")


def test_run_with_saes_reuses_the_rewritten_graph_and_its_sessions(gpt2, sae_folders):
    ours, _ = gpt2
    _, folder = sae_folders["topk-hook_z"]
    tokens = _tokens()
    first = ours.run_with_saes(tokens, saes=[folder])
    ours(tokens)  # the plain graph has a session again too
    compiled = []
    compile_session = ours.graph.compile
    ours.graph.compile = lambda *a, **k: compiled.append(1) or compile_session(*a, **k)
    try:
        again = ours.run_with_saes(tokens, saes=[str(folder)])
        plain = ours(tokens)
    finally:
        del ours.graph.compile
    np.testing.assert_array_equal(first, again)
    assert compiled == []  # the SAE's graph, and the plain one, kept their sessions
    assert np.abs(first - plain).max() > 1e-3


JS = Path(__file__).resolve().parent.parent / "js"


@pytest.mark.skipif(shutil.which("node") is None or not (JS / "node_modules" / "onnxruntime-node").is_dir(),
                    reason="node or js/node_modules is missing: (cd js && ONNXRUNTIME_NODE_INSTALL=skip npm ci)")
def test_attached_sae_read_ablated_and_steered_from_node(gpt2, sae_folders, small_bundle, tmp_path):
    """The attached bundle, deployed with required inputs at the features, from the js/ package (onnxruntime-node)."""
    from graphlens.deploy import deploy
    from graphlens.saes import attach

    _, ref = gpt2
    sae, folder = sae_folders["standard-resid_pre"]
    acts = "blocks.1.hook_resid_pre.hook_sae_acts_post"
    probe_w = np.random.default_rng(6).normal(size=(D_SAE, 1)).astype(np.float32)
    attached = attach(small_bundle, [folder], tmp_path / "attached", probes={acts: {"monitor": (probe_w, np.zeros(1))}})
    probe = f"{acts}.probe.monitor"
    deployed = deploy(attached, tmp_path / "deployed", hooks=[acts, probe], patch=[acts])
    tokens = _tokens(7, (1, 6))
    ref_logits, ref_cache = ref.run_with_cache_with_saes(torch.tensor(tokens), saes=[sae])
    feature = int(np.argmax(ref_cache[acts].numpy().sum((0, 1))))

    def edit(how):
        def hook(value, hook):
            value[..., feature] = 0.0 if how == "ablate" else value[..., feature] + 4.0
            return value
        with ref.saes(saes=[sae]):
            return ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=[(acts, hook)]).detach().numpy()

    refs = {"bundle": str(deployed), "tokens": tokens.tolist(), "acts": acts, "probe": probe, "d_sae": D_SAE,
            "feature": feature, "steer_by": 4.0, "acts_dims": list(ref_cache[acts].shape),
            "acts_values": ref_cache[acts].numpy().ravel().tolist(),
            "probe_values": (ref_cache[acts].numpy() @ probe_w).ravel().tolist(),
            "logits": ref_logits.detach().numpy().ravel().tolist(),
            "ablated": edit("ablate").ravel().tolist(), "steered": edit("steer").ravel().tolist()}
    (tmp_path / "saes.json").write_text(json.dumps(refs))
    run = subprocess.run(["node", "--test", "--test-reporter=spec", "checks/saes.test.js"], cwd=JS, capture_output=True,
                         text=True, env={**os.environ, "GRAPHLENS_SAES_REFS": str(tmp_path)}, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "pass 1\n" in run.stdout and "skipped 0\n" in run.stdout  # it ran (not skipped)


def test_saes_stay_attached_across_set_use_switches(gpt2, sae_folders):
    ours, ref = gpt2
    sae, folder = sae_folders["standard-resid_pre"]
    tokens = _tokens(8)
    want = ref.run_with_saes(torch.tensor(tokens), saes=[sae]).detach().numpy()
    ours.add_sae(folder)
    try:
        ours.set_use_attn_result(True)
        logits, cache = ours.run_with_cache(tokens, names_filter=lambda n: "hook_result" in n or "hook_sae" in n)
        assert "blocks.1.attn.hook_result" in cache.keys() and "blocks.1.hook_resid_pre.hook_sae_output" in cache.keys()
        np.testing.assert_allclose(logits, want, atol=ATOL, rtol=0)
        ours.set_use_attn_result(False)
        np.testing.assert_allclose(ours(tokens), want, atol=ATOL, rtol=0)
    finally:
        ours.set_use_attn_result(False)
        ours.reset_saes()
    assert "blocks.1.attn.hook_result" not in ours.hook_names


def test_generate_after_add_sae_runs_the_rewritten_decoder(gpt2, sae_folders):
    ours, ref = gpt2
    sae, folder = sae_folders["transcoder"]
    prompt = _tokens(9, (1, 4))
    with ref.saes(saes=[sae]):
        want = ref.generate(torch.tensor(prompt), max_new_tokens=6, do_sample=False, verbose=False).numpy()
    with ours.saes(saes=[folder]):
        got = ours.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False)
        assert "blocks.1.hook_mlp_out.hook_sae_output" in ours._decoder_graph.output_names
    np.testing.assert_array_equal(got, want)
    assert "blocks.1.hook_mlp_out.hook_sae_output" not in ours._decoder_graph.output_names
