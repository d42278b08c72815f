"""Test helper: record which packets a PacketStore served and which a PacketCache composed."""

import hf_kvpacket.cache as cache_mod
import hf_kvpacket.store as store_mod


def spy_on_store_and_cache(monkeypatch) -> tuple[set, list]:
    """Patch `PacketStore.get_many` and `PacketCache.from_packets`; returns (ids of served packets, composed packets)."""
    served, composed = set(), []
    real_get, real_compose = store_mod.PacketStore.get_many, cache_mod.PacketCache.from_packets.__func__

    def get_many(self, documents, progress=True):
        out = real_get(self, documents, progress)
        served.update(id(p) for p in out)
        return out

    def from_packets(cls, packets, *args, **kwargs):
        for item in packets:  # one row, or one list per row of a batch
            composed.extend(item if isinstance(item, list) else [item])
        return real_compose(cls, packets, *args, **kwargs)

    monkeypatch.setattr(store_mod.PacketStore, "get_many", get_many)
    monkeypatch.setattr(cache_mod.PacketCache, "from_packets", classmethod(from_packets))
    return served, composed
