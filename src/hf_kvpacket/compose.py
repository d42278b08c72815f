"""Composition: preamble + packets laid at consecutive offsets in preallocated cache buffers, keys re-rotated.

Each layer is composed in one pass over the packets (`CompositionPlan.layer`), then put into the cache layer without a
second copy (`fill_layer`); full-attention layers become `ComposedLayer`s, which keep free slots behind the composed
states so the query prefill and decoding append in place. `compose_rows` / `append_packets` are what `PacketCache`
runs; the same code serves every caller (generate, evaluation, benchmarks, serving).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from .errors import KVPacketError
from .packet import Packet
from .rope import decoder_layers, rotate_keys_into, rotation_tables


def layer_devices(model: nn.Module) -> list[torch.device]:
    """The device of every decoder layer (packets go where their layer runs under a `device_map`)."""
    devices = []
    for layer in decoder_layers(model):
        p = next(layer.parameters(), None)
        devices.append(p.device if p is not None else model.get_input_embeddings().weight.device)
    return devices


#: Free slots reserved behind the composed states of every full-attention layer: the query prefill and the first
#: decoding steps append there in place instead of concatenating (a `DynamicLayer` copies the whole layer on every
#: append). Beyond it the layer grows by `max(RESERVE_SLOTS, length // 8)` slots at a time.
RESERVE_SLOTS = 64


class ComposedLayer(DynamicLayer):
    """A full-attention cache layer whose states are views of larger buffers, so appends write in place.

    `keys`/`values` are views of the first `length` slots of `key_buf`/`value_buf`; an append (the query prefill, a
    decoding step) writes the new states behind them and widens the views, so neither copies the cache (a plain
    `DynamicLayer` concatenates, i.e. copies the whole layer, on every call). The buffers grow by a chunk when full.
    If anything else replaced or cropped the layer's tensors (beam reordering, batch repetition, crop, offloading), the
    layer behaves as a plain `DynamicLayer` from then on: earlier views are never written over.

    Made from a composed `DynamicLayer` by `ComposedLayer.adopt` (the layer keeps everything the cache set on it).
    """

    key_buf: torch.Tensor
    value_buf: torch.Tensor
    length: int

    @classmethod
    def adopt(cls, layer: DynamicLayer, key_buf: torch.Tensor, value_buf: torch.Tensor, length: int) -> "ComposedLayer":
        layer.__class__ = cls  # keeps the attributes of whichever transformers version built the layer
        layer.key_buf, layer.value_buf, layer.length, layer.owns_views = key_buf, value_buf, length, True
        layer.keys, layer.values = key_buf[:, :, :length], value_buf[:, :, :length]
        return layer  # type: ignore[return-value]

    def _still_ours(self, key_states: torch.Tensor) -> bool:
        k, v = self.keys, self.values
        return (
            self.owns_views and k is not None and v is not None
            and k.data_ptr() == self.key_buf.data_ptr() and v.data_ptr() == self.value_buf.data_ptr()
            and k.shape[-2] == self.length and v.shape[-2] == self.length
            and k.shape[0] == self.key_buf.shape[0] and key_states.shape[0] == k.shape[0]
            and key_states.dtype == k.dtype and key_states.device == k.device
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self._still_ours(key_states):
            self.owns_views = False
            return super().update(key_states, value_states, *args, **kwargs)
        n, new = self.length, key_states.shape[-2]
        if n + new > self.key_buf.shape[-2]:
            grown = n + new + max(RESERVE_SLOTS, n // 8)
            for name in ("key_buf", "value_buf"):
                old = getattr(self, name)
                buf = old.new_empty(old.shape[:2] + (grown,) + old.shape[3:])
                buf[:, :, :n].copy_(old[:, :, :n])
                setattr(self, name, buf)
        self.key_buf[:, :, n : n + new].copy_(key_states)
        self.value_buf[:, :, n : n + new].copy_(value_states)
        self.length = n + new
        self.keys = self.key_buf[:, :, : self.length]
        self.values = self.value_buf[:, :, : self.length]
        return self.keys, self.values


def fill_layer(layer: Any, keys: torch.Tensor, values: torch.Tensor, length: int | None = None) -> None:
    """Put composed states into an empty cache layer without a second copy (what `update` would store).

    Sliding-window layers get the last `sliding_window - 1` slots (the composition computes only those). For a full
    layer, `keys`/`values` may be longer than `length` (free slots reserved behind the composed states): the layer
    becomes a `ComposedLayer` that appends in place.
    """
    if isinstance(layer, DynamicSlidingWindowLayer):
        length = keys.shape[-2] if length is None else length
        layer.lazy_initialization(keys, values)
        layer.cumulative_length = length
        layer.keys = keys[:, :, -layer.sliding_window + 1 :, :]
        layer.values = values[:, :, -layer.sliding_window + 1 :, :]
    elif type(layer) is DynamicLayer:
        layer.lazy_initialization(keys, values)
        if length is None or length == keys.shape[-2]:
            layer.keys, layer.values = keys, values
        else:
            ComposedLayer.adopt(layer, keys, values, length)
    else:
        raise KVPacketError(
            f"PacketCache cannot fill cache layers of type {type(layer).__name__}; only dynamic full and "
            "sliding-window layers are supported."
        )


def layer_shape(layer: Any) -> tuple[int | None, int]:
    """(slots to compose counted from the end, free slots to reserve) for a cache layer."""
    if isinstance(layer, DynamicSlidingWindowLayer):
        return layer.sliding_window - 1, 0
    return None, RESERVE_SLOTS


class CompositionPlan:
    """Where every packet goes, and the rotation tables, for composing one cache layer by layer.

    Each layer is composed in ONE pass over the packets into a preallocated `(batch, kv_heads, slots, head_dim)`
    buffer pair: no concatenation followed by a copy, no clone of the rotated half, no dtype round trip. Peak memory is
    the final cache plus the (tiny) cos/sin tables. A sliding-window layer only gets (and only computes) the slots its
    window keeps; a full layer gets `RESERVE_SLOTS` free slots behind the composed ones.

    * CPU destination and sources (memory-bound, per-op overhead is small): every packet's keys are rotated straight
      from the packet into their slots (`rope.rotate_keys_into`: 3 passes that stay in cache, one cos/sin vector per packet
      since a packet moves by one delta), values are copied (one `torch.cat(..., out=)` per layer for a single row).
    * Accelerators (kernel launches dominate, bandwidth is plentiful): packets are copied into the buffer (non-blocking
      from pinned host memory; one `cat` kernel when they already live on the device), then the whole layer is rotated
      in place once with per-slot tables computed once per call.
    """

    #: Write rotated keys straight from the packets on CPU (False: always stage, then rotate in place; for tests).
    direct_on_cpu = True

    def __init__(self, rerotator, placements: list, batch: int, width: int, pads: list[int]):
        self.rerotator = rerotator
        self.placements = placements  # (row, first slot, rotation delta, packet)
        self.batch, self.width, self.pads = batch, width, pads
        ref = placements[0][3].keys[0]
        self.num_layers = placements[0][3].num_layers
        self.kv_heads, self.head_dim, self.dtype = ref.shape[0], ref.shape[-1], ref.dtype
        self.offsets = torch.tensor([offset for _, _, offset, _ in placements], dtype=torch.long)
        self._tables: dict = {}

    def _packet_tables(self, layer_idx: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
        """Per placement: full-width cos `(rotary_dim,)` and the two halves of sin, for `rope.rotate_keys_into`; computed once
        per call in float64 and shared by the layers with equal frequencies."""
        spec = self.rerotator.specs[layer_idx]
        key = ("packets", id(spec.inv_freq), device)
        if key not in self._tables:
            cos, sin = rotation_tables(self.offsets, spec.inv_freq, self.dtype, device, full=True)
            half = cos.shape[-1] // 2
            self._tables[key] = [(c, sn[:half], sn[half:]) for c, sn in zip(cos, sin)]
        return self._tables[key]

    def _slot_deltas(self, start: int) -> torch.Tensor:
        key = ("slot_deltas", start)
        if key not in self._tables:
            deltas = torch.zeros(self.batch, self.width, dtype=torch.long)
            for (r, slot, offset, p) in self.placements:
                deltas[r, slot : slot + p.length] = offset
            deltas = deltas[:, start:]
            self._tables[key] = deltas[0] if self.batch == 1 else deltas
        return self._tables[key]

    def _parts(self, start: int) -> list[tuple]:
        """`(placement, row, first destination slot, first source slot, slots, delta, packet)` of what is kept when
        the layer keeps the composed slots from `start` on (0 for full layers)."""
        key = ("parts", start)
        if key not in self._tables:
            parts = []
            for j, (r, slot, offset, p) in enumerate(self.placements):
                a = max(0, start - slot)
                if a < p.length:
                    parts.append((j, r, slot + a - start, a, p.length - a, offset, p))
            self._tables[key] = parts
        return self._tables[key]

    def layer(self, layer_idx: int, device: torch.device, keep: int | None = None, reserve: int = 0):
        """Keys and values of one layer: the last `keep` composed slots (default all), then `reserve` free slots."""
        keep = self.width if keep is None or keep <= 0 else min(keep, self.width)
        start = self.width - keep
        shape = (self.batch, self.kv_heads, keep + reserve, self.head_dim)
        keys = torch.empty(shape, dtype=self.dtype, device=device)
        values = torch.empty(shape, dtype=self.dtype, device=device)
        for r, pad in enumerate(self.pads):
            if pad > start:  # left padding is masked out, but must hold finite numbers (0 * NaN poisons the softmax)
                keys[r, :, : pad - start].zero_()
                values[r, :, : pad - start].zero_()
        parts = self._parts(start)
        non_blocking = device.type != "cpu"  # host-to-device from pinned memory overlaps; never async into host memory
        # one row filled from slot 0 by whole packets already on `device`: one `cat` kernel per tensor
        single = self.batch == 1 and self.pads == [0] and start == 0 and all(
            p.keys[layer_idx].device == device and p.values[layer_idx].device == device for *_, p in parts)
        direct = self.direct_on_cpu and device.type == "cpu" and all(
            p.keys[layer_idx].device.type == "cpu" for *_, p in parts)

        def src(kind: str, a: int, n: int, p: Packet) -> torch.Tensor:
            t = getattr(p, kind)[layer_idx]
            return t if a == 0 and n == t.shape[-2] else t[:, a : a + n]

        if single:
            torch.cat([p.values[layer_idx] for *_, p in parts], dim=-2, out=values[0, :, :keep])
        else:
            for (_, r, d, a, n, _, p) in parts:
                values[r, :, d : d + n].copy_(src("values", a, n, p), non_blocking=non_blocking)
        if direct:
            tables = self._packet_tables(layer_idx, device)
            for (j, r, d, a, n, offset, p) in parts:
                if offset == 0:
                    keys[r, :, d : d + n].copy_(src("keys", a, n, p))
                else:
                    rotate_keys_into(keys[r, :, d : d + n], src("keys", a, n, p), *tables[j])
            return keys, values
        if single:
            torch.cat([p.keys[layer_idx] for *_, p in parts], dim=-2, out=keys[0, :, :keep])
        else:
            for (_, r, d, a, n, _, p) in parts:
                keys[r, :, d : d + n].copy_(src("keys", a, n, p), non_blocking=non_blocking)
        # per-slot tables once per call and per kept width (memoised across layers by the rerotator)
        memo = self._tables.setdefault(("rotate", start), {})
        self.rerotator.rotate_(keys[:, :, :keep], self._slot_deltas(start), layer_idx, memo)
        return keys, values


def _placements(rows: list[list[Packet]], width: int, lengths: list[int], start: int = 0) -> list[tuple]:
    """(row, first slot, rotation delta = offset in the row, packet) of every packet; rows are left-padded to width."""
    placements = []
    for r, row in enumerate(rows):
        offset, slot = start, width - lengths[r]
        for p in row:
            placements.append((r, slot, offset, p))
            offset += p.length
            slot += p.length
    return placements


def compose_rows(layers: list[Any], model: nn.Module, rerotator, rows: list[list[Packet]]) -> list[int]:
    """Fill empty cache `layers` with every row's packets (one preallocated buffer pair per layer, written once).

    Returns the composed length of every row (rows are left-padded to the longest; the caller masks the padding).
    """
    lengths = [sum(p.length for p in row) for row in rows]
    width = max(lengths)
    if width == 0:
        raise KVPacketError("Nothing to compose: give a preamble or at least one packet.")
    plan = CompositionPlan(rerotator, _placements(rows, width, lengths), len(rows), width, [width - n for n in lengths])
    devices = layer_devices(model)
    for layer_idx in range(plan.num_layers):
        layer = layers[layer_idx]
        keep, reserve = layer_shape(layer)
        keys, values = plan.layer(layer_idx, devices[layer_idx], keep=keep, reserve=reserve)
        fill_layer(layer, keys, values, length=width)
    return lengths


def append_packets(layers: list[Any], model: nn.Module, rerotator, packets: list[Packet], start: int) -> None:
    """Append packets to a single-row cache already holding `start` positions (after a text segment)."""
    width = sum(p.length for p in packets)
    plan = CompositionPlan(rerotator, _placements([packets], width, [width], start), 1, width, [0])
    devices = layer_devices(model)
    for layer_idx in range(plan.num_layers):
        layer = layers[layer_idx]
        if layer.is_initialized and layer.get_seq_length() > 0:
            # every slot (a sliding layer counts them), appended in place into reserved slots where there are some
            keys, values = plan.layer(layer_idx, devices[layer_idx])
            layer.update(keys, values)
        else:
            keep, reserve = layer_shape(layer)
            keys, values = plan.layer(layer_idx, devices[layer_idx], keep=keep, reserve=reserve)
            fill_layer(layer, keys, values, length=plan.width)


__all__ = ["ComposedLayer", "CompositionPlan", "compose_rows", "append_packets", "fill_layer", "layer_devices",
           "RESERVE_SLOTS"]
