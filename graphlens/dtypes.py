"""The weight dtypes a bundle can hold, named as strings; torch and numpy dtypes are accepted too."""

from __future__ import annotations

from graphlens.errors import InputError

DTYPES = ("float32", "float16", "bfloat16")
_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def dtype_name(dtype: object) -> str:
    """``"float16"``, ``torch.float16``, ``np.float16`` or ``"fp16"`` → ``"float16"`` (one of ``DTYPES``)."""
    text = str(getattr(dtype, "name", None) or dtype).removeprefix("torch.")
    name = _ALIASES.get(text, text)
    if name not in DTYPES:
        raise InputError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)} (or the torch dtype)")
    return name
