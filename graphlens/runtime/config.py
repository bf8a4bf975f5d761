"""``model.cfg``: the HookedTransformerConfig fields of a bundle, read from its manifest."""

from __future__ import annotations

# HookedTransformerConfig defaults for fields a manifest may leave out.
_DEFAULTS = dict(
    n_key_value_heads=None,
    d_vocab_out=-1,
    act_fn=None,
    eps=1e-5,
    normalization_type="LN",
    positional_embedding_type="standard",
    original_architecture=None,
    default_prepend_bos=True,
    tokenizer_prepends_bos=None,
    parallel_attn_mlp=False,
    gated_mlp=False,
    rotary_dim=None,
    rotary_base=10000,
    rotary_adjacent_pairs=False,
    attn_only=False,
    final_rms=False,
    use_attn_scale=True,
    attn_scale=-1.0,
    use_normalization_before_and_after=False,
    attn_scores_soft_cap=-1.0,
    output_logits_soft_cap=-1.0,
    use_local_attn=False,
    use_qk_norm=False,
    rotary_base_local=None,
    clip_qkv=None,
    window_size=None,
    attn_types=None,
    scale_attn_by_inverse_layer_idx=False,
    use_attn_result=False,
    use_split_qkv_input=False,
    use_hook_mlp_in=False,
    use_attn_in=False,
    device="cpu",
    n_devices=1,
    dtype="float32",
    model_name="custom",
)


class Config:
    """Attribute access to the config, as ``HookedTransformerConfig`` (``cfg.n_layers``, ``cfg.d_model`` …)."""

    def __init__(self, fields: dict):
        merged = {**_DEFAULTS, **fields}
        if merged["d_vocab_out"] == -1:
            merged["d_vocab_out"] = merged["d_vocab"]
        if merged["attn_scale"] == -1.0:
            merged["attn_scale"] = float(merged["d_head"]) ** 0.5
        object.__setattr__(self, "_fields", merged)

    def __getattr__(self, name: str):
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"config has no field {name!r}") from None

    def __setattr__(self, name: str, value) -> None:
        self._fields[name] = value

    def to_dict(self) -> dict:
        return dict(self._fields)

    def __repr__(self) -> str:
        body = ",\n ".join(f"{k!r}: {v!r}" for k, v in sorted(self._fields.items()))
        return f"HookedTransformerConfig:\n{{{body}}}"
