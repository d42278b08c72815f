"""Packets on top of a LoRA-tuned `peft.PeftModel`: exact, and never mixed with the base model's packets."""

import pytest
import torch

from hf_kvpacket import FingerprintMismatchError, PacketAdapter, PacketCache, encode_packets, model_fingerprint
from hf_kvpacket.layout import block_forward, wrapped_sequence
from test_exactness import DOCS, PREAMBLE, QUERY
from tiny_models import build, float64_rotary

peft = pytest.importorskip("peft")


def lora_model():
    base = build("llama", torch.float64)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # a "trained" LoRA: changes keys and values
    return model.eval()


def test_packets_on_peft_model_are_exact():
    model = lora_model()
    adapter = PacketAdapter.for_model(model, 2, 2).double()
    with float64_rotary(model), torch.no_grad():
        cache = PacketCache.from_packets(encode_packets(model, DOCS, adapter), model=model, preamble=PREAMBLE)
        got = model(**cache.inputs_for(QUERY)).logits[0]
        embeds, blocks = wrapped_sequence(model, PREAMBLE, DOCS, QUERY, adapter)
        ref = block_forward(model, embeds, blocks).logits[0, -len(QUERY):]
        out = model.generate(**PacketCache.from_packets(encode_packets(model, DOCS, adapter), model=model,
                                                        preamble=PREAMBLE).inputs_for(QUERY),
                             max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert (got - ref).abs().max().item() <= 1e-9
    assert out.shape[1] == len(QUERY) + 4


def test_base_model_packets_refused_on_lora_model():
    model = lora_model()
    base_packets = encode_packets(build("llama", torch.float64), DOCS)
    assert model_fingerprint(model) != base_packets[0].model_fingerprint
    with pytest.raises(FingerprintMismatchError):
        PacketCache.from_packets(base_packets, model=model)
