"""What a vLLM request carries to the KV Packet connector, and the connector's settings (no vLLM import here).

A request names its packets by `PacketStore` key, preamble first, in prompt order; the connector re-reads them from
the store's folder, checks them against the fingerprints the request and the engine expect, composes them and writes
them into the request's KV blocks. The schema is versioned so that a client and a server of different releases fail
with a clear message instead of a wrong cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..errors import KVPacketError

#: Key of our entry inside vLLM's `kv_transfer_params` (requests and request outputs).
PARAMS_KEY = "kvpacket"
#: Version of the request schema below.
SCHEMA_VERSION = 1
#: `kv_connector` and `kv_connector_module_path` of vLLM's `KVTransferConfig`.
CONNECTOR_NAME = "KVPacketConnector"
CONNECTOR_MODULE = "hf_kvpacket.vllm.connector"


class VLLMConnectorError(KVPacketError):
    """A vLLM request or connector setting that the KV Packet connector cannot serve (the message says why)."""


@dataclass(frozen=True)
class PacketTransfer:
    """The packets of one request: store keys and slot counts, preamble first, in prompt order.

    `num_tokens` (their total) prompt tokens come from the packets; vLLM computes the rest (the query).
    """

    keys: tuple[str, ...]
    lengths: tuple[int, ...]
    model_fingerprint: str
    adapter_fingerprint: str  # of the document packets; "none" without an adapter
    has_preamble: bool  # keys[0] is the unwrapped preamble (adapter "none")

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def expected_adapter(self, index: int) -> str:
        """The adapter fingerprint packet `index` must have."""
        return "none" if self.has_preamble and index == 0 else self.adapter_fingerprint

    def to_params(self) -> dict[str, Any]:
        """`kv_transfer_params` for `SamplingParams(extra_args=...)` or an OpenAI request body."""
        d = asdict(self)
        d["keys"], d["lengths"] = list(self.keys), list(self.lengths)
        return {PARAMS_KEY: {"version": SCHEMA_VERSION, **d}}

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> "PacketTransfer | None":
        """The transfer named by a request's `kv_transfer_params` (`None` when it names none); raises
        `VLLMConnectorError` for a malformed entry."""
        if not params or PARAMS_KEY not in params:
            return None
        d = params[PARAMS_KEY]
        if not isinstance(d, dict):
            raise VLLMConnectorError(f"kv_transfer_params[{PARAMS_KEY!r}] must be an object, got {type(d).__name__}.")
        if d.get("version") != SCHEMA_VERSION:
            raise VLLMConnectorError(
                f"kv_transfer_params[{PARAMS_KEY!r}] has schema version {d.get('version')!r}; this connector reads "
                f"version {SCHEMA_VERSION}. Build requests with the hf-kvpacket release the server runs.")
        try:
            keys, lengths = tuple(str(k) for k in d["keys"]), tuple(int(n) for n in d["lengths"])
            t = cls(keys, lengths, str(d["model_fingerprint"]), str(d["adapter_fingerprint"]), bool(d["has_preamble"]))
        except (KeyError, TypeError, ValueError) as e:
            raise VLLMConnectorError(f"kv_transfer_params[{PARAMS_KEY!r}] is malformed ({e!r}); build it with "
                                     "hf_kvpacket.vllm.PacketPromptBuilder.") from e
        if not keys or len(keys) != len(lengths) or any(n <= 0 for n in lengths):
            raise VLLMConnectorError(f"kv_transfer_params[{PARAMS_KEY!r}]: {len(keys)} keys, lengths {list(lengths)}; "
                                     "every packet needs a key and a positive length.")
        if any(len(k) != 64 or any(c not in "0123456789abcdef" for c in k) for k in keys):
            raise VLLMConnectorError(f"kv_transfer_params[{PARAMS_KEY!r}]: store keys are 64 hex digits.")
        return t

    def cache_salt(self) -> str:
        """vLLM prefix-cache salt: blocks filled from packets are cached under their (placeholder) token ids, so
        requests with the same placeholders but other packets, adapter or model must never share them."""
        h = hashlib.sha256(f"kvpacket|{self.model_fingerprint}|{self.adapter_fingerprint}|".encode())
        for k, n in zip(self.keys, self.lengths):
            h.update(f"{k}:{n};".encode())
        return h.hexdigest()[:32]


def kv_transfer_config(store_root: str, model_fingerprint: str, *, max_memory_bytes: int = 1 << 30,
                       on_load_error: str = "recompute") -> dict[str, Any]:
    """vLLM's `kv_transfer_config` (for `LLM(kv_transfer_config=...)` or `vllm serve --kv-transfer-config`) that
    installs the KV Packet connector over a `PacketStore` folder.

    `model_fingerprint` is the fingerprint of the transformers model the packets were encoded with
    (`store.model_fingerprint`); packets of any other model are refused. `on_load_error`: `"recompute"` (vLLM
    computes the tokens of a packet that fails to load, and the request output says so) or `"fail"` (the request
    fails). `max_memory_bytes` bounds the worker's in-memory cache of recently loaded packets.

    >>> cfg = kv_transfer_config("packets/", store.model_fingerprint)          # doctest: +SKIP
    >>> llm = LLM(model=path, dtype="float32", kv_transfer_config=cfg)          # doctest: +SKIP
    """
    if on_load_error not in ("recompute", "fail"):
        raise VLLMConnectorError(f"on_load_error must be 'recompute' or 'fail', got {on_load_error!r}.")
    return {
        "kv_connector": CONNECTOR_NAME,
        "kv_connector_module_path": CONNECTOR_MODULE,
        "kv_role": "kv_consumer",
        "kv_load_failure_policy": on_load_error,
        "kv_connector_extra_config": {"store": store_root, "model_fingerprint": model_fingerprint,
                                      "max_memory_bytes": int(max_memory_bytes)},
    }


def block_slots(block_ids: Sequence[int], block_size: int, start: int, end: int) -> list[int]:
    """vLLM slot of every position in `[start, end)` of a request whose KV blocks are `block_ids`."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, end)]
