"""Exceptions raised by hf_kvpacket. Every one names the cause and the fix."""

from __future__ import annotations


class KVPacketError(ValueError):
    """Base class of every error hf_kvpacket raises on purpose (a `ValueError`, as peft's errors are)."""


class UnsupportedModelError(KVPacketError):
    """The model's positional encoding cannot be re-rotated exactly (dynamic NTK, longrope, M-RoPE, MLA, no RoPE)."""


class RerotationGateError(KVPacketError):
    """The correctness gate measured a re-rotation error above tolerance for this model."""


class FingerprintMismatchError(KVPacketError):
    """A packet was made with another model, adapter, dtype or format version than the one it is used with."""


class CacheReuseError(KVPacketError):
    """A `PacketCache` was used for a second `generate()` call (generate grows it in place)."""


class PacketStoreError(KVPacketError):
    """A store entry is corrupt, truncated or does not match its key."""


class AdapterConfigError(KVPacketError, TypeError):
    """An adapter's `adapter_config.json` or weights are malformed (wrong types, out of range, shapes, NaN/Inf), or it
    was trained for another base model. Also a `TypeError`, as a malformed config raised before."""


class EmptyQueryError(KVPacketError):
    """`PacketCache.inputs_for` needs at least one real query token."""


class ContextTooLongError(KVPacketError):
    """Preamble + packets + query exceed the model's `max_position_embeddings`."""


class OfflineAssetError(KVPacketError):
    """An offline model or dataset package is not installed."""


class ResumeCheckpointError(KVPacketError):
    """A resume checkpoint (`kvpacket train --resume-from`) is incomplete or belongs to other teacher rows."""


__all__ = [
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
