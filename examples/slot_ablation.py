"""Split a trained adapter into its header and its trailer, to see which of the two helps or hurts a task.

    python examples/slot_ablation.py adapters/qwen2.5-coder-0.5b-instruct-mixture --output runs/ablate
    # then, on the held-out rows of an earlier run (its baselines reused):
    kvpacket eval --model qwen2.5-coder-0.5b-instruct --tasks squad --methods full_recompute,no_recompute,kv_packet \
        --num-samples 100 --seed 42 --max-new-tokens 24 --system-prompt 'You are a helpful assistant.' --threads 1 \
        --adapter runs/ablate/trailer-only --reuse-from results/<the earlier run> --output runs/eval/squad-trailer-only
    kvpacket compare runs/eval/squad-trailer-only results/<the earlier run>

Writes `header-only/` (the trained header, no trailer slots) and `trailer-only/` (no header slots, the trained
trailer), each a regular adapter folder: documents are encoded behind the kept header (or behind none) and composed
exactly as with the full adapter, so the difference between the three runs is the part that was dropped.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from hf_kvpacket import PacketAdapter, PacketCache, PacketStore
from hf_kvpacket.config import KVPacketConfig
from hf_kvpacket.prompt import PromptTemplate
from hf_kvpacket.testing import example_model


def split(adapter: PacketAdapter) -> dict[str, PacketAdapter]:
    """`{"header-only": ..., "trailer-only": ...}` copies of `adapter` with the other part's slots removed."""
    out = {}
    for name, keep_header in (("header-only", True), ("trailer-only", False)):
        config = KVPacketConfig.from_dict({**adapter.config.to_dict(),
                                           "num_header_tokens": adapter.num_header_tokens if keep_header else 0,
                                           "num_trailer_tokens": 0 if keep_header else adapter.num_trailer_tokens})
        part = PacketAdapter(config)
        with torch.no_grad():
            (part.header if keep_header else part.trailer).copy_(adapter.header if keep_header else adapter.trailer)
        part.allow_other_base_model = adapter.allow_other_base_model
        out[name] = part
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", nargs="?", help="adapter folder or Hub id")
    p.add_argument("--output", default="runs/ablate")
    p.add_argument("--fast", action="store_true",
                   help="a random adapter of a tiny model, split, and each part answering through PacketCache")
    args = p.parse_args()
    if args.fast:
        model, tok = example_model(True)
        adapter, output = PacketAdapter.for_model(model, 4, 4), tempfile.mkdtemp()
    elif args.adapter:
        adapter, output = PacketAdapter.from_pretrained(args.adapter), args.output
    else:
        p.error("name an adapter folder (or --fast)")
    for name, part in split(adapter).items():
        part.save_pretrained(os.path.join(output, name))
        print(f"{name}: {part.num_header_tokens}+{part.num_trailer_tokens} slots -> {os.path.join(output, name)}")
        if args.fast:  # the part is an ordinary adapter: encode, compose, generate
            again = PacketAdapter.from_pretrained(os.path.join(output, name))
            store = PacketStore(os.path.join(output, name + "-store"), model, tok, again)
            tpl = PromptTemplate.from_tokenizer(tok)
            cache = PacketCache.from_packets(store.get_many([tpl.document("Ada was born in London."),
                                                             tpl.document("Alan was born in Maida Vale.")]),
                                             model=model, tokenizer=tok, preamble=tpl.preamble)
            inputs = cache.inputs_for(tpl.query("Where was Ada born?"))
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            new = out.shape[-1] - inputs["input_ids"].shape[-1]
            print(f"  {name}: two packets composed, {new} tokens generated through PacketCache")


if __name__ == "__main__":
    main()
