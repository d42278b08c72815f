"""PacketCache (cache.py): single use under every query length, warnings past max_position_embeddings, and the
model's dtype checked against the packets' at composition."""

import logging

import pytest
import torch

from hf_kvpacket import (
    CacheReuseError,
    ContextTooLongError,
    FingerprintMismatchError,
    PacketCache,
    PacketStore,
    encode_packets,
)
from test_exactness import DOCS, PREAMBLE, QUERY
from tiny_models import ToyTokenizer, build


def _cache(model, **kw):
    return PacketCache.from_packets(encode_packets(model, DOCS, progress=False), model=model, preamble=PREAMBLE, **kw)


@pytest.mark.parametrize("query", [[5], QUERY])
def test_second_generate_with_the_same_inputs_raises(query):
    """A one-token query used to slip through: the second call continued from the grown cache."""
    model = build("llama")
    cache = _cache(model)
    inp = cache.inputs_for(query)
    model.generate(**inp, max_new_tokens=3, do_sample=False, pad_token_id=0)
    with pytest.raises(CacheReuseError):
        model.generate(**inp, max_new_tokens=3, do_sample=False, pad_token_id=0)
    with pytest.raises(CacheReuseError):
        cache.inputs_for(query)


def test_second_forward_with_a_one_token_query_raises():
    model = build("llama")
    cache = _cache(model)
    inp = cache.inputs_for([5])
    with torch.no_grad():
        model(**inp)
        with pytest.raises(CacheReuseError):
            model(**inp)
    with pytest.raises(CacheReuseError):
        cache.inputs_for([5])


def test_decoding_steps_and_beams_are_not_mistaken_for_reuse():
    model = build("llama")
    for kw in ({"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True}, {}):
        out = model.generate(**_cache(model).inputs_for([5]), max_new_tokens=5, pad_token_id=0, **kw)
        assert out.shape[-1] == 6


def test_generating_past_max_positions_warns_once(caplog):
    model = build("llama")
    model.config.max_position_embeddings = 64
    from hf_kvpacket import rope
    rope._REROTATORS.pop(model, None)
    cache = PacketCache.from_packets(encode_packets(model, DOCS, progress=False), model=model)
    assert cache.composed_length < 64
    with caplog.at_level(logging.WARNING, logger="hf_kvpacket.cache"):
        model.generate(**cache.inputs_for([5]), max_new_tokens=64 - cache.composed_length + 5, do_sample=False,
                       pad_token_id=0)
    overflow = [r for r in caplog.records if "max_position_embeddings=64" in r.getMessage()]
    assert len(overflow) == 1
    strict = PacketCache.from_packets(encode_packets(model, DOCS, progress=False), model=model,
                                      position_overflow="raise")
    with pytest.raises(ContextTooLongError, match="max_position_embeddings=64"):
        model.generate(**strict.inputs_for([5]), max_new_tokens=40, do_sample=False, pad_token_id=0)


def test_model_cast_in_place_refuses_old_packets_and_the_store_reencodes(tmp_path):
    """model.to(bfloat16) kept the cached fingerprint, so packets of the fp32 model were served."""
    model = build("llama")
    store = PacketStore(tmp_path, model, ToyTokenizer())
    old = store.get_many(["alpha beta gamma", "delta epsilon"], progress=False)
    model.to(torch.bfloat16)
    with pytest.raises(FingerprintMismatchError):
        PacketCache.from_packets(old, model=model)
    new = store.get_many(["alpha beta gamma", "delta epsilon"], progress=False)
    assert store.last_call.misses == 2 and new[0].dtype == torch.bfloat16
    PacketCache.from_packets(new, model=model)  # composes
