"""Exact re-rotation of stored keys by a position delta, read from the model's own rotary embedding.

Keys are cached *after* RoPE. RoPE is a rotation, `R(p + d) = R(d) R(p)`, so a key encoded at position `p` is moved to
`p + d` by rotating it once more by `d`. We always rotate once from the packet's base position 0 (never chain
corrections: transformers PR #31537), with float64 angles, and only for RoPE variants where that identity holds
(default, linear, llama3, yarn). The `attention_scaling` of yarn multiplies cos/sin at encoding time; it is already in
the stored key, so the re-rotation itself is a pure rotation.

A correctness gate runs once per model: keys of a short random sequence encoded at positions `0..n` and re-rotated by
`d` are compared with the same sequence encoded at `d..d+n`. Anything else (dynamic NTK, longrope, M-RoPE, MLA,
absolute positions) raises `UnsupportedModelError` naming the cause: never a silently wrong answer.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .compat import cache_kwargs, output_cache
from .errors import RerotationGateError, UnsupportedModelError
from .model_structure import decoder_layers, head_dim, text_config  # noqa: F401  (decoder_layers: re-exported)

#: RoPE types whose angle is a fixed linear function of the position (so re-rotation by a delta is exact).
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
#: RoPE types refused, with the reason shown to the user.
REFUSED_ROPE_TYPES = {
    "dynamic": "dynamic NTK scaling changes the frequencies with the sequence length, so a key cached at one length "
    "cannot be moved exactly to another",
    "longrope": "longrope switches between short and long factors with the sequence length",
    "mrope": "multimodal RoPE (M-RoPE) rotates sections by 3-D positions",
}
#: Relative tolerance of the gate per dtype (a wrong convention gives errors of order 1). transformers computes RoPE
#: angles in float32 even for float64 models, so float64 allows for float32 angle rounding at the gate's shift.
GATE_TOLERANCE = {torch.float64: 1e-4, torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}
#: Past layer 0, a re-rotated key must be at least this much closer to the shifted key than the unrotated one is.
GATE_NOISE_RATIO = 0.25


@dataclass(frozen=True)
class RopeSpec:
    """Frequencies of one layer type. `inv_freq` is float64 on CPU, of length `rotary_dim // 2`."""

    rope_type: str
    inv_freq: torch.Tensor
    rotary_dim: int
    head_dim: int


def _rotary_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]


_text_config = text_config
_head_dim = head_dim


def read_rope_specs(model: nn.Module) -> list[RopeSpec]:
    """One `RopeSpec` per decoder layer, refusing models whose positions cannot be re-rotated exactly."""
    config = _text_config(model)
    name = type(model).__name__
    if getattr(config, "kv_lora_rank", None):
        raise UnsupportedModelError(
            f"{name} uses multi-head latent attention (MLA): its cache stores a compressed latent with a decoupled "
            "RoPE part, which hf_kvpacket cannot shift. Use a model with standard (grouped-query) attention."
        )
    rope_params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    flat = [rope_params] if "rope_type" in rope_params or "type" in rope_params else list(rope_params.values())
    if any(isinstance(p, dict) and "mrope_section" in p for p in flat):
        raise UnsupportedModelError(f"{name}: {REFUSED_ROPE_TYPES['mrope']}; it cannot be re-rotated by a scalar delta.")
    modules = _rotary_modules(model)
    if not modules:
        raise UnsupportedModelError(
            f"{name} has no rotary position embedding (absolute or ALiBi positions): packets can only be moved for "
            "RoPE models. Use a RoPE model (Llama, Qwen2, Mistral, Gemma-3, Phi-3, ...)."
        )
    rotary = modules[0]
    for other in modules[1:]:
        if type(other) is not type(rotary):
            raise UnsupportedModelError(f"{name} has several kinds of rotary embeddings; not supported.")
    num_layers = config.num_hidden_layers
    layer_types = getattr(config, "layer_types", None) or [None] * num_layers
    head_dim = _head_dim(config)

    def spec(rope_type: str, inv_freq: torch.Tensor) -> RopeSpec:
        if rope_type in REFUSED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"{name} uses rope_type={rope_type!r}: {REFUSED_ROPE_TYPES[rope_type]}. Supported rope types: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)}."
            )
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"{name} uses rope_type={rope_type!r}, which hf_kvpacket has not proven exact. Supported rope types: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)}."
            )
        rotary_dim = 2 * inv_freq.numel()
        if rotary_dim > head_dim:
            raise UnsupportedModelError(f"{name}: rotary dimension {rotary_dim} exceeds head_dim {head_dim}.")
        return RopeSpec(rope_type, inv_freq.detach().to("cpu", torch.float64), rotary_dim, head_dim)

    rope_type = getattr(rotary, "rope_type", "default")
    if isinstance(rope_type, dict):  # per-layer-type frequencies (Gemma-3 style)
        per_type = {t: spec(rope_type[t], getattr(rotary, f"{t}_inv_freq")) for t in rope_type}
        missing = {t for t in layer_types if t not in per_type}
        if missing:
            raise UnsupportedModelError(f"{name}: no rotary frequencies for layer types {sorted(missing)}.")
        return [per_type[t] for t in layer_types]
    if not hasattr(rotary, "inv_freq"):
        raise UnsupportedModelError(f"{name}: rotary embedding {type(rotary).__name__} exposes no `inv_freq`.")
    s = spec(rope_type, rotary.inv_freq)
    return [s] * num_layers


def rotation_tables(
    deltas: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype, device: torch.device | str, full: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of `deltas[..., None] * inv_freq` computed in float64, returned in `dtype` on `device`.

    `deltas` has any shape `S`; the tables have shape `S + (rotary_dim // 2,)`, or `S + (rotary_dim,)` with
    `full=True` (both halves, `cat(t, t)`: the layout transformers itself uses, consumed by `rotate_keys_into`).
    The angles are computed once, in float64, then cast straight to `dtype` (no intermediate dtype).
    """
    angles = deltas.to("cpu", torch.float64).unsqueeze(-1) * inv_freq
    if full:
        angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def rotate_keys_(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `keys` of shape `(batch, num_kv_heads, seq_len, head_dim)` in place (rotate-half convention).

    `cos`/`sin` have shape `(seq_len, rotary_dim // 2)` or `(batch, 1, seq_len, rotary_dim // 2)`; dimensions past
    `rotary_dim` (partial rotary) are left untouched. One temporary of half the rotated width (the first half's
    original values) is unavoidable in place; `rotate_keys_into` writes into fresh memory without any temporary.
    """
    half = cos.shape[-1]
    x1 = keys[..., :half]
    x2 = keys[..., half : 2 * half]
    x1_orig = x1.clone()
    x1.mul_(cos).addcmul_(x2, sin, value=-1)
    x2.mul_(cos).addcmul_(x1_orig, sin)
    return keys


def rotate_keys_into(out: torch.Tensor, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     sin_hi: torch.Tensor | None = None) -> torch.Tensor:
    """Write `keys` rotated by `cos`/`sin` into `out` (same shape; a view into a larger buffer is fine).

    `cos`/`sin` are *full-width* tables (`rotation_tables(..., full=True)`: last dimension `rotary_dim`, both halves
    equal) broadcastable to `keys[..., :rotary_dim]`, e.g. shape `(rotary_dim,)` for one packet moved by one delta.
    With `sin_hi` given, `sin` and `sin_hi` are the two halves of the sin table, split once by the caller (composition
    runs this per packet per layer, where the per-call views add up). Three passes, no temporaries, no dtype
    conversion: `out = keys * cos`, then each half adds the other half times `sin` (`-x2 sin` to the first, `+x1 sin`
    to the second). The result is bit-identical to `rotate_keys_` on a copy. Dimensions past `rotary_dim` (partial
    rotary) are copied unchanged. This is the rotation kernel of composition (`compose.py`).
    """
    rot = cos.shape[-1]
    half = rot // 2
    sin_lo, sin_hi = (sin[..., :half], sin[..., half:]) if sin_hi is None else (sin, sin_hi)
    if rot == keys.shape[-1]:
        torch.mul(keys, cos, out=out)
    else:
        torch.mul(keys[..., :rot], cos, out=out[..., :rot])
        out[..., rot:].copy_(keys[..., rot:])
    out[..., :half].addcmul_(keys[..., half:rot], sin_lo, value=-1)
    out[..., half:rot].addcmul_(keys[..., :half], sin_hi)
    return out


class Rerotator:
    """Per-model re-rotation: RoPE frequencies per layer, cos/sin tables per (layer type, device), the gate result.

    Obtain it with `get_rerotator(model)`, which runs the correctness gate once per model object.
    """

    def __init__(self, model: nn.Module):
        self.specs = read_rope_specs(model)
        self.max_position_embeddings = getattr(_text_config(model), "max_position_embeddings", None)
        self.gate_error: dict[int, float] = {}

    def rotate_(self, keys: torch.Tensor, deltas: torch.Tensor, layer_idx: int, cache: dict | None = None) -> None:
        """Rotate keys of layer `layer_idx` in place by per-slot `deltas` (`(seq_len,)` or `(batch, seq_len)`).

        `cache` (a dict) memoises the tables across layers that share frequencies, dtype and device.
        """
        spec = self.specs[layer_idx]
        key = (id(spec.inv_freq), keys.dtype, keys.device)
        tables = cache.get(key) if cache is not None else None
        if tables is None:
            cos, sin = rotation_tables(deltas, spec.inv_freq, keys.dtype, keys.device)
            if cos.dim() == 3:  # (batch, seq_len, half) -> broadcast over heads
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            tables = (cos, sin)
            if cache is not None:
                cache[key] = tables
        rotate_keys_(keys, *tables)

    @torch.no_grad()
    def run_gate(self, model: nn.Module, length: int = 8, shift: int | None = None) -> None:
        """Prove re-rotation exact on this model, or raise `RerotationGateError` naming the layer and error."""
        from transformers import DynamicCache

        config = _text_config(model)
        max_pos = self.max_position_embeddings or 4096
        shift = shift if shift is not None else max(1, min(1024, max_pos - length - 1))
        gen = torch.Generator().manual_seed(1234)
        device = model.get_input_embeddings().weight.device
        ids = torch.randint(0, config.vocab_size, (1, length), generator=gen).to(device)
        was_training = model.training
        model.eval()
        try:
            runs = []
            for offset in (0, shift):
                pos = torch.arange(offset, offset + length, device=device).unsqueeze(0)
                out = model(input_ids=ids, position_ids=pos, use_cache=True, **cache_kwargs(DynamicCache()))
                runs.append(output_cache(out))
        finally:
            model.train(was_training)
        dtype = model.get_input_embeddings().weight.dtype
        tol = GATE_TOLERANCE.get(dtype, 2e-3)
        deltas = torch.full((length,), shift, dtype=torch.long)
        for idx in range(len(self.specs)):
            k0 = runs[0].layers[idx].keys.clone()
            k1 = runs[1].layers[idx].keys.double()
            scale = k1.abs().max().clamp_min(1e-30)
            unrotated = ((k0.double() - k1).abs().max() / scale).item()
            self.rotate_(k0, deltas, idx)
            err = ((k0.double() - k1).abs().max() / scale).item()
            self.gate_error[idx] = err
            # Layer 0 sees identical inputs in both runs: only the rotation can differ, so the dtype tolerance applies.
            # Deeper layers also carry the two runs' rounding noise (large in bf16), so there re-rotation must at least
            # remove most of the shift's effect (a wrong convention leaves an error of the order of not rotating).
            ok = err <= tol or (idx > 0 and err <= GATE_NOISE_RATIO * unrotated)
            if not ok:
                raise RerotationGateError(
                    f"Re-rotation is not exact for {type(model).__name__} (rope_type={self.specs[idx].rope_type!r}): "
                    f"layer {idx} keys moved by {shift} positions differ from keys encoded there by {err:.2e} "
                    f"(relative; tolerance {tol:.0e} for {dtype}; without re-rotation {unrotated:.2e}). The model's "
                    "RoPE convention is not one hf_kvpacket supports; please open an issue with the model id."
                )


class _RotaryShell(nn.Module):
    """A model-shaped holder of a config and its rotary embedding (no weights), for `read_rope_specs`."""

    def __init__(self, config, rotary: nn.Module):
        super().__init__()
        self.config = config
        self.rotary_emb = rotary


def _rotary_class(config) -> type:
    import importlib

    from transformers.models.auto.configuration_auto import model_type_to_module_name

    model_type = getattr(config, "model_type", None)
    try:
        module = importlib.import_module(f"transformers.models.{model_type_to_module_name(model_type)}."
                                         f"modeling_{model_type_to_module_name(model_type)}")
    except (ImportError, TypeError, ValueError) as e:
        raise UnsupportedModelError(f"No transformers modeling code for model_type={model_type!r} ({e}); "
                                    "hf_kvpacket reads RoPE frequencies from it.") from e
    found = [c for n, c in vars(module).items() if n.endswith("RotaryEmbedding") and isinstance(c, type)
             and issubclass(c, nn.Module) and c.__module__ == module.__name__]
    if not found:
        raise UnsupportedModelError(f"model_type={model_type!r} has no rotary position embedding (absolute or "
                                    "ALiBi positions): packets can only be moved for RoPE models.")
    return found[0]


def rerotator_from_config(config) -> Rerotator:
    """The `Rerotator` of a model known only by its config (no weights loaded), e.g. inside a vLLM worker that runs
    the same checkpoint with its own model code.

    The frequencies come from the transformers rotary embedding of the config's model type, exactly as
    `get_rerotator(model)` reads them from a loaded model; the correctness gate needs the model and is not run (run
    it once where the packets are encoded: `get_rerotator(model)` does).

    >>> rot = rerotator_from_config(AutoConfig.from_pretrained(path))  # doctest: +SKIP
    """
    cfg = text_config(config)
    with torch.device("cpu"):
        rotary = _rotary_class(cfg)(config=cfg)
    return Rerotator(_RotaryShell(cfg, rotary))


_REROTATORS: "weakref.WeakKeyDictionary[nn.Module, Rerotator]" = weakref.WeakKeyDictionary()


def get_rerotator(model: nn.Module, gate: bool = True) -> Rerotator:
    """The model's `Rerotator`, built and gated on first use (cached per model object)."""
    rot = _REROTATORS.get(model)
    if rot is None:
        rot = Rerotator(model)
        if gate:
            rot.run_gate(model)
        _REROTATORS[model] = rot
    return rot
