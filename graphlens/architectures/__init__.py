"""Architecture adapters, one per model family; ``architecture_for`` picks one from an HF config."""

from __future__ import annotations

from graphlens.architectures.apertus import APERTUS
from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm
from graphlens.architectures.bloom import BLOOM
from graphlens.architectures.gemma import GEMMA
from graphlens.architectures.gemma2 import GEMMA2
from graphlens.architectures.gemma3 import GEMMA3
from graphlens.architectures.generic import GENERIC
from graphlens.architectures.gpt_neo import GPT_NEO
from graphlens.architectures.gpt2 import GPT2
from graphlens.architectures.gptj import GPTJ
from graphlens.architectures.llama import LLAMA
from graphlens.architectures.mistral import MISTRAL
from graphlens.architectures.neox import GPT_NEOX, GPT_NEOX_SEQUENTIAL
from graphlens.architectures.olmo import OLMO
from graphlens.architectures.opt import OPT
from graphlens.architectures.phi import PHI
from graphlens.architectures.phi3 import PHI3
from graphlens.architectures.qwen2 import QWEN2
from graphlens.architectures.qwen3 import QWEN3
from graphlens.errors import UnsupportedArchitectureError

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    GPT2, GPT_NEOX, GPT_NEOX_SEQUENTIAL, GPTJ, LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA, GEMMA2, GEMMA3, OLMO, OPT, PHI, PHI3, APERTUS,
    GPT_NEO, BLOOM, GENERIC)}


def supported_hf_architectures() -> list[str]:
    return sorted({h for a in ARCHITECTURES.values() for h in a.hf_architectures})


# HF class names of decoder-only language models the generic adapter may place (checked part by part at export)
_CAUSAL_LM = ("ForCausalLM", "LMHeadModel")


def architecture_for(hf_config: dict) -> Architecture:
    """The adapter for an HF ``config.json`` (its ``architectures`` field); ``GENERIC`` for another causal
    LM, whose parts ``graphlens.export.discover`` places in the loaded model (or names the one it cannot)."""
    names = hf_config.get("architectures") or []
    for arch in ARCHITECTURES.values():
        if any(n in arch.hf_architectures for n in names) and (arch.accepts is None or arch.accepts(hf_config)):
            return arch
    if any(n.endswith(_CAUSAL_LM) for n in names):
        return GENERIC
    raise UnsupportedArchitectureError(
        f"unsupported architecture {names or hf_config.get('model_type')!r}; "
        f"graphlens supports: {', '.join(supported_hf_architectures())} (and other decoder-only *ForCausalLM models "
        f"built from standard parts, through the generic adapter)"
    )


def architecture_named(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unknown architecture {name!r}; graphlens supports: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "AttentionSites",
    "Mark",
    "Norm",
    "UnsupportedArchitectureError",
    "architecture_for",
    "architecture_named",
]
