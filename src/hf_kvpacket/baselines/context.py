"""The context every method draws from: model, tokenizer, prompt template, adapter, the packet stores, and the token
ids of one example (:class:`PromptParts`).

Packets reach a method the way they reach a user's ``generate()``: through :class:`~hf_kvpacket.PacketStore`
(one per adapter; memory-only unless a folder is given, or a store of the caller's own via
:meth:`MethodContext.use_store`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..adapter import PacketAdapter, adapter_fingerprint
from ..errors import KVPacketError
from ..packet import Packet, encode_preamble
from ..prompt import PromptTemplate
from ..rope import get_rerotator
from ..store import PacketStore
from .flops import ModelDims


# ---------------------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class PromptParts:
    """Token ids of one example: the preamble, each document (as encoded into its packet), and the query.

    Examples
    --------
    >>> parts = PromptParts(preamble=[1, 2], documents=[[5, 6, 7], [8]], query=[9, 10])
    >>> parts.context_ids, parts.num_document_tokens
    ([1, 2, 5, 6, 7, 8], 4)
    """

    preamble: tuple[int, ...]
    documents: tuple[tuple[int, ...], ...]
    query: tuple[int, ...]

    def __init__(self, preamble: Sequence[int], documents: Sequence[Sequence[int]], query: Sequence[int]):
        object.__setattr__(self, "preamble", tuple(int(t) for t in preamble))
        object.__setattr__(self, "documents", tuple(tuple(int(t) for t in d) for d in documents))
        object.__setattr__(self, "query", tuple(int(t) for t in query))
        if not self.query:
            raise KVPacketError("The query has no tokens; every method needs at least one query token to prefill.")
        if any(len(d) == 0 for d in self.documents):
            raise KVPacketError("A document has no tokens; drop empty documents before answering.")

    @property
    def context_ids(self) -> list[int]:
        """Preamble then every document, in order: what the full recompute prefills before the query."""
        return list(self.preamble) + [t for d in self.documents for t in d]

    @property
    def num_document_tokens(self) -> int:
        return sum(len(d) for d in self.documents)



# ---------------------------------------------------------------------------------------------------------- context
class MethodContext:
    """Model, tokenizer, prompt template, optional adapter and the packet stores every method draws from.

    Packets come from :class:`~hf_kvpacket.PacketStore` (one per adapter), exactly as a user's ``generate()`` gets
    them: encoded on first need (outside any timing), then served from the store's memory. Give `store_dir` to keep
    them on disk between runs (and to measure loads from disk); the default is a memory-only store.

    Parameters
    ----------
    model, tokenizer:
        A transformers causal LM (eval mode) and its tokenizer.
    template:
        Prompt layout; default `PromptTemplate.from_tokenizer(tokenizer, system_prompt)`.
    adapter:
        The trained header/trailer adapter used by :class:`~hf_kvpacket.baselines.KVPacket` (optional).
    system_prompt:
        Only used when `template` is not given.
    store_dir:
        Folder of the packet stores (one store per adapter shares it: keys include the adapter); `None`: memory only.
    max_memory_bytes:
        In-memory budget of each store (least recently used packets are dropped first).
    max_resident_packets:
        Deprecated (the stores bound memory in bytes); accepted and ignored.
    timed_loads:
        Let the timed lookup load packets that are not in memory, from the store's files (the benchmark's "from
        disk" line: a store that keeps nothing in memory, a cold page cache). Encoding in the timed path stays an
        error. Default `False`: every packet must be resident before the clock starts.
    clock:
        Optional clock (a callable returning seconds, e.g. one that synchronises the device first); when given,
        :meth:`mark` records the time at which each phase of a prefill ends in ``ctx.marks`` (phase -> time, cleared
        by the caller; ``"load"``: the packets are in hand). The benchmark uses it to split load from composition; `None` records nothing.

    Examples
    --------
    >>> ctx = MethodContext(model, tok, adapter=PacketAdapter.from_pretrained("adapters/smollm2-135m-instruct-mixture"))
    >>> parts = ctx.parts({"documents": ["..."], "question": "..."})
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        template: PromptTemplate | None = None,
        adapter: PacketAdapter | None = None,
        system_prompt: str | None = None,
        max_resident_packets: int | None = None,
        store_dir: str | None = None,
        max_memory_bytes: int = 2 * 2**30,
        timed_loads: bool = False,
        clock: Callable[[], float] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template or PromptTemplate.from_tokenizer(tokenizer, system_prompt=system_prompt)
        self.adapter = adapter
        if adapter is not None:
            adapter.check_model(model)
        self.store_dir, self.max_memory_bytes = store_dir, max_memory_bytes
        self.dims = ModelDims.from_model(model)
        self.device = model.get_input_embeddings().weight.device
        get_rerotator(model)  # the one-time exactness gate runs here, never inside a timed prefill
        self.timed_loads, self.clock = timed_loads, clock
        self.marks: dict[str, float] = {}
        self._stores: dict[str, PacketStore] = {}
        self._preambles: dict[tuple[int, ...], Packet] = {}

    def store_for(self, adapter: PacketAdapter | None) -> PacketStore:
        """The packet store of `adapter` (`None`: plain packets), created on first use."""
        fp = adapter_fingerprint(adapter)
        if fp not in self._stores:
            self._stores[fp] = PacketStore(self.store_dir, self.model, self.tokenizer, adapter,
                                           max_memory_bytes=self.max_memory_bytes)
        return self._stores[fp]

    def use_store(self, store: PacketStore) -> PacketStore:
        """Serve the packets of `store.adapter` from `store` (e.g. one on disk, or one holding packets on another
        device) instead of the store :meth:`store_for` would create. Returns `store`."""
        if store.model is not self.model:
            raise KVPacketError("use_store: the store encodes with another model than this context's.")
        self._stores[store.adapter_fingerprint] = store
        return store

    def mark(self, phase: str) -> None:
        """Record that `phase` of the running prefill ended now (only with a `clock`; into ``ctx.marks``)."""
        if self.clock is not None:
            self.marks[phase] = self.clock()

    # ------------------------------------------------------------------ prompt
    def parts(self, example: PromptParts | Mapping[str, Any]) -> PromptParts:
        """Token ids of an example: a :class:`PromptParts`, or a mapping with `documents` and `question`."""
        if isinstance(example, PromptParts):
            return example
        try:
            documents, question = example["documents"], example["question"]
        except (KeyError, TypeError):
            raise KVPacketError(
                f"An example must be PromptParts or a mapping with 'documents' and 'question', got {type(example)}."
            ) from None
        ids = self.template.token_ids(self.tokenizer, list(documents), question)
        return PromptParts(ids["preamble"], ids["documents"], ids["query"])

    # ------------------------------------------------------------------ packets (through the store)
    def ensure_packets(self, documents: Sequence[Sequence[int]], adapter: PacketAdapter | None) -> None:
        """Make the documents' packets resident in their store (untimed: this is the offline encode-once step)."""
        self.store_for(adapter).get_many([list(d) for d in documents], progress=False)

    def lookup_packets(self, documents: Sequence[Sequence[int]], adapter: PacketAdapter | None) -> list[Packet]:
        """The documents' packets from their store's memory (call :meth:`ensure_packets` first; a packet that is not
        resident is an error here, so no timed prefill ever encodes or reads a file unnoticed). With
        `timed_loads=True` the store may read its files here, but a document it would have to encode is an error."""
        store = self.store_for(adapter)
        docs = [list(d) for d in documents]
        if self.timed_loads:
            packets = store.get_many(docs, progress=False)
            if store.last_call.misses or store.last_call.encode_seconds:
                raise KVPacketError("A timed lookup encoded a document: its packet was not in the store; call "
                                    "ctx.ensure_packets(...) before the timed prefill.")
            return packets
        if not store.in_memory(docs):
            raise KVPacketError("A packet is not resident: call ctx.ensure_packets(...) before the timed prefill "
                                "(or raise max_memory_bytes).")
        return store.get_many(docs, progress=False)

    def preamble_packet(self, preamble: Sequence[int]) -> Packet | None:
        """The preamble encoded once at position 0 (no adapter), or `None` for an empty preamble."""
        key = tuple(preamble)
        if not key:
            return None
        if key not in self._preambles:
            self._preambles[key] = encode_preamble(self.model, list(key))
        return self._preambles[key]

    def clear(self, preambles: bool = True) -> None:
        """Drop every resident packet (e.g. between examples), and the encoded preambles unless `preambles=False`."""
        for store in self._stores.values():
            store.clear_memory()
        if preambles:
            self._preambles.clear()

    @property
    def num_resident_packets(self) -> int:
        return sum(store.num_in_memory for store in self._stores.values())


__all__ = ["PromptParts", "MethodContext"]
