"""Run by tests/test_training.py under `accelerate launch --cpu --num_processes 2` (DDP over gloo).

Every rank trains the same tiny model's adapter on its shard of the rows; afterwards each rank writes its adapter
and the Trainer saves the final one. The test checks that ranks agree (gradients were all-reduced) and learned.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(out: str) -> None:
    import datasets
    from transformers import TrainingArguments

    from hf_kvpacket import PacketAdapter
    from hf_kvpacket.training import DistillationCollator, PacketDistillationModel, PacketDistillationTrainer
    from test_exactness import PREAMBLE, QUERY
    from tiny_models import build

    torch.manual_seed(0)
    model = build("llama")
    rows = []
    for i in range(8):
        docs = [[(7 * i + 3 * j + k) % 120 + 1 for k in range(6 + j)] for j in range(3)]
        prompt = PREAMBLE + [x for d in docs for x in d] + QUERY
        ans = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        rows.append({"preamble_ids": PREAMBLE, "document_ids": docs, "query_ids": QUERY,
                     "teacher_ids": ans[0, len(prompt):].tolist()})
    adapter = PacketAdapter.for_model(model, 4, 4, seed=0)
    adapter.save_pretrained(os.path.join(out, "init"), model_card=False)
    wrapper = PacketDistillationModel(model, adapter)
    args = TrainingArguments(output_dir=os.path.join(out, "ckpt"), per_device_train_batch_size=2, learning_rate=3e-2,
                             max_steps=6, lr_scheduler_type="linear", logging_steps=50, save_strategy="no",
                             remove_unused_columns=False, report_to=[], use_cpu=True, disable_tqdm=True,
                             label_names=["labels"], ddp_backend="gloo", seed=0)
    trainer = PacketDistillationTrainer(model=wrapper, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                        data_collator=DistillationCollator(4, 4))
    trainer.train()
    rank = trainer.args.process_index
    torch.save({"world": trainer.args.world_size, "header": adapter.header.detach().clone(),
                "trailer": adapter.trailer.detach().clone()}, os.path.join(out, f"rank{rank}.pt"))
    trainer.save_model(os.path.join(out, "final"))
    # tear the gloo group down before the interpreter exits: left to exit-time destructors, a rank can abort with
    # "terminate called without an active exception" (seen once in a clean-clone CI run on transformers 5.17)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
