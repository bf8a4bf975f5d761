"""Find and load the HF model an export starts from: a local ``save_pretrained`` folder or a hub id."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from graphlens.architectures import architecture_for
from graphlens.errors import ExportError

_CONNECT_TIMEOUT_S = 3.0


def _hub_unreachable(model_id: str, err: Exception) -> ExportError:
    return ExportError(
        f"cannot download {model_id!r}: the Hugging Face Hub is unreachable ({type(err).__name__}). "
        f"Export from a local folder instead: `graphlens export /path/to/folder` "
        f"(a folder written by `save_pretrained`)."
    )


@contextlib.contextmanager
def _quiet_hub():
    """huggingface_hub logs each failed request; the ExportError says it once, with the fix."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _hub_kwargs(source: str) -> dict:
    """``from_pretrained`` keyword arguments for ``source``: {} for a local folder or a reachable Hub;
    ``local_files_only`` when the Hub cannot be reached but the HF cache holds the model; else fails fast.

    ``HF_HUB_OFFLINE`` is honoured (transformers then reads only the cache); otherwise one TCP connect
    with a short timeout decides, instead of the libraries' retries.
    """
    if Path(source).exists() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return {}
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=_CONNECT_TIMEOUT_S).close()
        return {}
    except OSError as err:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(source, "config.json"), str):
            return {"local_files_only": True}
        raise _hub_unreachable(source, err) from err


def load_hf_config(source: str) -> dict:
    """The model's ``config.json`` as a dict; checks that graphlens supports its architecture."""
    from transformers import AutoConfig

    path = Path(source)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ExportError(f"{source} is neither a graphlens bundle nor an HF model folder (no config.json)")
    try:
        with _quiet_hub():
            config = AutoConfig.from_pretrained(source, **_hub_kwargs(source)).to_dict()
    except OSError as err:
        if path.exists():
            raise ExportError(f"cannot read the HF config in {source}: {err}") from err
        raise _hub_unreachable(source, err) from err
    architecture_for(config)  # raises with the supported list
    return config


def load_hf_model(source: str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), attn_implementation="eager",
                                                     **_hub_kwargs(source))
    except OSError as err:
        if Path(source).exists():
            raise
        raise _hub_unreachable(source, err) from err
    return model.eval()


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def save_tokenizer(source: str, out_dir: Path) -> list[str]:
    """Copy the model's tokenizer files (fast tokenizer) into ``out_dir``; [] when it has none."""
    from transformers import AutoTokenizer

    local = Path(source)
    if local.exists() and not any((local / f).exists() for f in _TOKENIZER_FILES):
        return []  # transformers would invent a default tokenizer for a folder without one
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_hub_kwargs(source))
    except (OSError, ValueError, TypeError):
        return []
    if not getattr(tokenizer, "is_fast", False):
        return []
    before = set(os.listdir(out_dir))
    tokenizer.save_pretrained(out_dir)
    return sorted(set(os.listdir(out_dir)) - before)
