"""Re-rotation kernels (rope.py) on synthetic keys with the angles and the expected rotated keys written out, in the
style of transformers' own RoPE tests: head_dim 2 and 4, partial rotary, the in-place and the out-of-place kernel."""

import math

import pytest
import torch

from hf_kvpacket.rope import rotate_keys_, rotate_keys_into, rotation_tables


def test_head_dim_2_by_a_quarter_turn():
    # inv_freq = [1]: a delta of pi/2 rotates (x1, x2) = (1, 0) to (0, 1) and (0, 1) to (-1, 0) (rotate-half form:
    # x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin).
    keys = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]]]], dtype=torch.float64)  # (1, 1, 3, 2)
    cos, sin = rotation_tables(torch.tensor([math.pi / 2] * 3, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                               torch.float64, "cpu")
    got = rotate_keys_(keys.clone(), cos, sin)
    want = torch.tensor([[[[0.0, 1.0], [-1.0, 0.0], [-4.0, 3.0]]]], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-15, rtol=0)


def test_head_dim_4_two_frequencies_literal():
    # inv_freq = [1, 1/2], delta = 1: angles 1 and 0.5 rad; pairs are (k0, k2) and (k1, k3).
    k = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    c1, s1, c2, s2 = math.cos(1.0), math.sin(1.0), math.cos(0.5), math.sin(0.5)
    want = torch.tensor([1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2], dtype=torch.float64)
    inv = torch.tensor([1.0, 0.5], dtype=torch.float64)
    keys = k.view(1, 1, 1, 4)
    cos, sin = rotation_tables(torch.tensor([1]), inv, torch.float64, "cpu")
    assert torch.allclose(rotate_keys_(keys.clone(), cos, sin).flatten(), want, atol=1e-15, rtol=0)
    out = torch.empty_like(keys)
    cos_f, sin_f = rotation_tables(torch.tensor(1), inv, torch.float64, "cpu", full=True)
    assert cos_f.tolist() == [c1, c2, c1, c2]
    assert torch.allclose(rotate_keys_into(out, keys, cos_f, sin_f).flatten(), want, atol=1e-15, rtol=0)
    half = cos_f.shape[-1] // 2  # the pre-split form composition uses gives the same bits
    again = rotate_keys_into(torch.empty_like(keys), keys, cos_f, sin_f[..., :half], sin_f[..., half:])
    assert torch.equal(again, out)


def test_partial_rotary_leaves_the_tail_untouched():
    # rotary_dim 2 of head_dim 4: only (k0, k1) turn; k2, k3 are copied.
    keys = torch.tensor([[[[1.0, 0.0, 7.0, -7.0]]]], dtype=torch.float64)
    inv = torch.tensor([1.0], dtype=torch.float64)
    cos, sin = rotation_tables(torch.tensor([math.pi], dtype=torch.float64), inv, torch.float64, "cpu", full=True)
    out = rotate_keys_into(torch.empty_like(keys), keys, cos, sin)
    assert torch.allclose(out, torch.tensor([[[[-1.0, 0.0, 7.0, -7.0]]]], dtype=torch.float64), atol=1e-15)
    cos_h, sin_h = rotation_tables(torch.tensor([math.pi], dtype=torch.float64), inv, torch.float64, "cpu")
    assert torch.allclose(rotate_keys_(keys.clone(), cos_h, sin_h), out, atol=1e-15, rtol=0)


@pytest.mark.parametrize("a, b", [(3, 5), (100, -40), (4095, 1)])
def test_rotations_compose_exactly_in_float64(a, b):
    """R(a) R(b) = R(a + b): moving a packet twice equals moving it once by the sum (why re-rotation is exact)."""
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 2, 3, 8, generator=gen, dtype=torch.float64)
    inv = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    twice = rotate_keys_(rotate_keys_(keys.clone(), *rotation_tables(torch.tensor([a] * 3), inv, torch.float64, "cpu")),
                         *rotation_tables(torch.tensor([b] * 3), inv, torch.float64, "cpu"))
    once = rotate_keys_(keys.clone(), *rotation_tables(torch.tensor([a + b] * 3), inv, torch.float64, "cpu"))
    assert torch.allclose(twice, once, atol=1e-12, rtol=0)
