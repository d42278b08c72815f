"""Train a header/trailer adapter on your own documents with a stock `transformers.Trainer`.

    python examples/train_adapter.py --docs my_texts/ --questions questions.jsonl --output my-adapter
    python examples/train_adapter.py --fast       # tiny random model, synthetic biographies, a few steps

Each training example is a few of your documents and a question (a JSON line {"documents": [...], "question": ...}; by
default synthetic biographies from `hf_kvpacket.evaluation`). The frozen model answers from the jointly encoded prompt
(the teacher); the adapter learns to make independently encoded packets give the same answer distribution (KL).
The full recipe with evaluation and resumable checkpoints is `kvpacket train` (docs/training.md).
"""

import argparse
import json

import datasets
from transformers import TrainingArguments

from hf_kvpacket import PacketAdapter
from hf_kvpacket.evaluation import load_task
from hf_kvpacket.training import (
    DistillationCollator,
    PacketDistillationModel,
    PacketDistillationTrainer,
    TeacherConfig,
    build_teacher_dataset,
)
from hf_kvpacket.testing import example_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--questions", default=None, help="JSON lines with documents and question")
    p.add_argument("--output", default="my-adapter")
    p.add_argument("--work-dir", default=".kvpacket_cache/train_example")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()
    model, tok = example_model(args.fast)
    if args.questions:
        rows = datasets.Dataset.from_list([{"id": str(i), "task": "custom", "answers": [], **json.loads(line)}
                                           for i, line in enumerate(open(args.questions, encoding="utf-8"))])
    else:
        rows = load_task("biography", split="train", num_samples=8 if args.fast else 256, seed=0)
    teacher = build_teacher_dataset(model, tok, rows, f"{args.work_dir}/teacher{'-fast' if args.fast else ''}",
                                    TeacherConfig(max_new_tokens=4 if args.fast else 24))
    adapter = PacketAdapter.for_model(model, num_header_tokens=8, num_trailer_tokens=8)
    trainer = PacketDistillationTrainer(
        model=PacketDistillationModel(model, adapter),
        data_collator=DistillationCollator(8, 8, pad_token_id=tok.pad_token_id or 0),
        train_dataset=teacher,
        args=TrainingArguments(output_dir=f"{args.work_dir}/checkpoints", per_device_train_batch_size=4,
                               learning_rate=2e-3, lr_scheduler_type="linear", max_steps=3 if args.fast else args.steps,
                               logging_steps=1 if args.fast else 10, save_steps=50, remove_unused_columns=False,
                               report_to=[], use_cpu=True, label_names=["labels"]),
    )
    trainer.train()
    adapter.save_pretrained(args.output, training_args={"steps": trainer.state.global_step, "lr": 2e-3})
    print("saved", args.output, "final loss", trainer.state.log_history[-1].get("train_loss"))


if __name__ == "__main__":
    main()
