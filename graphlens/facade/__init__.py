"""TransformerLens' API tail over the lean runtime: the KV-cache object, devices, set_use_* switches."""

from graphlens.facade.kv_cache import KeyValueCache, KeyValueCacheEntry

__all__ = ["KeyValueCache", "KeyValueCacheEntry"]
