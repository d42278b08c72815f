"""The `kvpacket` command: `demo`, `encode`, `train`, `eval`, `compare`, `bench`."""

from __future__ import annotations

import argparse
import json
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.model, args.adapter, args.store, args.max_new_tokens, num_questions=args.questions, seed=args.seed)
    return 0


def _encode(args: argparse.Namespace) -> int:
    from .adapter import PacketAdapter
    from .offline_models import load_model_and_tokenizer
    from .store import PacketStore

    model, tok = load_model_and_tokenizer(args.model)
    adapter = PacketAdapter.from_pretrained(args.adapter) if args.adapter else None
    store = PacketStore(args.store, model, tok, adapter)
    texts = []
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    store.get_many(texts)
    print(json.dumps(store.stats.as_dict(), indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .evaluation.compare import compare_runs, markdown

    if args.reference and args.metric != "fidelity":
        raise SystemExit("kvpacket compare: --reference is the run fidelity is measured against; add --metric fidelity.")
    rows = compare_runs(args.a, args.b, metric=args.metric, reference=args.reference)
    print(json.dumps(rows, indent=1) if args.json else markdown(rows, args.a, args.b, args.metric))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvpacket", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="held-out questions answered by full prefill, no recompute and KV Packet")
    p.add_argument("--model", default=None,
                   help="offline model name, folder or Hub id (default: Qwen2.5-Coder-0.5B when installed, else SmolLM2)")
    p.add_argument("--adapter", default=None,
                   help="adapter folder or Hub id (default: of the shipped biography and mixture adapters, the one "
                        "whose card reports the higher held-out biography F1)")
    p.add_argument("--questions", type=int, default=4, help="held-out biography questions to draw")
    p.add_argument("--seed", type=int, default=7, help="which held-out questions")
    p.add_argument("--store", default=None, help="packet store folder")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.set_defaults(func=_demo)
    p = sub.add_parser("encode", help="encode text files into a packet store")
    p.add_argument("files", nargs="+")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--adapter", default=None)
    p.add_argument("--store", default="packets")
    p.set_defaults(func=_encode)
    p = sub.add_parser("compare", help="paired differences between two evaluation runs on the same rows")
    p.add_argument("a", help="results folder, or DIR:method (default method: kv_packet)")
    p.add_argument("b", help="results folder, or DIR:method (default: the first run's method)")
    p.add_argument("--metric", default="f1", help="f1, exact_match, fidelity, ttft_s, ... (default: %(default)s)")
    p.add_argument("--reference", default=None,
                   help="with --metric fidelity: measure both runs against this run's answers, DIR or DIR:method "
                        "(default method full_recompute; default: each run's own full recompute), e.g. full "
                        "recompute in bf16 against fp32 to see how far numerical noise alone moves greedy answers")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a markdown table")
    p.set_defaults(func=_compare)
    from .bench import cli as bench_cli
    from .evaluation import cli as eval_cli
    from .training import cli as train_cli

    # Listed explicitly: a subcommand whose module fails to import fails the command loudly, it never vanishes.
    for name, mod in (("train", train_cli), ("eval", eval_cli), ("bench", bench_cli)):
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
