"""Layers split across devices (TransformerLens' ``n_devices``): see ``split``."""

from graphlens.devices.split import DeviceSplit, layer_devices

__all__ = ["DeviceSplit", "layer_devices"]
