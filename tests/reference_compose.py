"""Test helper: the first composition of this library (single row), the reference the composition is checked against.

Per layer, `torch.cat` the packets, then rotate the keys in place with per-slot tables (`rotate_keys_`, which clones
the first half). It used to live in `hf_kvpacket.bench.workload` as the bench's before/after measurement; the
historical numbers are in docs/concepts.md.
"""

import torch

from hf_kvpacket.rope import rotate_keys_, rotation_tables


def compose_naive(packets, preamble, rerotator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`(keys, values)` of every layer of `preamble + packets`, composed the naive way."""
    items = ([preamble] if preamble is not None else []) + list(packets)
    lengths = [p.length for p in items]
    offsets = torch.tensor([0] + lengths[:-1]).cumsum(0)
    deltas = torch.repeat_interleave(offsets, torch.tensor(lengths))
    tables: dict = {}
    out = []
    for layer_idx in range(items[0].num_layers):
        keys = torch.cat([p.keys[layer_idx] for p in items], dim=-2).unsqueeze(0)
        values = torch.cat([p.values[layer_idx] for p in items], dim=-2).unsqueeze(0)
        spec = rerotator.specs[layer_idx]
        key = (id(spec.inv_freq), keys.dtype, keys.device)
        if key not in tables:
            tables[key] = rotation_tables(deltas, spec.inv_freq, keys.dtype, keys.device)
        rotate_keys_(keys, *tables[key])
        out.append((keys, values))
    return out
