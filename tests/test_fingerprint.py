"""Model fingerprints (fingerprint.py) follow in-place changes of the model without `refresh=True`."""

import torch

from hf_kvpacket import model_fingerprint
from tiny_models import build


def test_fingerprint_follows_casts_moves_and_in_place_writes():
    model = build("llama")
    fp32 = model_fingerprint(model)
    assert model_fingerprint(model) == fp32  # cached
    model.to(torch.bfloat16)
    bf16 = model_fingerprint(model)
    assert bf16 != fp32  # used to stay fp32's: old packets were served to the cast model
    model.to(torch.float32)
    back = model_fingerprint(model)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    assert model_fingerprint(model) != back  # an in-place edit, no refresh needed
    state = {k: v.clone() for k, v in build("llama", seed=3).state_dict().items()}
    model.load_state_dict(state)
    assert model_fingerprint(model) == model_fingerprint(build("llama", seed=3))


def test_refresh_is_for_writes_through_param_data():
    model = build("llama")
    before = model_fingerprint(model)
    model.model.layers[0].mlp.up_proj.weight.data[0, 0] += 1.0  # .data has a version counter of its own
    assert model_fingerprint(model) == before  # not seen (what the docs say refresh=True is for) ...
    assert model_fingerprint(model, refresh=True) != before  # ... and refresh=True sees it
