"""Multi-turn chat that reuses the same document packets every turn.

    python examples/multi_turn_chat.py            # SmolLM2-135M-Instruct
    python examples/multi_turn_chat.py --fast     # tiny random model

The documents are encoded once. Every turn composes a fresh PacketCache (generate grows a cache in place, so one cache
serves one call) from the same packets, and the conversation so far travels in the query: only the new turn's tokens
and the history are prefilled, never the documents.
"""

import argparse

from hf_kvpacket import PacketCache, encode_packets, encode_preamble
from hf_kvpacket.prompt import PromptTemplate
from hf_kvpacket.testing import example_model

DOCS = ["The Verdant Line is a 42-kilometre light railway that opened in 2019.",
        "It connects the harbour district of Port Alder with the hill town of Ember Falls."]
TURNS = ["When did the Verdant Line open?", "Which town does it reach in the hills?"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()
    model, tok = example_model(args.fast)
    tpl = PromptTemplate.from_tokenizer(tok, system_prompt="You are a helpful assistant.")
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    packets = encode_packets(model, [ids(tpl.document(d)) for d in DOCS])   # once
    preamble = encode_preamble(model, ids(tpl.preamble))                   # once
    history = ""
    for turn in TURNS:
        query = history + tpl.query(turn)
        cache = PacketCache.from_packets(packets, model=model, tokenizer=tok, preamble=preamble)  # fresh per turn
        inputs = cache.inputs_for(query)
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        print(f"user: {turn}\nassistant: {answer}")
        history = query + answer + "\n"


if __name__ == "__main__":
    main()
