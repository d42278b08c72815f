"""`KVPacketConnector`: a vLLM v1 KV connector that writes composed packets into a request's paged KV blocks.

Scheduler side, per request naming packets (`kv_transfer_params["kvpacket"]`, built by `PacketPromptBuilder`): the
packet files' headers are checked (present, same model, the request's adapter, lengths, format, dtype) and their
slots offered to vLLM as externally computed tokens; anything wrong refuses the request's packets *before* any block is
filled, with a warning, and vLLM computes the prompt itself. Worker side, before the forward that computes the query:
the packets are read (checksummed), composed exactly as `PacketCache` composes them (`compose.CompositionPlan`: one
buffer per layer, keys re-rotated from position 0 to their offsets) and written through the attention backend's own
cache writer (`impl.do_kv_cache_update`), so no paged layout is assumed. A packet that fails to load there marks its
blocks invalid: vLLM recomputes them (`kv_load_failure_policy="recompute"`) or fails the request (`"fail"`).

What happened is reported in every request output: `RequestOutput.kv_transfer_params["kvpacket"]` =
`{"status": "loaded" | "refused" | "failed" | "prefix_cached", "reason", "packet_tokens", "loaded_tokens"}`.

Enable it with `hf_kvpacket.vllm.kv_transfer_config(...)` (or `PacketPromptBuilder.kv_transfer_config()`).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)
from vllm.logger import init_logger

from ..compose import CompositionPlan, _placements
from ..errors import KVPacketError
from ..fingerprint import FORMAT_VERSION
from ..model_structure import head_dim, text_config
from ..packet import Packet
from ..packet_file import _DTYPE_NAMES, KVLayout, load_packet, read_metadata
from ..rope import rerotator_from_config
from ..store import key_path
from .transfer import PARAMS_KEY, PacketTransfer, VLLMConnectorError, block_slots

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

logger = init_logger(__name__)


def _failed(request: Any) -> bool:
    return getattr(getattr(request, "status", None), "name", "") == "FINISHED_ERROR"


packet_path = key_path  # the store's folder layout, shared with PacketStore.path


@dataclass
class PacketLoad:
    """One request's load, scheduler -> worker: its packets, the first position to write (earlier ones are already in
    vLLM's prefix cache) and the request's KV block ids."""

    req_id: str
    transfer: PacketTransfer
    start: int
    block_ids: list[int]


@dataclass
class PacketConnectorMetadata(KVConnectorMetadata):
    loads: list[PacketLoad] = field(default_factory=list)


@dataclass
class PacketWorkerMetadata(KVConnectorWorkerMetadata):
    """Worker -> scheduler: the outcome of each load of this step (a failure on any worker wins)."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def aggregate(self, other: "PacketWorkerMetadata") -> "PacketWorkerMetadata":
        merged = dict(self.results)
        for req_id, r in other.results.items():
            if req_id not in merged or r.get("status") == "failed":
                merged[req_id] = r
        return PacketWorkerMetadata(merged)


class KVPacketConnector(KVConnectorBase_V1):
    """vLLM KV connector serving hf-kvpacket packets from a `PacketStore` folder (see the module docstring)."""

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: Any = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        missing = [k for k in ("store", "model_fingerprint") if not extra.get(k)]
        if missing:
            raise VLLMConnectorError(
                f"KVPacketConnector: kv_connector_extra_config lacks {missing}. Build the config with "
                "hf_kvpacket.vllm.kv_transfer_config(store_root, store.model_fingerprint).")
        self.root = os.fspath(extra["store"])
        self.model_fingerprint = str(extra["model_fingerprint"])
        self.max_memory_bytes = int(extra.get("max_memory_bytes", 1 << 30))
        self.block_size = vllm_config.cache_config.block_size
        model_config = vllm_config.model_config
        self.hf_config = text_config(model_config.hf_config)
        self.dtype: torch.dtype = model_config.dtype
        groups = getattr(kv_cache_config, "kv_cache_groups", None) or []
        if len(groups) > 1:
            raise VLLMConnectorError(
                f"KVPacketConnector supports models with one KV cache group; this one has {len(groups)} (hybrid "
                "attention, e.g. sliding-window layers). Serve it without the connector.")
        # scheduler side
        self._checked: dict[str, PacketTransfer | None] = {}
        self._starts: dict[str, int] = {}
        self._pending: dict[str, tuple[PacketTransfer, int]] = {}
        self._dispatched: dict[str, int] = {}  # request -> tokens its last load writes (result not yet reported)
        self._status: dict[str, dict[str, Any]] = {}
        # worker side
        self._kv_caches: dict[str, torch.Tensor] = {}
        self._rerotator = None
        self._lru: OrderedDict[str, Packet] = OrderedDict()
        self._lru_bytes = 0
        self._failed_blocks: set[int] = set()
        self._results: dict[str, dict[str, Any]] = {}

    # ================================================================== scheduler side
    def _refuse(self, request: "Request", transfer: PacketTransfer | None, reason: str) -> None:
        logger.warning("kvpacket: request %s: packets refused, vLLM computes its prompt instead: %s",
                       request.request_id, reason)
        self._status[request.request_id] = {"status": "refused", "reason": reason,
                                            "packet_tokens": transfer.num_tokens if transfer else 0, "loaded_tokens": 0}
        self._checked[request.request_id] = None

    def _check(self, request: "Request") -> PacketTransfer | None:
        """The request's packets if they can be served (checked once per request from the files' headers)."""
        if request.request_id in self._checked:
            return self._checked[request.request_id]
        try:
            t = PacketTransfer.from_params(getattr(request, "kv_transfer_params", None))
        except VLLMConnectorError as e:
            self._refuse(request, None, str(e))
            return None
        self._checked[request.request_id] = t
        if t is None:
            return None
        try:
            self._check_transfer(t, len(request.prompt_token_ids or []))
        except (VLLMConnectorError, KVPacketError) as e:
            self._refuse(request, t, str(e))
            return None
        return t

    def _check_transfer(self, t: PacketTransfer, prompt_len: int) -> None:
        if t.model_fingerprint != self.model_fingerprint:
            raise VLLMConnectorError(
                f"the request's packets are of model {t.model_fingerprint}, this server's connector serves "
                f"{self.model_fingerprint}; build requests with the transformers twin of the served model.")
        if t.num_tokens >= prompt_len:
            raise VLLMConnectorError(f"packets cover {t.num_tokens} of the prompt's {prompt_len} tokens; at least the "
                                     "last prompt token (the query) must be left for vLLM to compute.")
        want_dtype = _DTYPE_NAMES.get(self.dtype, str(self.dtype))
        for i, (key, n) in enumerate(zip(t.keys, t.lengths)):
            path = packet_path(self.root, key)
            if not os.path.exists(path):
                raise VLLMConnectorError(f"{path}: no such packet (was it written to another folder than the "
                                         f"connector's store {self.root!r}?)")
            meta, _ = read_metadata(path)
            expected = {"model_fingerprint": self.model_fingerprint, "adapter_fingerprint": t.expected_adapter(i),
                        "format_version": FORMAT_VERSION, "length": str(n), "dtype": want_dtype}
            for name, value in expected.items():
                if meta.get(name) != value:
                    what = {"adapter_fingerprint": "adapter", "model_fingerprint": "model"}.get(name, name)
                    raise VLLMConnectorError(f"{path}: packet {what} is {meta.get(name)!r}, the request expects "
                                             f"{value!r} (a packet of another {what}?)")

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        t = self._check(request)
        if t is None:
            return 0, False
        need = t.num_tokens - num_computed_tokens
        if need <= 0:  # vLLM's prefix cache already holds them (same packets: the salt follows the packet keys)
            self._status[request.request_id] = {"status": "prefix_cached", "reason": "",
                                                "packet_tokens": t.num_tokens, "loaded_tokens": 0}
            return 0, False
        self._starts[request.request_id] = num_computed_tokens
        return need, False

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int) -> None:
        if num_external_tokens > 0:
            t = self._checked[request.request_id]
            self._pending[request.request_id] = (t, self._starts.pop(request.request_id, 0))

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = PacketConnectorMetadata()
        for new_req in scheduler_output.scheduled_new_reqs:
            if new_req.req_id in self._pending:
                t, start = self._pending.pop(new_req.req_id)
                meta.loads.append(PacketLoad(new_req.req_id, t, start, list(new_req.block_ids[0])))
                self._dispatched[new_req.req_id] = t.num_tokens - start
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            # a request resumed after preemption gets all its blocks anew: fill them again
            if req_id in self._pending and req_id in cached.resumed_req_ids and cached.new_block_ids[i] is not None:
                t, start = self._pending.pop(req_id)
                meta.loads.append(PacketLoad(req_id, t, start, list(cached.new_block_ids[i][0])))
                self._dispatched[req_id] = t.num_tokens - start
        for req_id in list(self._pending):  # allocated but not scheduled this step: keep for the next one
            logger.debug("kvpacket: request %s allocated but not scheduled yet", req_id)
        return meta

    def update_connector_output(self, connector_output: Any) -> None:
        worker_meta = getattr(connector_output, "kv_connector_worker_meta", None)
        if isinstance(worker_meta, PacketWorkerMetadata):
            for req_id, result in worker_meta.results.items():
                if req_id in self._checked:  # results of requests already finished are dropped
                    self._status[req_id] = result
                    self._dispatched.pop(req_id, None)

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        req_id = request.request_id
        t = self._checked.pop(req_id, None)
        self._starts.pop(req_id, None)
        self._pending.pop(req_id, None)
        status = self._status.pop(req_id, None)
        dispatched = self._dispatched.pop(req_id, None)
        if status is None and t is None:
            return False, None
        if status is None and dispatched is not None and not _failed(request):
            # Finished in the step its load ran (e.g. max_tokens=1), whose worker result vLLM hands over after
            # finishing requests. A failed load would have invalidated its blocks, which vLLM handles before
            # finishing anything (recompute: the request runs again; "fail": it ends with an error status).
            status = {"status": "loaded", "reason": "", "packet_tokens": t.num_tokens, "loaded_tokens": dispatched}
        elif status is None and dispatched is not None:
            status = {"status": "failed", "reason": "loading the packets failed (see the worker log)",
                      "packet_tokens": t.num_tokens, "loaded_tokens": 0}
        elif status is None:  # finished (e.g. aborted) before its load ran
            status = {"status": "not_loaded", "reason": "the request finished before its packets were loaded",
                      "packet_tokens": t.num_tokens, "loaded_tokens": 0}
        return False, {PARAMS_KEY: status}

    # ================================================================== worker side
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._kv_caches = dict(kv_caches)

    def _layout(self) -> KVLayout:
        cfg = self.hf_config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        return KVLayout(cfg.num_hidden_layers, heads, head_dim(cfg), self.dtype)

    def _packet(self, key: str, adapter_fp: str, length: int) -> Packet:
        """A packet from the worker's LRU, or read and fully verified (checksum, fingerprints, layout)."""
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        expect = {"model_fingerprint": self.model_fingerprint, "adapter_fingerprint": adapter_fp,
                  "format_version": FORMAT_VERSION}
        p = load_packet(packet_path(self.root, key), "cpu", expect, layout=self._layout())
        if p.length != length:
            raise VLLMConnectorError(f"{packet_path(self.root, key)}: {p.length} slots, the request says {length}.")
        if p.nbytes <= self.max_memory_bytes:
            self._lru[key] = p
            self._lru_bytes += p.nbytes
            while self._lru_bytes > self.max_memory_bytes:
                _, old = self._lru.popitem(last=False)
                self._lru_bytes -= old.nbytes
        return p

    def _attention_layers(self, forward_context: "ForwardContext") -> list[tuple[int, Any, torch.Tensor]]:
        from vllm.model_executor.models.utils import extract_layer_index

        layers = []
        for name, kv_cache in self._kv_caches.items():
            layer = forward_context.no_compile_layers.get(name)
            if layer is None or not hasattr(layer, "impl"):
                continue
            layers.append((extract_layer_index(name), layer, kv_cache))
        if len(layers) != self.hf_config.num_hidden_layers:
            raise VLLMConnectorError(f"found {len(layers)} attention layers with a KV cache, the model config has "
                                     f"{self.hf_config.num_hidden_layers}")
        return sorted(layers, key=lambda x: x[0])

    @staticmethod
    def _head_slice(total: int, local: int) -> slice:
        """This tensor-parallel rank's KV heads of a packet holding all `total` (replicated when total < ranks)."""
        from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

        rank, world = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        per = max(1, total // world)
        if per != local:
            raise VLLMConnectorError(f"the layer holds {local} KV heads on this rank; packets hold {total} for "
                                     f"{world} tensor-parallel ranks ({per} each)")
        first = rank * per if total >= world else rank * total // world
        return slice(first, first + local)

    def _load(self, load: PacketLoad, layers: list) -> int:
        t = load.transfer
        packets = [self._packet(k, t.expected_adapter(i), n) for i, (k, n) in enumerate(zip(t.keys, t.lengths))]
        if self._rerotator is None:
            self._rerotator = rerotator_from_config(self.hf_config)
        width = t.num_tokens
        plan = CompositionPlan(self._rerotator, _placements([packets], width, [width]), 1, width, [0])
        start = load.start
        first_device = layers[0][2].device
        slots = torch.tensor(block_slots(load.block_ids, self.block_size, start, width), dtype=torch.int64,
                             device=first_device)
        heads = None
        for idx, layer, kv_cache in layers:
            keys, values = plan.layer(idx, torch.device("cpu"))
            if heads is None:
                heads = self._head_slice(keys.shape[1], getattr(layer, "num_kv_heads", keys.shape[1]))
            # (1, kv_heads, slots, head_dim) -> (tokens, kv_heads, head_dim), this rank's heads, positions >= start
            k = keys[0, heads, start:].transpose(0, 1).contiguous().to(kv_cache.device)
            v = values[0, heads, start:].transpose(0, 1).contiguous().to(kv_cache.device)
            layer.impl.do_kv_cache_update(layer, k, v, kv_cache, slots if slots.device == kv_cache.device
                                          else slots.to(kv_cache.device))
        return width - start

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, PacketConnectorMetadata) or not meta.loads:
            return
        layers = self._attention_layers(forward_context)
        for load in meta.loads:
            t = load.transfer
            try:
                n = self._load(load, layers)
                self._results[load.req_id] = {"status": "loaded", "reason": "", "packet_tokens": t.num_tokens,
                                              "loaded_tokens": n}
            except (KVPacketError, OSError, RuntimeError, ValueError) as e:
                # blocks holding positions [start, num_tokens) are invalid: vLLM recomputes (or fails) them
                first, last = load.start // self.block_size, math.ceil(t.num_tokens / self.block_size)
                self._failed_blocks.update(load.block_ids[first:last])
                logger.warning("kvpacket: request %s: loading its packets failed, vLLM recomputes their tokens: %s",
                               load.req_id, e)
                self._results[load.req_id] = {"status": "failed", "reason": str(e), "packet_tokens": t.num_tokens,
                                              "loaded_tokens": 0}

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # start_load_kv writes every layer before the forward

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # packets are made by hf-kvpacket (PacketStore), never saved from vLLM

    def wait_for_save(self) -> None:
        return

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed, self._failed_blocks = self._failed_blocks, set()
        return failed

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        if not self._results:
            return None
        results, self._results = self._results, {}
        return PacketWorkerMetadata(results)


__all__ = ["KVPacketConnector", "PacketConnectorMetadata", "PacketWorkerMetadata", "PacketLoad", "packet_path"]
