"""The generic adapter on families graphlens has no adapter for (and TransformerLens 3.9 does not convert).

The reference is HF itself from the same folder: logits, ``output_hidden_states`` for the residual stream
and ``output_attentions`` (eager attention) for the pattern; a patch against an HF forward hook; greedy
generation against HF ``generate``. Each family is exported once, without processing; TransformerLens'
default processing is applied at load (the weight rewrite the export runs) and must keep log-probs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, CohereConfig, GlmConfig, GPTBigCodeConfig, GraniteConfig,
                          StableLmConfig, Starcoder2Config)

from graphlens import HookedTransformer
from graphlens.architectures import ARCHITECTURES
from graphlens.architectures.generic import param_table
from graphlens.bundle import MODEL_FILE
from graphlens.errors import UnsupportedArchitectureError
from graphlens.export.pipeline import export_bundle
from graphlens.rewrite.weights import NO_PROCESSING
from tests.models import make_causal_lm
from tests.test_equivalence import assert_close

_SHAPE = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
              max_position_embeddings=64, intermediate_size=96)
FAMILIES = {
    # multipliers on the embedding, the residual writes, the attention scores and the logits
    "granite": GraniteConfig(**_SHAPE, embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.2,
                             logits_scaling=1.5),
    "starcoder2": Starcoder2Config(**_SHAPE, use_bias=True),  # LayerNorm with biases, plain GELU MLP
    "stablelm": StableLmConfig(**_SHAPE, partial_rotary_factor=0.25, use_qkv_bias=True),
    "cohere": CohereConfig(**_SHAPE, logit_scale=0.5),  # parallel block sharing one bias-free LayerNorm
    # multi-query attention fused as [q | k | v] in one projection, learned positions, LayerNorm, GELU MLP
    "gptbigcode": GPTBigCodeConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64, multi_query=True),
}
GENERATES = "granite"  # exported with its KV-cache decoder too


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    """family → (HF folder, bundle, the export's progress lines)."""
    root = tmp_path_factory.mktemp("generic")
    out = {}
    for i, (name, config) in enumerate(FAMILIES.items()):
        folder = make_causal_lm(root / name, config, seed=10 + i)
        lines: list[str] = []
        bundle = export_bundle(str(folder), root / f"{name}-bundle", processing=NO_PROCESSING,
                               decoder=name == GENERATES, progress=lambda step, total, msg: lines.append(msg))
        out[name] = folder, bundle, lines
    return out


def _hf(folder):
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def _tokens(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 300, size=(2, 9))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hooks_equal_hf(generic, family):
    folder, bundle, lines = generic[family]
    ours = HookedTransformer.from_pretrained_no_processing(bundle)
    tokens = _tokens()
    hf = _hf(folder)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens), output_hidden_states=True, output_attentions=True)
    logits, cache = ours.run_with_cache(tokens)
    assert_close(logits, ref.logits, "logits")
    n = ours.cfg.n_layers
    for layer in range(n):
        assert_close(cache[f"blocks.{layer}.hook_resid_pre"], ref.hidden_states[layer], f"resid_pre {layer}")
        assert_close(cache[f"blocks.{layer}.attn.hook_pattern"], ref.attentions[layer], f"pattern {layer}")
    for layer in range(n - 1):  # HF's last hidden state is after the final norm
        assert_close(cache[f"blocks.{layer}.hook_resid_post"], ref.hidden_states[layer + 1], f"resid_post {layer}")
    # TransformerLens' default processing at load: the same log-probs (center_unembed shifts logits only)
    processed = HookedTransformer.from_pretrained(bundle)
    assert processed.cfg.normalization_type.endswith("Pre")
    np.testing.assert_allclose(_log_softmax(processed(tokens)), _log_softmax(ref.logits.numpy()), atol=1e-4, rtol=0)
    assert any("the generic adapter placed" in line for line in lines)
    assert any("generic adapter" in line for line in lines if line.startswith("exporting"))
    manifest = json.loads((bundle / "graphlens.json").read_text())
    assert manifest["architecture"] == "generic"
    assert isinstance(hf.get_submodule(manifest["config"]["hf_layout"]["blocks"]), torch.nn.ModuleList)


def test_sites_follow_the_structure(generic):
    """Gated/plain MLP, rotary, sequential/parallel blocks give TransformerLens' hook sets."""
    def suffixes(family):
        return {n.split(".", 2)[2] for n in HookedTransformer.from_pretrained_no_processing(generic[family][1]).hook_dict
                if n.startswith("blocks.0.")}

    granite, starcoder, cohere, bigcode = (suffixes(f) for f in ("granite", "starcoder2", "cohere", "gptbigcode"))
    assert "attn.hook_rot_q" not in bigcode and "hook_resid_mid" in bigcode
    bigcode_model = HookedTransformer.from_pretrained_no_processing(generic["gptbigcode"][1])
    assert "hook_pos_embed" in bigcode_model.hook_dict and bigcode_model.cfg.n_key_value_heads == 1
    assert {"mlp.hook_pre_linear", "attn.hook_rot_q", "hook_resid_mid"} <= granite
    assert "mlp.hook_pre_linear" not in starcoder and "mlp.hook_pre" in starcoder
    assert "hook_resid_mid" not in cohere and {"ln2.hook_scale", "ln2.hook_normalized"} <= cohere  # TL's ln2 copy


@pytest.mark.parametrize("family", ["granite", "cohere"])
def test_patch_equals_hf_forward_hook(generic, family):
    """resid_pre of block 1 replaced at some positions, and mlp.hook_post added to: logits as HF hooked alike."""
    folder, bundle, _ = generic[family]
    ours = HookedTransformer.from_pretrained_no_processing(bundle)
    hf = _hf(folder)
    tokens = _tokens(2)
    rng = np.random.default_rng(3)
    patch = rng.normal(size=(2, 9, 64)).astype(np.float32)
    mask = np.zeros((1, 9, 1), dtype=bool)
    mask[:, 2:6] = True
    add = rng.normal(size=(2, 9, 96)).astype(np.float32)
    layout = ours.cfg.hf_layout
    feeds = {"blocks.1.hook_resid_pre.patch": patch, "blocks.1.hook_resid_pre.patch_mask": mask,
             "blocks.0.mlp.hook_post.add": add}
    got = ours.run_graph(tokens, ["logits"], feeds)["logits"]

    def replace(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        x = torch.where(torch.tensor(mask), torch.tensor(patch), x)
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    block = hf.get_submodule(f"{layout['blocks']}.1")
    down = hf.get_submodule(f"{layout['blocks']}.0.{layout['mlp']}.{layout['down']}")
    handles = [block.register_forward_pre_hook(replace, with_kwargs=True),
               down.register_forward_pre_hook(lambda m, args: (args[0] + torch.tensor(add),))]
    with torch.no_grad():
        want = hf(torch.tensor(tokens)).logits
    for h in handles:
        h.remove()
    assert_close(got, want, "patched logits")
    assert not np.allclose(got, ours(tokens), atol=1e-3)


def test_greedy_generation_equals_hf(generic):
    folder, bundle, _ = generic[GENERATES]
    ours = HookedTransformer.from_pretrained(bundle)
    tokens = np.random.default_rng(5).integers(1, 300, size=(2, 7))
    kwargs = dict(max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False)
    generated = ours.generate(tokens, use_past_kv_cache=True, **kwargs)
    hf = _hf(folder)
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        want = hf.generate(torch.tensor(tokens), attention_mask=torch.ones(tokens.shape, dtype=torch.long),
                           max_new_tokens=8, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(generated, want.numpy())
    np.testing.assert_array_equal(ours.generate(tokens, use_past_kv_cache=False, **kwargs), generated)


def test_layout_weights_round_trip(generic):
    """The layout's parameter table: write ∘ read is the identity on the HF parameters."""
    import onnx
    from onnx import numpy_helper

    for family in ("starcoder2", "cohere", "gptbigcode"):
        bundle = generic[family][1]
        params = {i.name: numpy_helper.to_array(i, base_dir=str(bundle))
                  for i in onnx.load(bundle / MODEL_FILE, load_external_data=False).graph.initializer}
        cfg = HookedTransformer.from_pretrained_no_processing(bundle).cfg.to_dict()
        table = param_table(cfg["hf_layout"])
        written = table.write(table.read(params, cfg), cfg)
        assert set(written) <= set(params) | {k for k, v in written.items() if not v.any()}
        for key, value in written.items():
            if key in params:
                np.testing.assert_array_equal(value, params[key], err_msg=key)
    assert "generic" in ARCHITECTURES


def test_unplaceable_part_fails_naming_it(tmp_path):
    """GLM fuses gate and up into one projection: the export names the MLP and writes nothing."""
    folder = make_causal_lm(tmp_path / "glm", GlmConfig(**_SHAPE, pad_token_id=0), seed=0, tokenizer=False)
    with pytest.raises(UnsupportedArchitectureError, match=r"generic adapter cannot place the MLP model\.layers\.0\.mlp"):
        export_bundle(str(folder), tmp_path / "out", progress=None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("multi_query", [True, False], ids=["concat-qkv", "per-head-qkv"])
def test_fused_qkv_layouts_give_hf_pattern(multi_query):
    """A fused qkv projection, [q | k | v] (multi-query) or per head: the layout the probe finds, read into
    TransformerLens' W_Q/W_K/b_Q/b_K, reproduces HF's layer-0 pattern from ln1's output (no export)."""
    from graphlens.export.discover import discover

    torch.manual_seed(0)
    config = GPTBigCodeConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=50, n_positions=16, multi_query=multi_query)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    layout, cfg = discover(hf, config.to_dict())
    assert layout["qkv_layout"] == ("concat" if multi_query else "per_head")
    assert cfg["n_key_value_heads"] == (1 if multi_query else 4)
    params = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    tl = param_table(layout).read(params, cfg, part=0)
    tokens = torch.randint(0, 50, (1, 6))
    seen = {}

    def keep(module, args, out):
        seen["x"] = out.detach().numpy()

    hf.get_submodule(f"{layout['blocks']}.0.{layout['ln1']}").register_forward_hook(keep)
    with torch.no_grad():
        want = hf(tokens, output_attentions=True).attentions[0].numpy()
    x = seen["x"][0]  # [pos, d_model]
    q = np.einsum("pm,hmd->hpd", x, tl["blocks.0.attn.W_Q"]) + tl["blocks.0.attn.b_Q"][:, None]
    k = np.einsum("pm,hmd->hpd", x, tl["blocks.0.attn.W_K"]) + tl["blocks.0.attn.b_K"][:, None]
    k = np.repeat(k, cfg["n_heads"] // cfg["n_key_value_heads"], axis=0)
    scores = q @ k.transpose(0, 2, 1) / cfg["attn_scale"] + np.triu(np.full((6, 6), -np.inf), 1)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(pattern / pattern.sum(-1, keepdims=True), want[0], atol=1e-5, rtol=0)
    written = param_table(layout).write(tl, cfg, part=0)
    qkv = f"{layout['blocks']}.0.{layout['attn']}.{layout['qkv']}"
    np.testing.assert_array_equal(written[f"{qkv}.weight"], params[f"{qkv}.weight"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_equal_hf_autograd(generic, family):
    """Every hook's gradient of the mean loss is computed (every op has a rule); the residual stream's
    equals HF's autograd on the same weights (``output_hidden_states`` tensors, gradients retained)."""
    from tests.test_gradients import assert_grad_close

    folder, bundle, _ = generic[family]
    model, hf = HookedTransformer.from_pretrained_no_processing(bundle), _hf(folder)
    tokens = _tokens(5)
    loss, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    assert all(np.isfinite(cache[name + "_grad"]).all() for name in model.hook_names)
    ids = torch.tensor(tokens)
    out = hf(ids, labels=ids, output_hidden_states=True)
    for hidden in out.hidden_states:
        hidden.retain_grad()
    out.loss.backward()
    np.testing.assert_allclose(loss, out.loss.item(), rtol=1e-5)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        assert_grad_close(cache[name + "_grad"], out.hidden_states[layer].grad.numpy(), name)
