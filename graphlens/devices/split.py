"""``from_pretrained(..., n_devices=N)``: block ranges as separate sessions, the residual passed between them.

Block ``i`` of ``n_layers`` runs on device ``base + i * N // n_layers`` (TransformerLens 3.9's
``get_device_for_block_index``); the embeddings run with block 0, ``ln_final`` and the unembedding with
the last block. A run is cut where the device changes (at ``blocks.L.hook_resid_pre``, the residual
stream entering the first block of a device; ``blocks.L-1.hook_resid_post`` where that site is fed
substitution inputs), as a Python hook would cut it (``runtime.partitioned``): each part is a session
on its device and the residual stream goes from one to the next through host memory. On CPU the
"devices" are separate CPU sessions, which is how the split is tested without GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from graphlens.errors import InputError, NotSupportedError


def layer_devices(n_layers: int, n_devices: int, device: str) -> list[str]:
    """The device of each block: ``cuda:base+i*N//n_layers`` on CUDA, ``device`` itself on CPU."""
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise InputError(f"n_devices must be a positive int, got {n_devices!r}")
    if n_devices > n_layers:
        raise InputError(f"n_devices={n_devices} is more than the model's {n_layers} layers; use at most {n_layers}")
    kind, _, index = device.partition(":")
    base = int(index or 0)
    if kind != "cuda":
        return [device] * n_layers
    return [f"cuda:{base + i * n_devices // n_layers}" for i in range(n_layers)]


@dataclass(frozen=True)
class DeviceSplit:
    """Where the blocks run: ``devices[k]`` is the k-th session group's device, ``starts[k]`` its first block."""

    devices: tuple[str, ...]
    starts: tuple[int, ...]

    @classmethod
    def even(cls, n_layers: int, n_devices: int, device: str) -> "DeviceSplit":
        """``n_devices`` contiguous block ranges (CPU: ``n_devices`` CPU sessions, as if on separate devices)."""
        per_layer = layer_devices(n_layers, n_devices, device)
        slots = [i * n_devices // n_layers for i in range(n_layers)]  # the group of each block
        starts = tuple(i for i in range(n_layers) if i == 0 or slots[i] != slots[i - 1])
        return cls(tuple(per_layer[s] for s in starts), starts)

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    def cut_sites(self, fed: Mapping[str, Iterable[str]] | None) -> dict[str, int]:
        """The site where each group after the first starts → that group's index."""
        fed = fed or {}
        cuts = {}
        for group, layer in enumerate(self.starts[1:], start=1):
            for site in (f"blocks.{layer}.hook_resid_pre", f"blocks.{layer - 1}.hook_resid_post"):
                if site not in fed:
                    cuts[site] = group
                    break
            else:
                raise NotSupportedError(
                    f"with n_devices={self.n_devices}, blocks.{layer}.hook_resid_pre and blocks.{layer - 1}.hook_resid_post "
                    f"are where the model changes device: feed substitution inputs at one of them, not both")
        return cuts

    def part_devices(self, hook_stages: Sequence[Sequence[str]], cuts: Mapping[str, int]) -> list[str]:
        """The device of each part of a plan (``hook_stages[k]``: the sites whose hooks run after part k)."""
        group, devices = 0, []
        for hooks in hook_stages:
            devices.append(self.devices[group])
            group = max([group, *(cuts[s] for s in hooks if s in cuts)])
        return devices
