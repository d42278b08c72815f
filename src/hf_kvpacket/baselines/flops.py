"""One analytic FLOPs model for every method: the work done from cache preparation to the first token's logits.

For a token run through ``layers`` decoder layers while attending to ``c`` cache slots (itself included)::

    2 * params_per_layer * layers                 # every weight matrix: one multiply-add per weight
  + 4 * layers * num_heads * head_dim * c         # attention: q.k scores (2 n d c) and probs @ v (2 n d c)

plus ``2 * lm_head_params`` for each token whose logits are computed (only the last query token before the first
generated token), and ``3 * layers * num_kv_heads * head_dim`` per re-rotated key slot (``x * cos + rot(x) * sin``)
for methods that compose packets. Embedding lookups, norms, softmax and activations are ignored (they are
``O(hidden)`` per token, negligible next to the matmuls). ``params_per_layer`` is counted from the model's own decoder
layers, so grouped-query attention, biases and MLP shapes are exact.

Packets are encoded ahead of time and reused (a store hit), so their encoding is *not* counted: this is query-time
FLOPs, as in the paper's comparison (KV Packet ~ a query prefill; recompute methods add the recomputed tokens).

Examples
--------
>>> dims = ModelDims(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, params_per_layer=1000,
...                  lm_head_params=500)
>>> counter = FlopCounter(dims)
>>> counter.prefill(num_tokens=3)          # contexts 1, 2, 3
>>> counter.total == 3 * 2 * 1000 * 2 + 4 * 2 * 4 * 16 * (1 + 2 + 3) + 2 * 500
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from ..model_structure import decoder_layers, text_config


@dataclass(frozen=True)
class ModelDims:
    """The sizes the FLOPs model needs, read from a model with :meth:`from_model`.

    Parameters
    ----------
    num_layers, num_heads, num_kv_heads, head_dim:
        Decoder depth and attention shape.
    params_per_layer:
        Mean parameter count of one decoder layer (attention + MLP + norms).
    lm_head_params:
        Parameters of the output projection (``vocab_size * hidden_size``, tied or not).
    qkv_params_per_layer:
        Parameters of one layer's query/key/value projections (what a CacheBlend probe runs at its check layer).

    Examples
    --------
    >>> dims = ModelDims.from_model(model)  # doctest: +SKIP
    """

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    params_per_layer: float
    lm_head_params: int
    qkv_params_per_layer: float = 0.0

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelDims:
        config = text_config(model)
        layers = decoder_layers(model)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        per_layer = sum(p.numel() for p in layers.parameters()) / len(layers)
        head = model.get_output_embeddings()
        lm_head = head.weight.numel() if head is not None else config.vocab_size * config.hidden_size
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        qkv = sum(p.numel() for name, p in layers[0].named_parameters()
                  if any(part in ("q_proj", "k_proj", "v_proj", "qkv_proj") for part in name.split(".")))
        if not qkv:
            qkv = config.hidden_size * (heads + 2 * kv_heads) * head_dim
        return cls(len(layers), heads, kv_heads, head_dim, per_layer, lm_head, float(qkv))

    def token_flops(self, context: int, layers: int | None = None) -> float:
        """FLOPs of one token through ``layers`` (default all) decoder layers attending to ``context`` slots."""
        layers = self.num_layers if layers is None else layers
        return 2.0 * self.params_per_layer * layers + 4.0 * layers * self.num_heads * self.head_dim * context


@dataclass
class FlopCounter:
    """Accumulates the analytic FLOPs of one answer (see the module docstring for the formula).

    Examples
    --------
    >>> counter = FlopCounter(dims)  # doctest: +SKIP
    >>> counter.prefill(num_tokens=20, past=1000)   # a query over a composed cache of 1,000 slots  # doctest: +SKIP
    >>> counter.total  # doctest: +SKIP
    """

    dims: ModelDims
    total: float = field(default=0.0)

    def tokens(self, contexts: Iterable[int], layers: int | None = None) -> None:
        """Tokens run through ``layers`` layers, each attending to its own number of slots."""
        for c in contexts:
            self.total += self.dims.token_flops(int(c), layers)

    def prefill(self, num_tokens: int, past: int = 0, logits: int = 1) -> None:
        """A causal prefill of ``num_tokens`` tokens after ``past`` cached slots, ``logits`` of them projected."""
        n = int(num_tokens)
        d = self.dims
        # sum of contexts past+1 .. past+n in closed form
        context_sum = n * past + n * (n + 1) / 2
        self.total += n * 2.0 * d.params_per_layer * d.num_layers + 4.0 * d.num_layers * d.num_heads * d.head_dim * context_sum
        self.logits(logits)

    def logits(self, num_tokens: int = 1) -> None:
        """The output projection for ``num_tokens`` tokens."""
        self.total += 2.0 * self.dims.lm_head_params * num_tokens

    def projections(self, num_tokens: int, params: float) -> None:
        """Matmuls with ``params`` weights for ``num_tokens`` tokens (e.g. one layer's q/k/v projections)."""
        self.total += 2.0 * params * num_tokens

    def rerotation(self, num_slots: int) -> None:
        """Re-rotating ``num_slots`` stored keys in every layer (3 FLOPs per key element)."""
        d = self.dims
        self.total += 3.0 * d.num_layers * d.num_kv_heads * d.head_dim * num_slots


__all__ = ["ModelDims", "FlopCounter"]
