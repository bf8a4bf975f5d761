"""Measured memory of this process: how much it uses now, and the peak while a block runs.

Used where a memory budget must hold (patching's ``memory_budget_mb``): what a run really takes is
measured on the first run instead of estimated from the model's shapes. With glibc the measure is the
heap in use (``mallinfo2``: allocated chunks plus mmapped blocks), which, unlike the resident set,
does not hide a run's allocations behind memory the allocator kept from earlier ones; elsewhere it is
the resident set (``/proc/self/statm``, or ``psutil``). ``None`` when nothing can tell.
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_INTERVAL_S = 0.001


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc ≥ 2.33
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def rss_bytes() -> int | None:
    """This process's resident memory in bytes (None when it cannot be read here)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def used_bytes() -> int | None:
    """Memory this process uses: the malloc heap in use with glibc, else the resident set."""
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        return int(info.uordblks + info.hblkhd)
    return rss_bytes()


class PeakUse:
    """``with PeakUse() as peak: ...`` → ``peak.added``: the most memory (``used_bytes``) seen in the block
    above its start (sampled every millisecond by a thread; ONNX Runtime and numpy release the GIL)."""

    def __init__(self):
        self.start = self.peak = used_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def available(self) -> bool:
        return self.start is not None

    @property
    def added(self) -> int:
        return max(0, (self.peak or 0) - (self.start or 0))

    def _sample(self) -> None:
        while not self._stop.wait(_INTERVAL_S):
            self._note()

    def _note(self) -> None:
        now = used_bytes()
        if now is not None and now > (self.peak or 0):
            self.peak = now

    def __enter__(self) -> "PeakUse":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self._note()


def estimated_run_bytes(cfg, batch: int, pos: int) -> int:
    """A rough peak of one forward run of ``batch × pos`` tokens, from the model's shapes: logits,
    attention scores and MLP activations (where nothing can be measured)."""
    floats = pos * (3 * cfg.d_vocab_out + 3 * cfg.n_heads * pos + 4 * cfg.d_mlp + 8 * cfg.d_model)
    return batch * floats * np.dtype(cfg.dtype).itemsize
