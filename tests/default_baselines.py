"""The method matrix (kvpress `default_presses.py` style): every method with two settings, easy -> hard.

A new method adds one entry here and is smoke-tested by `test_baselines.py::test_every_method_runs` for free.
"""

from hf_kvpacket.baselines import EPIC, CacheBlend, FullRecompute, KVPacket, NoRecompute, QueryOnly

default_baselines = [
    {"cls": FullRecompute, "kwargs": [{}, {}]},
    {"cls": NoRecompute, "kwargs": [{}, {}]},
    {"cls": KVPacket, "kwargs": [{}, {}]},
    {"cls": CacheBlend, "kwargs": [{"recompute_ratio": 0.5}, {"recompute_ratio": 0.15, "check_layer": 1,
                                                              "deviation": "both"}]},
    {"cls": EPIC, "kwargs": [{"num_tokens": 4}, {"num_tokens": 1}]},
    {"cls": QueryOnly, "kwargs": [{}, {}]},
]
