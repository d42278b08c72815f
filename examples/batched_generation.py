"""Batched generation where every row has its own packets.

    python examples/batched_generation.py [--fast]

Rows are left-padded to a common cache length and the padding is masked out (transformers' left-padding convention);
queries of different lengths are padded after the cache. The same documents' packets are shared across rows.
"""

import argparse

from hf_kvpacket import PacketCache, encode_packets
from hf_kvpacket.prompt import PromptTemplate
from hf_kvpacket.testing import example_model

DOCS = ["Marta Kowalski was born in Gdansk.", "Tomasz Ek founded the bakery chain Rye & Co in 2011.",
        "Lake Orrin's dam is 88 metres tall."]
ROWS = [([0, 1], "Where was Marta Kowalski born?"), ([1], "Who founded Rye & Co?"), ([2, 0, 1], "How tall is the dam?")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()
    model, tok = example_model(args.fast)
    tpl = PromptTemplate.from_tokenizer(tok, system_prompt="You are a helpful assistant.")
    packets = encode_packets(model, [tok(tpl.document(d), add_special_tokens=False)["input_ids"] for d in DOCS])
    cache = PacketCache.from_packets([[packets[i] for i in docs] for docs, _ in ROWS], model=model, tokenizer=tok,
                                     preamble=tpl.preamble)
    inputs = cache.inputs_for([tpl.query(q) for _, q in ROWS])
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    for (_, question), row in zip(ROWS, out):
        print(question, "->", tok.decode(row[inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())


if __name__ == "__main__":
    main()
