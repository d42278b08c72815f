"""Samples/hour of the two students side by side, on the same teacher rows, in one run.

    python examples/student_speed.py --model qwen2.5-coder-0.5b-instruct --teacher runs/qwen-mix-v5.work \
        --adapter adapters/qwen2.5-coder-0.5b-instruct-mixture --rows 8 --batch-size 4 --threads 1

    # the dtype lever on this CPU, side by side in one run (bf16 is emulated and slow on AVX2-only CPUs):
    python examples/student_speed.py ... --dtype float32,bfloat16

full: header+trailer, one block-diagonal forward + backward over the whole prompt (the paper's student).
frozen-docs: header frozen, trailer-only over document KV computed once per row (training/frozen.py); its first
epoch pays one no-grad forward per row ("first epoch"), later epochs reuse it ("steady state").
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--teacher", default=None, help="a training work dir (or its teacher folder)")
    p.add_argument("--adapter", default=None)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dtype", default="auto",
                   help="student dtype, or a comma-separated list to time each side by side (e.g. float32,bfloat16)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()
    if not args.fast and (args.teacher is None or args.adapter is None):
        p.error("--teacher and --adapter are required (or --fast)")
    torch.set_num_threads(args.threads)

    from hf_kvpacket import PacketAdapter
    from hf_kvpacket.hardware import resolve_dtype
    from hf_kvpacket.offline_models import load_model_and_tokenizer
    from hf_kvpacket.training import DistillationCollator, FrozenDocumentStudent, PacketDistillationModel
    from hf_kvpacket.training.cli import load_teacher_dataset

    dtypes = [resolve_dtype(d) for d in args.dtype.split(",")]
    if args.fast:
        import tempfile

        from hf_kvpacket.tasks import load_task
        from hf_kvpacket.testing import example_model
        from hf_kvpacket.training import TeacherConfig, build_teacher_dataset

        dtypes = [torch.float32]
        model, tok = example_model(True)
        work = tempfile.mkdtemp()
        args.adapter = f"{work}/adapter"
        PacketAdapter.for_model(model, 8, 8, seed=1).save_pretrained(args.adapter, model_card=False)
        rows = build_teacher_dataset(model, tok, load_task("biography", "train", num_samples=4, seed=0),
                                     f"{work}/teacher", TeacherConfig(max_new_tokens=4), progress=False)
    else:
        model, tok = load_model_and_tokenizer(args.model, dtype=torch.float32)
        rows = load_teacher_dataset(args.teacher)
    rows = rows.select(range(min(args.rows, len(rows))))
    cfg = PacketAdapter.from_pretrained(args.adapter).config
    collate = DistillationCollator(cfg.num_header_tokens, cfg.num_trailer_tokens, pad_token_id=tok.pad_token_id or 0)
    batches = [collate([rows[j] for j in range(i, min(len(rows), i + args.batch_size))])
               for i in range(0, len(rows), args.batch_size)]
    common = {"model": args.model, "threads": args.threads, "rows": len(rows),
              "slots": [cfg.num_header_tokens, cfg.num_trailer_tokens],
              "mean_prompt_tokens": sum(b["student_input_ids"].shape[1] for b in batches) / len(batches)}

    def epoch(student) -> float:
        start = time.perf_counter()
        for b in batches:
            student.train()
            loss = student(**b)["loss"]
            loss.backward()
        return time.perf_counter() - start

    results = []
    for dtype in dtypes:
        model.to(dtype)  # the same weights in each dtype, so only the arithmetic differs
        result = {**common, "dtype": str(dtype).removeprefix("torch.")}
        full = PacketDistillationModel(model, PacketAdapter.from_pretrained(args.adapter))
        result["full_s_per_sample"] = epoch(full) / len(rows)
        frozen = FrozenDocumentStudent(model, PacketAdapter.from_pretrained(args.adapter))
        result["frozen_first_epoch_s_per_sample"] = epoch(frozen) / len(rows)
        result["frozen_steady_s_per_sample"] = epoch(frozen) / len(rows)
        for k in ("full", "frozen_first_epoch", "frozen_steady"):
            result[f"{k}_samples_per_hour"] = round(3600 / result[f"{k}_s_per_sample"])
        result["steady_speedup"] = round(result["full_s_per_sample"] / result["frozen_steady_s_per_sample"], 2)
        results.append(result)
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            r[f"full_speed_vs_{base['dtype']}"] = round(base["full_s_per_sample"] / r["full_s_per_sample"], 2)
    print(json.dumps(results if len(results) > 1 else results[0], indent=1))


if __name__ == "__main__":
    main()
