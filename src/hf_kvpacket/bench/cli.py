"""Benchmark TTFT, composition, decoding, store loading, FLOPs and memory against full prefill and the lower bound.

`kvpacket bench` (auto CPU/GPU). Examples::

    kvpacket bench --model smollm2-135m-instruct --contexts 4096 8192 --output bench.json
    kvpacket bench --model llama-3.1-8b --num-layers 4 --dtype bfloat16      # config-only shape, random init
    kvpacket bench --suite docs --docs docs                                  # regenerate docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from typing import Any

from .runner import METHODS, SHAPES, BenchConfig

#: The standard suite behind docs/performance.md (two real models, four context lengths for the plot).
SUITES: dict[str, dict[str, Any]] = {
    "docs": dict(models=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"], contexts=[1024, 2048, 4096, 8192],
                 reps=7, full_reps=3, warmup=1, decode_tokens=32, decode_reps=3, batch_size=4, batch_context=1024,
                 batch_new_tokens=16, batch_reps=2),
    # seconds, not minutes: a tiny random model (what the smoke test runs)
    "smoke": dict(models=["tiny-llama"], contexts=[256], reps=2, full_reps=2, warmup=1, decode_tokens=4, decode_reps=1,
                  batch_size=2, batch_context=128, batch_new_tokens=3, batch_reps=1, num_docs=4, query_tokens=8,
                  preamble_tokens=4, header_tokens=2, trailer_tokens=2),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kvpacket bench` (registered by `hf_kvpacket.cli`)."""
    d = BenchConfig()
    parser.add_argument("--model", nargs="+", dest="models", default=None, metavar="NAME",
                        help="offline model name, folder or Hub id; or a config-only shape (random init): "
                             f"{', '.join(SHAPES)} (default: {d.models[0]})")
    parser.add_argument("--num-layers", type=int, default=None, help="shrink a config-only shape to this many layers")
    parser.add_argument("--contexts", nargs="+", type=int, default=None, metavar="N",
                        help=f"context lengths in tokens: preamble + documents (default: {d.contexts[0]})")
    parser.add_argument("--num-docs", type=int, default=None, help=f"documents per context (default {d.num_docs})")
    parser.add_argument("--query-tokens", type=int, default=None, help=f"query length (default {d.query_tokens})")
    parser.add_argument("--preamble-tokens", type=int, default=None, help=f"preamble length (default {d.preamble_tokens})")
    parser.add_argument("--adapter-tokens", nargs=2, type=int, default=None, metavar=("HEADER", "TRAILER"),
                        help=f"adapter slots per packet (default {d.header_tokens} {d.trailer_tokens}; 0 0: plain packets)")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated subset of {','.join(METHODS)} (default: all that apply here)")
    parser.add_argument("--reps", type=int, default=None, help=f"timed repetitions (default {d.reps})")
    parser.add_argument("--full-reps", type=int, default=None, help=f"timed repetitions of the full prefill (default {d.full_reps})")
    parser.add_argument("--warmup", type=int, default=None, help=f"discarded warm-up repetitions (default {d.warmup})")
    parser.add_argument("--decode-tokens", type=int, default=None, help=f"decoding steps timed (default {d.decode_tokens}; 0: skip)")
    parser.add_argument("--decode-reps", type=int, default=None, help=f"decoding repetitions (default {d.decode_reps})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"rows of the throughput test (default {d.batch_size}; <2: skip)")
    parser.add_argument("--batch-context", type=int, default=None, help=f"context per row there (default {d.batch_context})")
    parser.add_argument("--batch-new-tokens", type=int, default=None, help=f"tokens generated there (default {d.batch_new_tokens})")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"], default=None)
    parser.add_argument("--device", default=None, help="auto (default: cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; use 1 when other processes keep the cores busy)")
    parser.add_argument("--store-dir", default=None, help="folder for the PacketStore (default: a temporary folder)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--suite", choices=sorted(SUITES), default=None,
                        help="a preset: 'docs' (the numbers of docs/performance.md), 'smoke' (seconds, tiny model); "
                             "explicit flags override it")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--docs", default=None, metavar="DIR", help="write DIR/performance.md, DIR/img/perf_*.png, DIR/img/perf_results.json")
    parser.add_argument("--note", default=None, help="a sentence added to the page (e.g. about the machine)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    values: dict[str, Any] = dict(SUITES[args.suite]) if getattr(args, "suite", None) else {}
    direct = {"models", "num_layers", "contexts", "num_docs", "query_tokens", "preamble_tokens", "reps", "full_reps",
              "warmup", "decode_tokens", "decode_reps", "batch_size", "batch_context", "batch_new_tokens", "dtype",
              "device", "threads", "store_dir", "note", "seed"}
    for name in direct:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    if getattr(args, "adapter_tokens", None):
        values["header_tokens"], values["trailer_tokens"] = args.adapter_tokens
    if getattr(args, "methods", None):
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in METHODS]
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        values["methods"] = wanted
    if getattr(args, "no_memory", False):
        values["memory"] = False
    if getattr(args, "no_progress", False):
        values["progress"] = False
    known = {f.name for f in fields(BenchConfig)}
    return BenchConfig(**{k: v for k, v in values.items() if k in known})


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print a summary; write JSON (`--output`) and the docs page (`--docs`)."""
    from .report import terminal_summary, write_docs
    from .runner import run_benchmark

    cfg = config_from_args(args)
    results = run_benchmark(cfg)
    command = "kvpacket bench " + " ".join(shlex.quote(a) for a in (getattr(args, "argv", None) or sys.argv[2:]))
    results["meta"]["command"] = command
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
    if args.docs:
        print(f"wrote {write_docs(results, args.docs, command)}", file=sys.stderr)
    print(terminal_summary(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m hf_kvpacket.bench.cli ...` (same flags as `kvpacket bench`)."""
    parser = argparse.ArgumentParser(prog="kvpacket bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
