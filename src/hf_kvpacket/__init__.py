"""hf_kvpacket: KV Packet (arXiv 2604.13226) for Hugging Face transformers.

Documents are encoded once into reusable, context-independent KV caches ("packets") wrapped by small trained soft
tokens; any `generate()` call composes stored packets and prefills only the query.

Example
-------
>>> from hf_kvpacket import PacketAdapter, PacketCache, PacketStore
>>> adapter = PacketAdapter.from_pretrained("adapters/smollm2-135m-instruct-mixture")
>>> store = PacketStore("packets/", model, tok, adapter)
>>> cache = PacketCache.from_packets(store.get_many(docs), model=model, tokenizer=tok, preamble=system_prompt)
>>> out = model.generate(**cache.inputs_for(question), max_new_tokens=64)
"""

from .version import __version__

from .adapter import PacketAdapter, adapter_fingerprint
from .cache import PacketCache
from .compat import cache_kwarg_name, cache_kwargs, output_cache
from .config import KVPacketConfig
from .errors import (
    AdapterConfigError,
    CacheReuseError,
    ContextTooLongError,
    EmptyQueryError,
    FingerprintMismatchError,
    KVPacketError,
    OfflineAssetError,
    PacketStoreError,
    RerotationGateError,
    ResumeCheckpointError,
    UnsupportedModelError,
)
from .fingerprint import model_fingerprint
from .masks import block_attention_mask, model_attention_mask
from .packet import Packet, encode_packets, encode_preamble
from .rope import Rerotator, get_rerotator
from .packet_file import load_packet, save_packet
from .store import PacketStore, StoreStats

__all__ = [
    "__version__",
    "PacketAdapter",
    "PacketCache",
    "KVPacketConfig",
    "Packet",
    "encode_packets",
    "encode_preamble",
    "adapter_fingerprint",
    "model_fingerprint",
    "Rerotator",
    "PacketStore",
    "StoreStats",
    "load_packet",
    "save_packet",
    "get_rerotator",
    "block_attention_mask",
    "model_attention_mask",
    "cache_kwarg_name",
    "cache_kwargs",
    "output_cache",
    "KVPacketError",
    "UnsupportedModelError",
    "RerotationGateError",
    "FingerprintMismatchError",
    "CacheReuseError",
    "PacketStoreError",
    "AdapterConfigError",
    "EmptyQueryError",
    "ContextTooLongError",
    "OfflineAssetError",
    "ResumeCheckpointError",
]
