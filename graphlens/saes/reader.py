"""SAELens' on-disk SAEs (a folder with ``cfg.json`` and ``sae_weights.safetensors``), read into numpy.

No torch: the weights are read with safetensors' numpy API. The architectures SAELens 6 saves are
read as SAELens' inference classes define them: ``standard`` (ReLU), ``topk``, ``jumprelu``, ``gated``,
``transcoder`` and ``jumprelu_transcoder``; configs older than SAELens 6 (``hook_point``, top-level
``hook_name``, TopK as an ``activation_fn``) are read as SAELens' ``handle_pre_6_0_config`` reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jaxtyping import Float

from graphlens.errors import InputError, InputTypeError, NotSupportedError

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
TRANSCODERS = ("transcoder", "jumprelu_transcoder")
ARCHITECTURES = ("standard", "topk", "jumprelu", "gated", *TRANSCODERS)
# SAELens runs "expected_average_only_in" and "covariance_whitening" as the identity at inference (they are
# folded into the weights when an SAE is loaded from a release); so does graphlens
NORMALIZATIONS = ("none", "expected_average_only_in", "covariance_whitening", "layer_norm", "constant_norm_rescale")
_PARAMS = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"),
    "transcoder": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu_transcoder": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
}


@dataclass
class SAEWeights:
    """One SAE or transcoder: what SAELens' config says and its parameters as float32 numpy arrays.

    ``hook_name``: the site it reads; ``hook_name_out``: the site it writes (a transcoder's output site;
    the same site for an SAE). ``params``: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec``,
    and per architecture ``b_enc``, ``threshold``, ``b_gate``/``b_mag``/``r_mag``.
    """

    architecture: str
    hook_name: str
    hook_name_out: str
    d_in: int
    d_sae: int
    d_out: int
    params: dict[str, Float[np.ndarray, "..."]]
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_hook_z: bool = False
    k: int | None = None
    rescale_acts_by_decoder_norm: bool = False
    source: dict = field(default_factory=dict)

    @property
    def is_transcoder(self) -> bool:
        return self.architecture in TRANSCODERS

    def describe(self) -> dict:
        """The SAE as the manifest records it (the weights by provenance only)."""
        return {"hook_name": self.hook_name, "hook_name_out": self.hook_name_out, "architecture": self.architecture,
                "d_in": self.d_in, "d_sae": self.d_sae, "d_out": self.d_out,
                "apply_b_dec_to_input": self.apply_b_dec_to_input,
                "normalize_activations": self.normalize_activations, "reshape_activations":
                "hook_z" if self.reshape_hook_z else "none", "k": self.k,
                "rescale_acts_by_decoder_norm": self.rescale_acts_by_decoder_norm, "source": self.source}


def _config(folder: Path) -> dict:
    path = folder / CFG_FILE
    if not path.is_file():
        raise InputError(f"{folder} is not an SAELens SAE folder: it has no {CFG_FILE} (save one with sae.save_model)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{path} must hold a JSON object (SAELens' SAE config)")
    return cfg


def _hook_names(cfg: dict, where: str) -> tuple[str, str]:
    metadata = cfg.get("metadata") or {}
    hook = metadata.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not isinstance(hook, str) or not hook:
        raise InputError(f"{where}: the config names no hook (metadata.hook_name); set it to the site the SAE reads")
    out = metadata.get("hook_name_out") or cfg.get("hook_name_out") or hook
    return hook, out


def _architecture(cfg: dict, where: str) -> str:
    arch = cfg.get("architecture", "standard")
    if arch == "standard" and cfg.get("activation_fn") == "topk":  # SAELens < 6
        arch = "topk"
    if arch not in ARCHITECTURES:
        raise NotSupportedError(f"{where}: SAE architecture {arch!r} is not supported; graphlens reads "
                                f"{', '.join(ARCHITECTURES)}")
    return arch


def _weights(folder: Path, where: str) -> dict[str, np.ndarray]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(f"{folder} has no {WEIGHTS_FILE}: an SAELens SAE folder holds {CFG_FILE} and {WEIGHTS_FILE}")
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise InputError("reading SAEs needs safetensors: pip install 'graphlens[saes]'") from None
    try:
        weights = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise InputError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err})") from None
    if "log_threshold" in weights and "threshold" not in weights:  # older JumpReLU checkpoints, as SAELens
        weights["threshold"] = np.exp(weights.pop("log_threshold"))
    scale = weights.pop("scaling_factor", None)
    if scale is not None and not np.allclose(scale, 1.0):
        raise NotSupportedError(f"{where}: a finetuning scaling_factor other than 1 is not supported")
    return weights


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def from_config(cfg: dict, weights: dict[str, np.ndarray], where: str, source: dict | None = None) -> SAEWeights:
    """An ``SAEWeights`` from an SAELens config dict and its state dict (arrays), checked."""
    arch = _architecture(cfg, where)
    hook, hook_out = _hook_names(cfg, where)
    missing = [p for p in _PARAMS[arch] if p not in weights]
    if missing:
        raise InputError(f"{where}: the weights lack {', '.join(missing)} ({arch} SAEs have {', '.join(_PARAMS[arch])})")
    params = {p: np.asarray(weights[p], dtype=np.float32) for p in _PARAMS[arch]}
    d_in, d_sae = params["W_enc"].shape if params["W_enc"].ndim == 2 else (0, 0)
    d_out = params["W_dec"].shape[-1]
    if params["W_dec"].shape != (d_sae, d_out) or d_in != cfg.get("d_in", d_in) or d_sae != cfg.get("d_sae", d_sae):
        raise InputError(f"{where}: W_enc {params['W_enc'].shape} and W_dec {params['W_dec'].shape} do not match "
                         f"d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')}")
    if not (arch in TRANSCODERS or d_out == d_in) or params["b_dec"].shape != (d_out,):
        raise InputError(f"{where}: b_dec has shape {params['b_dec'].shape}, expected ({d_out},)")
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in NORMALIZATIONS:
        raise NotSupportedError(f"{where}: normalize_activations={norm!r} is not supported ({', '.join(NORMALIZATIONS)})")
    reshape = cfg.get("reshape_activations", "hook_z" if hook.endswith("hook_z") else "none") == "hook_z"
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if arch == "topk" and not (isinstance(k, int) and 0 < k <= d_sae):
        raise InputError(f"{where}: a topk SAE needs k between 1 and d_sae={d_sae}, got {k!r}")
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", arch not in TRANSCODERS))
    if arch in TRANSCODERS and apply_b_dec:
        raise InputError(f"{where}: apply_b_dec_to_input is not defined for transcoders (SAELens refuses it too)")
    return SAEWeights(
        architecture=arch, hook_name=hook, hook_name_out=hook_out, d_in=int(d_in), d_sae=int(d_sae), d_out=int(d_out),
        params=params, apply_b_dec_to_input=apply_b_dec, normalize_activations=norm, reshape_hook_z=reshape,
        k=int(k) if arch == "topk" else None,
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)) and arch == "topk",
        source=source or {},
    )


def read_sae(folder: str | os.PathLike) -> SAEWeights:
    """Read the SAELens SAE saved in ``folder`` (``sae.save_model(folder)``)."""
    if not isinstance(folder, (str, os.PathLike)):
        raise InputTypeError(f"an SAE is a folder path (cfg.json + {WEIGHTS_FILE}), not {type(folder).__name__}")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"SAE folder {folder} does not exist")
    cfg = _config(folder)
    metadata = cfg.get("metadata") or {}
    source = {"folder": str(folder.resolve()), "weights_sha256": _sha256(folder / WEIGHTS_FILE)
              if (folder / WEIGHTS_FILE).is_file() else None,
              **{k: metadata[k] for k in ("sae_lens_version", "model_name", "release", "sae_id", "neuronpedia_id")
                 if isinstance(metadata.get(k), str)}}
    return from_config(cfg, _weights(folder, str(folder)), str(folder), source)


def from_sae_lens(sae) -> SAEWeights:
    """An SAELens ``SAE`` object (torch) as ``SAEWeights`` (its config and state dict, copied to numpy)."""
    cfg = sae.cfg.to_dict()
    weights = {k: v.detach().float().cpu().numpy() for k, v in sae.state_dict().items()}
    metadata = cfg.get("metadata") or {}
    source = {"object": type(sae).__name__,
              **{k: metadata[k] for k in ("sae_lens_version", "model_name", "release", "sae_id", "neuronpedia_id")
                 if isinstance(metadata.get(k), str)}}
    return from_config(cfg, weights, f"SAE {type(sae).__name__} at {metadata.get('hook_name')}", source)


def load_sae(sae) -> SAEWeights:
    """``sae`` as ``SAEWeights``: a folder path, an ``SAEWeights``, or an SAELens ``SAE`` object."""
    if isinstance(sae, SAEWeights):
        return sae
    if isinstance(sae, (str, os.PathLike)):
        return read_sae(sae)
    if hasattr(sae, "cfg") and hasattr(sae, "state_dict"):
        return from_sae_lens(sae)
    raise InputTypeError(f"an SAE is a folder path, graphlens.saes.SAEWeights or an SAELens SAE, not {type(sae).__name__}")
