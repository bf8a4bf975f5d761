"""Find and load the HF model an export starts from: a local ``save_pretrained`` folder or a hub id."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from graphlens.architectures import architecture_for
from graphlens.errors import ExportError


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


def load_hf_config(source: str) -> dict:
    """The model's ``config.json`` as a dict; checks that graphlens supports its architecture."""
    from transformers import AutoConfig

    path = Path(source)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ExportError(f"{source} is neither a graphlens bundle nor an HF model folder (no config.json)")
    try:
        with _quiet_hub():
            config = AutoConfig.from_pretrained(source).to_dict()
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
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), attn_implementation="eager")
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
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError):
        return []
    if not getattr(tokenizer, "is_fast", False):
        return []
    before = set(os.listdir(out_dir))
    tokenizer.save_pretrained(out_dir)
    return sorted(set(os.listdir(out_dir)) - before)
