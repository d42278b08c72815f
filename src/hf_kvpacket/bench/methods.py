"""What the benchmark times: one table of lines, in the order of its tables and plots.

Lines that answer are methods of `hf_kvpacket.baselines` (:class:`BenchMethod`: a registry name, and where its packets
come from), run exactly as a user runs them; their labels are the registry's `display` names. The other lines are
measurements only a benchmark takes (:class:`Measurement`): the query-only lower bound, and the composition alone
against plain copies of the same bytes. The names are the keys of the results' JSON.

==================  =====================================================================================================
``full_prefill``    :class:`~hf_kvpacket.baselines.FullRecompute`: one causal prefill of preamble + documents + query.
``lower_bound``     query-only prefill over a `DynamicCache` of the composed length already in memory (a fresh copy made
                    before the clock starts): the physical limit of any cache-reuse method.
``kv_packet``       :class:`~hf_kvpacket.baselines.KVPacket`, packets from a memory-only `PacketStore` (resident).
``kv_packet_disk``  the same method over an on-disk `PacketStore` that keeps nothing in memory, page cache dropped
                    before every timed call (a cold read).
``kv_packet_host``  (accelerators only) the same method, packets in pinned host memory composed onto the device.
``cacheblend``      :class:`~hf_kvpacket.baselines.CacheBlend` (15% of document tokens recomputed).
``epic``            :class:`~hf_kvpacket.baselines.EPIC` (the first 16 tokens of every document recomputed).
==================  =====================================================================================================

Composition-only measurements (results' ``composition``): ``compose`` (`PacketCache.from_packets` of resident
packets), ``plain_copy`` (one `clone` of the final cache's bytes: what any new cache costs) and ``plain_copy_warm``
(`copy_` into preallocated, already touched memory: bandwidth alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import baselines as bl
from ..adapter import PacketAdapter
from ..compat import cache_kwargs
from .workload import clone_to_dynamic

if TYPE_CHECKING:  # pragma: no cover
    from .case import Case

#: Where a line's packets come from (the dimension the KV Packet lines vary), as its label says it.
SOURCES = {"memory": "resident", "disk": "from disk", "host": "pinned host"}


@dataclass(frozen=True)
class BenchMethod:
    """A line that answers: the registry method `method`, timed from "the documents are wanted" to the first logits.

    Attributes
    ----------
    method:
        A name of `hf_kvpacket.baselines.METHODS`.
    source:
        Where the packets come from, when the benchmark varies it (one of :data:`SOURCES`): the label says so, and
        the line reports its phases (``load`` from disk, ``compose``, the query ``prefill``) beside TTFT. `None`:
        the method's context's own store (in memory).
    """

    method: str
    source: str | None = None

    @property
    def label(self) -> str:
        display = bl.METHODS[self.method].display
        return f"{display} ({SOURCES[self.source]})" if self.source else display

    def make(self, adapter: PacketAdapter | None) -> bl.BaselineMethod:
        """The method object; KV Packet without an adapter (`--adapter-tokens 0 0`) runs its plain-packet twin."""
        if self.method == "kv_packet" and adapter is None:
            return bl.NoRecompute()
        return bl.make_method(self.method)


@dataclass(frozen=True)
class Measurement:
    """A line only a benchmark measures: `run(case)` returns `{"ttft": seconds, ...}`; `flops(case)` its FLOPs."""

    label: str
    run: Callable[["Case"], dict[str, float]]
    flops: Callable[["Case"], float] | None = None


# ---------------------------------------------------------------------------------------------------------- bench-only


def lower_bound(case: "Case") -> dict[str, float]:
    """Query-only prefill over a copy of the resident cache (the copy is made before the clock starts)."""
    resident = clone_to_dynamic(case.resident, case.config)
    t0 = case.clock.mark()
    out = case.model(**case.query_kwargs, logits_to_keep=1, **cache_kwargs(resident))
    out.logits[:, -1].argmax(-1)
    t1 = case.clock.mark()
    return {"ttft": t1 - t0, **case.device_time(t0, t1)}


def lower_bound_flops(case: "Case") -> float:
    return case.flops.prefill(len(case.w.query), past=case.w.composed_slots)


def compose(case: "Case") -> dict[str, float]:
    """`PacketCache.from_packets` of the resident packets, nothing else."""
    t0 = case.clock.mark()
    cache = case.compose()
    t1 = case.clock.mark()
    del cache
    return {"ttft": t1 - t0}


def plain_copy(case: "Case") -> dict[str, float]:
    """One `clone` of every layer of the final cache (fresh memory)."""
    t0 = case.clock.mark()
    copies = [(layer.keys.clone(), layer.values.clone()) for layer in case.resident.layers]
    t1 = case.clock.mark()
    del copies
    return {"ttft": t1 - t0}


def plain_copy_warm(case: "Case") -> dict[str, float]:
    """`copy_` of every layer of the final cache into preallocated, already touched memory."""
    t0 = case.clock.mark()
    for (dk, dv), layer in zip(case.warm_copies, case.resident.layers):
        dk.copy_(layer.keys)
        dv.copy_(layer.values)
    t1 = case.clock.mark()
    return {"ttft": t1 - t0}


# ---------------------------------------------------------------------------------------------------------- the table

#: Every line of a case's ``methods``, in table order.
LINES: dict[str, BenchMethod | Measurement] = {
    "full_prefill": BenchMethod("full_recompute"),
    "lower_bound": Measurement("query-only lower bound", lower_bound, lower_bound_flops),
    "kv_packet": BenchMethod("kv_packet", "memory"),
    "kv_packet_disk": BenchMethod("kv_packet", "disk"),
    "kv_packet_host": BenchMethod("kv_packet", "host"),
    **{name: BenchMethod(name) for name in bl.RECOMPUTE_METHODS},
}
#: Composition-only measurements taken in the same repetitions (a case's ``composition``).
COMPOSITION_LINES: dict[str, Measurement] = {
    "plain_copy": Measurement("plain copy (fresh memory)", plain_copy),
    "plain_copy_warm": Measurement("plain copy (warm memory)", plain_copy_warm),
    "compose": Measurement("composition", compose),
}

#: Line names in table order. `kv_packet_host` only runs on accelerators.
METHODS: tuple[str, ...] = tuple(LINES)
COMPOSITION: tuple[str, ...] = tuple(COMPOSITION_LINES)
#: How tables and plots name each line (the registry's names for the methods that answer).
LABELS: dict[str, str] = {name: line.label for name, line in {**LINES, **COMPOSITION_LINES}.items()}


def measurement(name: str) -> Measurement:
    """The bench-only measurement `name` (`KeyError` for a line that answers)."""
    line = LINES.get(name) or COMPOSITION_LINES[name]
    if not isinstance(line, Measurement):
        raise KeyError(name)
    return line


__all__ = ["BenchMethod", "Measurement", "LINES", "COMPOSITION_LINES", "METHODS", "COMPOSITION", "LABELS", "SOURCES",
           "measurement"]
