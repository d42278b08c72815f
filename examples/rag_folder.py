"""RAG over a folder of text files with a persistent packet store.

    python examples/rag_folder.py --docs my_texts/ --question "Who founded Rye & Co?"
    python examples/rag_folder.py --fast          # tiny random model, bundled documents (what the tests run)

Each file is one document. The first run encodes every file into packets under --store; later runs (and later
questions) load them: the store prints its hits and misses. Retrieval here is a simple word-overlap ranking; plug in
any retriever, the packets do not care.
"""

import argparse
import json
import os
import re
from importlib import resources

from hf_kvpacket import PacketAdapter, PacketCache, PacketStore
from hf_kvpacket.prompt import PromptTemplate
from hf_kvpacket.testing import example_model


def read_folder(folder: str | None) -> list[str]:
    if folder is None:  # the demo documents bundled with the package
        return json.loads(resources.files("hf_kvpacket").joinpath("data/demo_docs.json").read_text())["documents"]
    return [open(os.path.join(folder, f), encoding="utf-8").read() for f in sorted(os.listdir(folder))
            if f.endswith((".txt", ".md"))]


def top_k(docs: list[str], question: str, k: int) -> list[str]:
    words = set(re.findall(r"\w+", question.lower()))
    return sorted(docs, key=lambda d: -len(words & set(re.findall(r"\w+", d.lower()))))[:k]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--docs", default=None, help="folder of .txt/.md files (default: bundled demo documents)")
    p.add_argument("--question", default="Who founded Rye & Co?")
    p.add_argument("--store", default=os.path.join(".kvpacket_cache", "rag_store"))
    p.add_argument("--adapter", default=None, help="adapter folder or Hub id")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()

    model, tok = example_model(args.fast)
    adapter = PacketAdapter.from_pretrained(args.adapter) if args.adapter else None
    store = PacketStore(args.store + ("-fast" if args.fast else ""), model, tok, adapter)
    tpl = PromptTemplate.from_tokenizer(tok, system_prompt="You are a helpful assistant.")
    docs = read_folder(args.docs)
    chosen = top_k(docs, args.question, args.top_k)
    packets = store.get_many([tpl.document(d) for d in chosen])
    cache = PacketCache.from_packets(packets, model=model, tokenizer=tok, preamble=tpl.preamble)
    inputs = cache.inputs_for(tpl.query(args.question))
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    print("answer:", tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    print("store:", store.last_call)


if __name__ == "__main__":
    main()
