"""Teacher-forced check of adapters on held-out examples: KL(teacher || student) over the teacher's answer, and how
often the student's argmax agrees with the teacher's tokens (all answer tokens, and the first one).

The teacher is the frozen model reading the jointly encoded prompt (greedy, as in training); the student reads the
stitched packets with each adapter, and without one (the no-recompute reference). This separates "the adapter did not
learn" (KL near the reference) from "greedy answers diverge anyway" (KL well below it, fidelity still low).

    python examples/heldout_kl.py --task squad --adapters adapters/qwen2.5-coder-0.5b-instruct-mixture \
        adapters/qwen2.5-coder-0.5b-instruct-squad --work-dir runs/heldout-squad
    python examples/heldout_kl.py --fast    # tiny random model and a random adapter, two examples
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_kvpacket import PacketAdapter
from hf_kvpacket.evaluation import load_task
from hf_kvpacket.offline_models import load_model_and_tokenizer
from hf_kvpacket.testing import example_model
from hf_kvpacket.training import DistillationCollator, PacketDistillationModel, TeacherConfig, build_teacher_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--task", default="squad")
    p.add_argument("--adapters", nargs="*", default=[])
    p.add_argument("--num-samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work-dir", default=".kvpacket_cache/heldout_kl", help="where the teacher rows are cached")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()
    if args.fast:
        model, tok = example_model(True)
        PacketAdapter.for_model(model, 2, 2, seed=1).save_pretrained(f"{args.work_dir}/random-adapter", model_card=False)
        args.task, args.num_samples, args.adapters = "biography", 2, [f"{args.work_dir}/random-adapter"]
    else:
        model, tok = load_model_and_tokenizer(args.model, dtype=getattr(torch, args.dtype))
    rows = load_task(args.task, split="eval", num_samples=args.num_samples, seed=args.seed)
    teacher = build_teacher_dataset(model, tok, rows, f"{args.work_dir}/teacher{'-fast' if args.fast else ''}",
                                    TeacherConfig(max_new_tokens=4 if args.fast else 24, max_context_tokens=None))
    teacher = teacher.filter(lambda r: len(r["teacher_ids"]) > 0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for name in ["none", *args.adapters]:
        adapter = PacketAdapter.for_model(model, 0, 0) if name == "none" else PacketAdapter.from_pretrained(name)
        cfg = adapter.config
        wrapper = PacketDistillationModel(model, adapter).eval()
        collator = DistillationCollator(cfg.num_header_tokens, cfg.num_trailer_tokens, pad_token_id=pad)
        kls, agree, first = [], [], []
        for row in teacher:
            batch = {k: v for k, v in collator([row]).items() if torch.is_tensor(v)}
            with torch.no_grad():
                out = wrapper(**batch)
            pred, labels = out["logits"][0].argmax(-1), batch["labels"][0]
            valid = labels != -100
            kls.append(out["loss"].item())
            agree.append((pred[valid] == labels[valid]).float().mean().item())
            first.append(float(pred[0] == labels[0]))
        n = len(kls)
        print(json.dumps({"task": args.task, "adapter": name, "n": n, "kl": round(sum(kls) / n, 4),
                          "token_agreement": round(sum(agree) / n, 3),
                          "first_token_agreement": round(sum(first) / n, 3)}), flush=True)


if __name__ == "__main__":
    main()
