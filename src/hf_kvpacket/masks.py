"""Block-diagonal attention masks: stitched packets are exactly one forward pass with this mask.

Each slot carries a block id: `>= 0` for a block encoded alone (the preamble, each packet), `JOINT` for tokens that see
everything before them (the query, in-place text segments), `PAD` for padding. Slot `i` may attend to slot `j` iff
`j <= i`, `j` is not padding, and either `i` is joint or both are in the same block; on sliding-window layers also
`i - j < window`. Positions are contiguous from 0, so slot distance equals position distance.
"""

from __future__ import annotations

import torch
from torch import nn

from .model_structure import text_config

JOINT = -1
PAD = -2


def block_attention_mask(
    block_ids: torch.Tensor, dtype: torch.dtype = torch.float32, sliding_window: int | None = None
) -> torch.Tensor:
    """Additive 4-D mask `(batch, 1, seq_len, seq_len)`: 0 where attention is allowed, the dtype's minimum elsewhere.

    Padding rows attend to themselves only, so no row is fully masked (no NaN).
    """
    b, n = block_ids.shape
    i = torch.arange(n, device=block_ids.device)
    causal = i[None, :] <= i[:, None]
    q, k = block_ids[:, :, None], block_ids[:, None, :]
    allowed = causal & (k != PAD) & ((q == JOINT) | (q == k))
    if sliding_window is not None:
        allowed &= (i[:, None] - i[None, :]) < sliding_window
    allowed |= torch.eye(n, dtype=torch.bool, device=block_ids.device) & (q == PAD)
    mask = torch.zeros(b, 1, n, n, dtype=dtype, device=block_ids.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def layer_windows(config) -> dict[str, int | None]:
    """Attention window per layer type (`None` = full attention) from a model config."""
    config = text_config(config)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return {t: (window if t == "sliding_attention" else None) for t in set(layer_types)}
    # Mistral-style configs without layer_types: every layer uses the window when one is set.
    return {"full_attention": window}


def model_attention_mask(model: nn.Module, block_ids: torch.Tensor, dtype: torch.dtype | None = None):
    """The block-diagonal mask in the form the model's forward takes: one tensor, or a dict keyed by layer type."""
    dtype = dtype or model.get_input_embeddings().weight.dtype
    windows = layer_windows(model.config)
    masks = {t: block_attention_mask(block_ids, dtype, w) for t, w in windows.items()}
    if len(masks) == 1:
        return next(iter(masks.values()))
    return masks


def positions_from_blocks(block_ids: torch.Tensor) -> torch.Tensor:
    """Contiguous position ids (0, 1, ... over non-padding slots); padding slots get 0."""
    real = (block_ids != PAD).long()
    return ((real.cumsum(-1) - 1) * real).clamp_min(0)
