"""Activations at dataset scale: ``harvest`` writes sharded safetensors, ``ActivationStore`` reads them."""

from graphlens.harvest.run import harvest
from graphlens.harvest.store import ActivationStore

__all__ = ["ActivationStore", "harvest"]
