"""Packets on top of a LoRA-tuned `peft.PeftModel`.

    python examples/peft_lora.py [--fast]

Packets are encoded with the PeftModel itself (its LoRA weights change keys and values), and its fingerprint differs
from the base model's, so packets of the base model are refused for it and vice versa.
"""

import argparse

import peft

from hf_kvpacket import FingerprintMismatchError, PacketCache, encode_packets
from hf_kvpacket.prompt import PromptTemplate
from hf_kvpacket.testing import example_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()
    base, tok = example_model(args.fast)
    base_packets = encode_packets(base, [tok("A document about otters.", add_special_tokens=False)["input_ids"]])
    # Your LoRA fine-tune: here a fresh adapter (from_pretrained(base, "my-lora") in real life).
    model = peft.get_peft_model(base, peft.LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj"])).eval()
    tpl = PromptTemplate.from_tokenizer(tok, system_prompt="You are a helpful assistant.")
    docs = ["Otters hold hands while sleeping so they do not drift apart."]
    packets = encode_packets(model, [tok(tpl.document(d), add_special_tokens=False)["input_ids"] for d in docs])
    cache = PacketCache.from_packets(packets, model=model, tokenizer=tok, preamble=tpl.preamble)
    inputs = cache.inputs_for(tpl.query("Why do otters hold hands?"))
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    print("answer:", tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    try:
        PacketCache.from_packets(base_packets, model=model)
    except FingerprintMismatchError as e:
        print("base-model packets refused on the LoRA model:", str(e)[:80], "...")


if __name__ == "__main__":
    main()
