"""Batched throughput: `generate()` over a batch whose rows each have their own packets, against a full prefill of
the same batch (end to end: TTFT and decoding)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..adapter import PacketAdapter
from ..cache import PacketCache
from ..model_structure import text_config as _text_config
from ..packet import encode_preamble
from ..store import PacketStore
from .measure import Clock, summarize
from .workload import fit_context, make_ids

if TYPE_CHECKING:  # pragma: no cover
    from .runner import BenchConfig

@torch.no_grad()
def batch_throughput(model: nn.Module, tok: Any, cfg: "BenchConfig", device: torch.device, adapter: PacketAdapter | None,
                     rng: random.Random, log: Callable[[str], None]) -> dict[str, Any]:
    """Tokens/s of `generate()` for a batch whose rows each have their own packets, against the same batch with a
    full prefill (TTFT and decoding included: end-to-end throughput)."""
    text = _text_config(model)
    vocab = text.vocab_size
    B, N = cfg.batch_size, cfg.batch_new_tokens
    slots = (cfg.header_tokens + cfg.trailer_tokens) * cfg.num_docs if adapter is not None else 0
    ctx = fit_context(cfg.batch_context, cfg, getattr(text, "max_position_embeddings", None), slots + cfg.query_tokens + N)
    doc_len = (ctx - cfg.preamble_tokens) // cfg.num_docs
    preamble = make_ids(rng, vocab, cfg.preamble_tokens)
    rows = [[make_ids(rng, vocab, doc_len) for _ in range(cfg.num_docs)] for _ in range(B)]
    queries = [make_ids(rng, vocab, cfg.query_tokens) for _ in range(B)]
    log(f"batch: encoding {B} x {cfg.num_docs} packets ({ctx} context tokens per row)")
    store = PacketStore(None, model, tok, adapter, device=device, batch_size=cfg.num_docs)  # the user's path
    packets = store.get_many([d for row in rows for d in row], progress=False)
    per_row = [packets[r * cfg.num_docs:(r + 1) * cfg.num_docs] for r in range(B)]
    pre = encode_preamble(model, preamble) if preamble else None
    full = torch.tensor([preamble + [t for d in row for t in d] + q for row, q in zip(rows, queries)], device=device)
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    pad = 0 if pad is None else pad
    gen = dict(max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=pad)
    clock = Clock(device)
    times: dict[str, list[float]] = {"kv_packet": [], "full_prefill": []}
    for rep in range(cfg.batch_reps + 1):
        for kind in (("kv_packet", "full_prefill") if rep % 2 == 0 else ("full_prefill", "kv_packet")):
            t0 = clock.mark()
            if kind == "kv_packet":
                cache = PacketCache.from_packets(per_row, model=model, preamble=pre)
                out = model.generate(**cache.inputs_for(queries), **gen)
                del cache
            else:
                out = model.generate(input_ids=full, attention_mask=torch.ones_like(full), **gen)
            t1 = clock.mark()
            new = out.shape[1] - (len(queries[0]) if kind == "kv_packet" else full.shape[1])
            if new != N:
                raise RuntimeError(f"generate() produced {new} tokens instead of {N}")
            if rep > 0:
                times[kind].append(t1 - t0)
            log(f"batch rep {rep}/{cfg.batch_reps} {kind}: {t1 - t0:.3f}s" + (" (warm-up)" if rep == 0 else ""))
    res = {k: summarize(v) for k, v in times.items()}
    return {"batch_size": B, "context_tokens": ctx, "new_tokens": N, "documents_per_row": cfg.num_docs,
            "seconds": res,
            "tokens_per_s": {k: B * N / v["median"] for k, v in res.items()},
            "speedup": res["full_prefill"]["median"] / res["kv_packet"]["median"]}
