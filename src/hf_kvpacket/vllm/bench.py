"""vLLM time to first token with packets vs vLLM's own prefill, side by side in one engine and one run.

    python -m hf_kvpacket.vllm.bench [--contexts 1024 4096 8000] [--reps 5] [--output results/vllm-bench]
                                     [--docs docs/serving.md]

One vLLM engine (the KV Packet connector installed, prefix caching off so nothing is reused between repetitions) and
the transformers twin of its model, both fp32. Per context length: a preamble, `num_docs` documents and a query of
random token ids (timing does not depend on the text), encoded once into a `PacketStore` with an untrained
header|trailer adapter of the default size (packets have their real length). Every repetition runs both requests
in alternating order:

``vllm_prefill``  the prompt (same token ids, same length) without packets: vLLM computes every token.
``kv_packet``     the same prompt naming its packets: the connector reads them from the store folder (page cache
                  warm), composes them and writes them into the request's blocks; vLLM computes the query.

TTFT is the wall time of `LLM.generate(..., max_tokens=1)`; medians over the repetitions after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from typing import Any

MARK_START, MARK_END = "<!-- vllm-bench:start -->", "<!-- vllm-bench:end -->"


def _portable(arg: str) -> str:
    """An argument as written from the repository root (no paths of this machine in the recorded command)."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    if os.path.isabs(arg) and os.path.commonpath([repo, arg]) == repo:
        return os.path.relpath(arg, repo).replace(os.sep, "/")
    return arg


def _env_for_engine(tmp: str) -> None:
    for k, v in {"VLLM_RPC_BASE_PATH": tmp, "VLLM_CACHE_ROOT": os.path.join(tmp, "cache"),
                 "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
                 "VLLM_CPU_OMP_THREADS_BIND": "nobind"}.items():
        os.environ.setdefault(k, v)


def run(model_name: str, contexts: list[int], num_docs: int, query_tokens: int, reps: int, warmup: int,
        threads: int | None, seed: int) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="kvpacket-vllm-bench-")
    _env_for_engine(tmp)
    import torch
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    from ..adapter import PacketAdapter
    from ..offline_models import load_model_and_tokenizer, resolve_model_path
    from ..store import PacketStore
    from .request import PacketPromptBuilder, VLLMPrompt

    if threads:
        torch.set_num_threads(threads)
    path = resolve_model_path(model_name)
    model, tok = load_model_and_tokenizer(model_name, dtype=torch.float32)
    adapter = PacketAdapter.for_model(model, 8, 8, seed=seed)
    builder = PacketPromptBuilder(PacketStore(os.path.join(tmp, "packets"), model, tok, adapter))
    max_len = max(contexts) + query_tokens + 16
    llm = LLM(model=path, dtype="float32", max_model_len=max_len, enforce_eager=True, max_num_seqs=2,
              enable_prefix_caching=False, seed=seed, kv_transfer_config=KVTransferConfig(**builder.kv_transfer_config()))
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    sp = SamplingParams(max_tokens=1, temperature=0.0)
    rows = []
    for ctx in contexts:
        pre = [rng.randrange(vocab) for _ in range(16)]
        per = (ctx - len(pre)) // num_docs - 16  # header + trailer slots
        docs = [[rng.randrange(vocab) for _ in range(per)] for _ in range(num_docs)]
        query = [rng.randrange(vocab) for _ in range(query_tokens)]
        t0 = time.perf_counter()
        req = builder.build_ids(pre, docs, query)  # encodes the packets (untimed set-up)
        encode_s = time.perf_counter() - t0
        ours = (req.prompt(), req.sampling_params(max_tokens=1, temperature=0.0))
        own = ({"prompt_token_ids": req.prompt_token_ids}, sp)
        times: dict[str, list[float]] = {"vllm_prefill": [], "kv_packet": []}
        statuses = []
        for rep in range(warmup + reps):
            order = ("vllm_prefill", "kv_packet") if rep % 2 == 0 else ("kv_packet", "vllm_prefill")
            for name in order:
                prompt, params = own if name == "vllm_prefill" else ours
                t0 = time.perf_counter()
                out = llm.generate([prompt], [params], use_tqdm=False)[0]
                dt = time.perf_counter() - t0
                if name == "kv_packet":
                    statuses.append(VLLMPrompt.status(out))
                if rep >= warmup:
                    times[name].append(dt)
        bad = [s for s in statuses if s.get("status") != "loaded"]
        if bad:
            raise RuntimeError(f"context {ctx}: the connector did not load the packets: {bad[0]}")
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"context": len(req.prompt_token_ids) - len(query), "prompt_tokens": len(req.prompt_token_ids),
                     "query_tokens": len(query), "num_docs": num_docs, "packet_encode_seconds": round(encode_s, 3),
                     "ttft": {k: round(v, 4) for k, v in med.items()},
                     "ttft_all": {k: [round(x, 4) for x in v] for k, v in times.items()},
                     "speedup": round(med["vllm_prefill"] / med["kv_packet"], 2),
                     "loaded_tokens": statuses[-1]["loaded_tokens"]})
        print(f"context {rows[-1]['context']}: vLLM prefill {med['vllm_prefill']:.3f} s, KV Packet "
              f"{med['kv_packet']:.3f} s ({rows[-1]['speedup']}x)", flush=True)
    import vllm

    return {"meta": {"model": model_name, "dtype": "float32", "vllm": vllm.__version__, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                     "cores": os.cpu_count(), "reps": reps, "warmup": warmup,
                     "command": "python -m hf_kvpacket.vllm.bench " + " ".join(_portable(a) for a in sys.argv[1:])},
            "rows": rows}


def table(results: dict[str, Any]) -> str:
    m = results["meta"]
    lines = [f"{m['model']}, {m['dtype']}, vLLM {m['vllm']} (CPU), torch {m['torch']}, {m['threads']} thread(s) of "
             f"{m['cores']} cores; median of {m['reps']} interleaved repetitions; `{m['command']}`", "",
             "| context (tokens) | query | vLLM prefill TTFT (s) | KV Packet TTFT (s) | speedup | tokens from packets |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['context']:,} | {r['query_tokens']} | {r['ttft']['vllm_prefill']:.3f} | "
                     f"{r['ttft']['kv_packet']:.3f} | {r['speedup']:.1f}x | {r['loaded_tokens']:,} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    x = [r["context"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(x, [r["ttft"]["vllm_prefill"] for r in rows], "o-", label="vLLM prefill (every token)")
    ax.plot(x, [r["ttft"]["kv_packet"] for r in rows], "s-", label="KV Packet connector (query only)")
    ax.set_xlabel("context tokens")
    ax.set_ylabel("time to first token (s)")
    ax.set_title(f"vLLM on CPU, {results['meta']['model']}, fp32")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_docs(results: dict[str, Any], docs: str, image: str) -> None:
    """Replace the generated section of `docs` (between the markers) with the table and the plot."""
    with open(docs, encoding="utf-8") as f:
        text = f.read()
    if MARK_START not in text or MARK_END not in text:
        raise SystemExit(f"{docs} has no {MARK_START} ... {MARK_END} section to fill.")
    rel = os.path.relpath(image, os.path.dirname(docs)).replace(os.sep, "/")
    body = f"{MARK_START}\n{table(results)}\n\n![vLLM TTFT]({rel})\n{MARK_END}"
    head, rest = text.split(MARK_START, 1)
    with open(docs, "w", encoding="utf-8") as f:
        f.write(head + body + rest.split(MARK_END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 8000])
    p.add_argument("--num-docs", type=int, default=8)
    p.add_argument("--query-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="folder for results.json and the plot")
    p.add_argument("--docs", default=None, help="markdown page whose generated section gets the table")
    p.add_argument("--report-only", action="store_true", help="re-render from --output/results.json")
    args = p.parse_args(argv)
    if args.report_only:
        with open(os.path.join(args.output, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
    else:
        results = run(args.model, args.contexts, args.num_docs, args.query_tokens, args.reps, args.warmup,
                      args.threads, args.seed)
    print(table(results))
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    if args.docs:
        image = os.path.join(os.path.dirname(args.docs), "img", "vllm_ttft.png")
        os.makedirs(os.path.dirname(image), exist_ok=True)
        plot(results, image)
        write_docs(results, args.docs, image)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
