"""Methods compared in the evaluation, one file each (kvpress style): a `@dataclass` of knobs on a shared base.

=================  ========================================================================================
name               what happens to the documents at query time
=================  ========================================================================================
``full_recompute`` joint prefill of preamble + documents + query (quality reference, most expensive)
``no_recompute``   plain packets stitched behind the preamble (no adapter), only the query prefilled
``kv_packet``      packets wrapped by the trained header/trailer adapter, stitched, only the query prefilled
``cacheblend``     plain packets, then the 15% document tokens with the largest KV deviation recomputed
``epic``           plain packets, then the first 16 tokens of every packet recomputed
``query_only``     no documents at all (closed-book floor, TTFT lower bound)
=================  ========================================================================================

Every method answers with `method.answer(ctx, example, max_new_tokens) -> MethodResult(answer_text, ttft_s, flops,
recomputed_tokens, ...)`, where `ctx` is a :class:`MethodContext` (model, tokenizer, prompt template, adapter and the
resident packets).

Examples
--------
>>> from hf_kvpacket.baselines import MethodContext, make_method
>>> ctx = MethodContext(model, tok, adapter=adapter)
>>> result = make_method("cacheblend:recompute_ratio=0.3").answer(ctx, row, max_new_tokens=32)
>>> result.answer_text, result.ttft_s, result.flops, result.recomputed_tokens
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .base import (
    BaselineError,
    BaselineMethod,
    FirstTokenTimer,
    MethodContext,
    MethodResult,
    Prefill,
    PromptParts,
    ScatterCache,
    SelectiveRecompute,
    StitchedPackets,
    probe_deviation,
    run_selected,
    slot_mask,
)
from .cacheblend import CacheBlend
from .epic import EPIC
from .flops import FlopCounter, ModelDims
from .full_recompute import FullRecompute
from .kv_packet import KVPacket
from .no_recompute import NoRecompute
from .query_only import QueryOnly

#: Registry name -> method class.
METHODS: dict[str, type[BaselineMethod]] = {
    cls.name: cls for cls in (FullRecompute, NoRecompute, KVPacket, CacheBlend, EPIC, QueryOnly)
}
#: The order of tables and plots.
DEFAULT_METHODS: tuple[str, ...] = tuple(METHODS)
#: The methods that recompute part of the documents (the benchmark times them beside KV Packet).
RECOMPUTE_METHODS: tuple[str, ...] = tuple(n for n, cls in METHODS.items() if issubclass(cls, SelectiveRecompute))


def _coerce(value: str, like: Any) -> Any:
    if isinstance(like, bool):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise BaselineError(f"Expected a boolean, got {value!r}.")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    return value


def make_method(spec: str | BaselineMethod) -> BaselineMethod:
    """Build a method from ``"name"`` or ``"name:knob=value:knob=value"``.

    Parameters
    ----------
    spec:
        A registry name (see :data:`METHODS`), optionally followed by knobs, e.g. ``"cacheblend:recompute_ratio=0.3"``
        or ``"epic:num_tokens=32"``. A method instance is returned as is.

    Returns
    -------
    BaselineMethod

    Raises
    ------
    BaselineError
        Unknown name or knob, or a value of the wrong type.

    Examples
    --------
    >>> make_method("epic:num_tokens=32")
    EPIC(num_tokens=32)
    >>> make_method("cacheblend:recompute_ratio=0.3").label
    'cacheblend(recompute_ratio=0.3)'
    """
    if isinstance(spec, BaselineMethod):
        return spec
    name, *knobs = [s.strip() for s in spec.split(":")]
    try:
        cls = METHODS[name]
    except KeyError:
        raise BaselineError(f"Unknown method {name!r}; choose from {sorted(METHODS)}.") from None
    defaults = {f.name: f.default for f in fields(cls) if f.repr}
    kwargs: dict[str, Any] = {}
    for knob in knobs:
        key, sep, value = knob.partition("=")
        if not sep or key not in defaults:
            raise BaselineError(f"Bad knob {knob!r} for {name}; it takes {sorted(defaults) or 'no knobs'} as key=value.")
        try:
            kwargs[key] = _coerce(value, defaults[key])
        except ValueError:
            raise BaselineError(f"Knob {key} of {name} expects a {type(defaults[key]).__name__}, got {value!r}.") from None
    return cls(**kwargs)


__all__ = [
    "METHODS",
    "DEFAULT_METHODS",
    "make_method",
    "BaselineError",
    "BaselineMethod",
    "StitchedPackets",
    "SelectiveRecompute",
    "MethodContext",
    "MethodResult",
    "Prefill",
    "PromptParts",
    "FirstTokenTimer",
    "ScatterCache",
    "run_selected",
    "probe_deviation",
    "slot_mask",
    "ModelDims",
    "FlopCounter",
    "FullRecompute",
    "NoRecompute",
    "KVPacket",
    "CacheBlend",
    "EPIC",
    "QueryOnly",
]
