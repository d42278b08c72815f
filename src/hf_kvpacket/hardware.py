"""Pick the faster compute dtype on the machine at hand, by measuring it.

CPUs differ: with AVX-512 BF16 / AMX bf16 matmuls run several times faster than fp32, while on an AVX2-only CPU
bf16 is emulated and about 5x *slower* (a Qwen-0.5B 400-token forward on one thread: 41.8 s bf16, 8.1 s fp32). A
fixed default is wrong on one of them, so training asks the machine (`--dtype auto`).

>>> from hf_kvpacket.hardware import fastest_dtype
>>> fastest_dtype() in (torch.float32, torch.bfloat16)
True
"""

from __future__ import annotations

import functools
import time

import torch

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
               "float64": torch.float64}


def _matmul_seconds(dtype: torch.dtype, device: str, reps: int = 6) -> float:
    # A decoder-sized matmul (rows x hidden @ hidden x mlp): what dominates a transformer forward.
    a = torch.randn(256, 896, dtype=dtype, device=device)
    w = torch.randn(896, 2048, dtype=dtype, device=device)
    a @ w  # warm-up (kernel selection, page faults)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ w
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=None)
def fastest_dtype(device: str = "cpu") -> torch.dtype:
    """bfloat16 where it is measurably faster than float32 on `device` (by a 1.3x margin), else float32."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    fp32, bf16 = _matmul_seconds(torch.float32, device), _matmul_seconds(torch.bfloat16, device)
    return torch.bfloat16 if bf16 * 1.3 < fp32 else torch.float32


def resolve_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """`"auto"` -> :func:`fastest_dtype`; otherwise the named dtype (ValueError naming the choices)."""
    if name == "auto":
        return fastest_dtype(device)
    try:
        return DTYPE_NAMES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose auto or one of {sorted(DTYPE_NAMES)}.") from None


__all__ = ["fastest_dtype", "resolve_dtype", "DTYPE_NAMES"]
