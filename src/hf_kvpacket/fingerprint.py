"""Content fingerprints of models and adapters.

A packet is only valid for the exact weights, dtype and adapter it was encoded with (a close fine-tune gives a
next-token KL of .08–.92 on reused caches: MemOS #2300). Fingerprints hash content, never paths, so the same model
loaded from another folder or revision with identical weights gets the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import weakref

import torch

# Bumped whenever the meaning of stored packet tensors changes.
FORMAT_VERSION = "1"

_MODEL_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()
_SAMPLE = 4096


def _tensor_digest(h: "hashlib._Hash", name: str, t: torch.Tensor) -> None:
    flat = t.detach().reshape(-1)
    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
    # A strided sample of the values plus a float64 sum: cheap (one pass), and any fine-tune changes both.
    step = max(1, flat.numel() // _SAMPLE)
    sample = flat[::step][:_SAMPLE].to(device="cpu", dtype=torch.float64)
    h.update(sample.numpy().tobytes())
    h.update(repr(float(flat.to(torch.float64).sum())).encode())


def _state_signature(model: torch.nn.Module) -> tuple:
    """Cheap signature of the parameters' storage: moves, dtype casts (`model.to(...)`), replaced tensors and in-place
    writes through autograd-visible ops (`with torch.no_grad(): p.add_(...)`, `load_state_dict`, optimizer steps)
    all change it (they bump `Tensor._version` or the data pointer). ~1 µs per parameter."""
    return tuple((p.data_ptr(), p.dtype, p.device, p._version) for p in model.parameters())


def model_fingerprint(model: torch.nn.Module, refresh: bool = False) -> str:
    """Fingerprint of a model's architecture, weights and dtype (cached per model object).

    The cached value is recomputed by itself whenever the parameters' storage signature changes: `model.to(dtype)`,
    `model.to(device)`, `load_state_dict`, an optimizer step or any in-place op under `torch.no_grad()`.

    Parameters
    ----------
    model:
        A transformers model, or a `peft.PeftModel` (adapter weights are part of the fingerprint).
    refresh:
        Force a recomputation. Needed only for writes the signature cannot see: through `param.data` (which has a
        version counter of its own), from outside PyTorch (memory shared with another process, a memory-mapped file
        changed on disk), or a config edited in place.
    """
    signature = _state_signature(model)
    cached = _MODEL_FINGERPRINTS.get(model)
    if not refresh and cached is not None and cached[0] == signature:
        return cached[1]
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        cfg = config.to_dict()
        for volatile in ("_name_or_path", "transformers_version", "_commit_hash", "_attn_implementation_autoset"):
            cfg.pop(volatile, None)
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            _tensor_digest(h, name, p)
    fp = h.hexdigest()[:32]
    _MODEL_FINGERPRINTS[model] = (signature, fp)
    return fp


def tensors_fingerprint(tensors: dict[str, torch.Tensor], extra: str = "") -> str:
    """Exact fingerprint of a few small tensors (adapter weights): every byte is hashed."""
    h = hashlib.sha256(extra.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]
