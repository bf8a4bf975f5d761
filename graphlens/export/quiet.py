"""Keep torch's and transformers' chatter out of an export: it prints its own stages, nothing else.

Silenced while an export runs: the exporter's expected warnings (torchvision not installed, the
``LeafSpec`` deprecation, "axis name … will not be used"), transformers' weight-loading progress bar
and its info logs. Warnings from graphlens itself and errors are kept.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from typing import Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable)

_NOISY_MODULES = r"(torch|transformers|onnxscript|onnx_ir|copyreg|huggingface_hub)(\.|$)"
_NOISY_LOGGERS = ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "transformers")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence library warnings, logs below ERROR and transformers' progress bars inside the block."""
    with contextlib.suppress(ImportError):
        import torch.onnx  # noqa: F401  (importing torch sets its loggers' levels: do it before ours)
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    bars = None
    try:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except ImportError:
        hf_logging = None
    try:
        with warnings.catch_warnings():
            for category in (UserWarning, FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=_NOISY_MODULES)
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if hf_logging is not None and bars:
            hf_logging.enable_progress_bar()


def quietly(fn: F) -> F:
    """``fn`` run inside ``quiet_libraries()``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with quiet_libraries():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
