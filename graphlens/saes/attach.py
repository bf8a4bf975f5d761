"""``graphlens.saes.attach``: a new bundle with SAEs, transcoders and linear probes spliced into its graphs.

Both graphs are rewritten (``model.onnx`` and the KV-cache ``decoder.onnx``, so ``generate`` runs with
the SAEs too); the SAEs' hooks are hooks like every other (outputs with ``.patch``/``.patch_mask``/``.add``
inputs, listed in ``hooks``), the manifest's ``saes`` and ``probes`` record what was attached and where
it came from, and ``config.sae_dims`` their widths.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from graphlens.bundle import EXTERNAL_DATA_FILE, derived_bundle_paths, read_manifest, save_model, write_manifest, writing_bundle
from graphlens.bundle_check import load_graph
from graphlens.bundle_files import inside
from graphlens.errors import InputError, InputTypeError
from graphlens.rewrite.manifest_io import hook_entries
from graphlens.saes.reader import SAEWeights, load_sae
from graphlens.saes.rewrite import check_probe, probe_name, sae_dims, with_saes
from graphlens.sites import SAE_DIMS, UnknownHookError, concrete_shape, forward_sorted, kind_of

def _with_hook(sae: SAEWeights, hook: str) -> SAEWeights:
    """``sae`` reading ``hook`` (an SAE also writes there; a transcoder keeps its output site)."""
    if hook == sae.hook_name:
        return sae
    out = sae.hook_name_out if sae.is_transcoder else hook
    return SAEWeights(**{**sae.__dict__, "hook_name": hook, "hook_name_out": out})


def resolve_saes(saes, use_error_term: bool) -> dict[str, tuple[SAEWeights, bool]]:
    """Output site → (SAE, use_error_term) from ``{hook: SAE}`` (the key overrides the SAE's own hook) or a list."""
    items = saes.items() if isinstance(saes, Mapping) else [(None, s) for s in saes]
    resolved: dict[str, tuple[SAEWeights, bool]] = {}
    for hook, sae in items:
        weights = load_sae(sae)
        if hook is not None:
            if not isinstance(hook, str):
                raise InputTypeError(f"SAEs are given as {{hook name: folder}}, not a {type(hook).__name__} key")
            weights = _with_hook(weights, hook)
        if weights.hook_name_out in resolved:
            raise InputError(f"two SAEs write {weights.hook_name_out}; attach one SAE per site")
        resolved[weights.hook_name_out] = (weights, bool(use_error_term))
    return resolved


def _probe_arrays(value, hook: str) -> dict[str, tuple]:
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise InputError(f"probe file {path} does not exist (an .npz holding W and b)")
        try:
            with np.load(path, allow_pickle=False) as data:
                if not {"W", "b"} <= set(data.files):
                    raise InputError(f"probe file {path} must hold arrays W and b; it has {', '.join(data.files)}")
                return {path.stem: (data["W"], data["b"])}
        except (OSError, ValueError) as err:
            raise InputError(f"probe file {path} is not a readable .npz ({err})") from None
    if isinstance(value, Mapping):
        return dict(value)
    return {"probe": value}


def resolve_probes(probes, hooks: list[str], cfg: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Probe hook name → (W, b) from ``{hook: (W, b) | {name: (W, b)} | "file.npz"}``, checked against the
    site widths."""
    resolved = {}
    for hook, value in (probes or {}).items():
        if hook not in hooks:
            raise UnknownHookError(hook, hooks)
        width = int(np.prod([d for d in concrete_shape(kind_of(hook).dims, cfg)[2:]]))
        for name, probe in _probe_arrays(value, hook).items():
            resolved[probe_name(hook, name)] = check_probe(hook, name, probe, width)
    return resolved


def attach(
    bundle: str | os.PathLike,
    saes=None,
    out: str | os.PathLike | None = None,
    use_error_term: bool = False,
    probes: Mapping | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out``: ``bundle`` with ``saes`` and ``probes`` in its graphs; returns ``out``.

    ``saes``: ``{hook name: SAELens folder (or SAEWeights / SAELens SAE)}`` (the key is the hook the SAE
    reads; a transcoder writes its own ``hook_name_out``) or a list (each at its config's hook).
    ``use_error_term``: add each SAE's error back (``hook_sae_error``), leaving the model's output unchanged.
    ``probes``: ``{hook: (W, b) | {name: (W, b)} | "file.npz"}`` → outputs ``<hook>.probe.<name>``
    ``[batch, pos, n]`` (a tuple is named ``probe``, a file by its stem); ``hook`` may be an SAE hook.
    ``overwrite``: replace a bundle already at ``out`` (the rule of ``export``).
    """
    if out is None:
        raise InputError("attach needs an output folder (out=...; CLI -o)")
    bundle, out = derived_bundle_paths(bundle, out, overwrite)
    manifest = read_manifest(bundle)
    attached = resolve_saes(saes or {}, use_error_term)
    if not attached and not probes:
        raise InputError("nothing to attach: give saes={hook: folder} and/or probes={hook: (W, b)}")
    baked = {entry["hook_name_out"] for entry in manifest.get("saes") or []}
    again = sorted(set(attached) & baked)
    if again:
        raise InputError(f"{bundle} already has an SAE at {', '.join(again)}; attach to the bundle it was made from")
    config = {**manifest["config"]}
    config[SAE_DIMS] = {**(config.get(SAE_DIMS) or {}), **sae_dims({s: w for s, (w, _) in attached.items()})}
    old_hooks = [h["name"] for h in manifest["hooks"]]
    sae_hooks = [f"{site}.{n}" for site, (_, err) in attached.items()
                 for n in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons",
                           *(("hook_sae_error",) if err else ()), "hook_sae_output")]
    probe_arrays = resolve_probes(probes, old_hooks + sae_hooks, config)
    config[SAE_DIMS].update(sae_dims({}, probe_arrays))

    proto = load_graph(bundle, manifest, manifest["model_file"], "model_file", old_hooks)
    proto, new_hooks = with_saes(proto, attached, config, probe_arrays)
    hooks = forward_sorted(old_hooks + new_hooks)
    decoder_entry = manifest.get("decoder")
    decoder = None
    if decoder_entry:
        decoder = load_graph(bundle, manifest, decoder_entry["file"], "decoder.file", list(decoder_entry["hook_names"]))
        decoder, _ = with_saes(decoder, attached, config, probe_arrays)
    with writing_bundle(out, overwrite) as tmp:
        external = save_model(proto, tmp / manifest["model_file"],
                              external_data=bool(manifest.get("external_data_file")) or decoder is not None)
        for name in manifest.get("tokenizer_files") or []:
            shutil.copy2(inside(bundle, name, "tokenizer_files"), tmp / name)
        new = {
            **{k: v for k, v in manifest.items() if k != "backward"},  # backward.onnx is not rebuilt with the SAEs
            "config": config,
            "external_data_file": EXTERNAL_DATA_FILE if external else None,
            "hooks": hook_entries(hooks, config, manifest["dtype"], proto),
            "saes": (manifest.get("saes") or []) + [
                {**sae.describe(), "use_error_term": err, "hooks": [h for h in new_hooks if h.startswith(site + ".")]}
                for site, (sae, err) in attached.items()],
            "probes": (manifest.get("probes") or []) + [
                {"name": name, "hook": name.split(".probe.")[0], "d_out": int(w.shape[1])}
                for name, (w, _) in probe_arrays.items()],
            "attached_to": str(bundle),
        }
        if decoder is not None:
            from graphlens.export.decoder import point_at_model_data, write_decoder

            shared = point_at_model_data(decoder, tmp / manifest["model_file"])
            decoder_hooks = forward_sorted(list(decoder_entry["hook_names"]) + new_hooks)
            new["decoder"] = write_decoder(decoder, decoder_hooks, tmp, config, manifest["dtype"], shared)
        write_manifest(tmp, new)
    return out
