"""Requests for vLLM that reuse packets: documents + question -> prompt token ids, `kv_transfer_params`, cache salt.

The prompt vLLM sees has one token id per composed slot (preamble, then every packet's header | document | trailer)
followed by the query. The connector supplies the KV of every slot before the query, so vLLM never embeds the ids
there: document slots carry the document's own tokens (readable in logs) and soft-token slots a placeholder id.
If a packet cannot be loaded, vLLM computes those slots from these ids instead (the request output says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import PacketStoreError
from ..prompt import PromptTemplate
from ..store import PacketStore
from .transfer import PARAMS_KEY, PacketTransfer, VLLMConnectorError


@dataclass
class VLLMPrompt:
    """One request for vLLM: `prompt_token_ids`, the packets it names and the prefix-cache salt.

    Example
    -------
    >>> req = builder.build(documents, "Who wrote it?")
    >>> out = llm.generate(req.prompt(), req.sampling_params(max_tokens=32, temperature=0))
    >>> req.status(out[0])   # {"status": "loaded", "loaded_tokens": ..., ...}
    """

    prompt_token_ids: list[int]
    transfer: PacketTransfer
    query_token_ids: list[int] = field(default_factory=list)

    @property
    def num_packet_tokens(self) -> int:
        """Prompt tokens supplied by packets (vLLM computes the other `len(query_token_ids)`)."""
        return self.transfer.num_tokens

    @property
    def kv_transfer_params(self) -> dict[str, Any]:
        return self.transfer.to_params()

    @property
    def cache_salt(self) -> str:
        return self.transfer.cache_salt()

    def prompt(self) -> dict[str, Any]:
        """A vLLM `TokensPrompt` for `LLM.generate`."""
        return {"prompt_token_ids": list(self.prompt_token_ids), "cache_salt": self.cache_salt}

    def sampling_params(self, **kwargs: Any):
        """`vllm.SamplingParams(**kwargs)` carrying this request's packets (in `extra_args`)."""
        from vllm import SamplingParams

        extra = dict(kwargs.pop("extra_args", None) or {})
        extra["kv_transfer_params"] = self.kv_transfer_params
        return SamplingParams(extra_args=extra, **kwargs)

    def openai_body(self, model: str, **kwargs: Any) -> dict[str, Any]:
        """JSON body for `POST /v1/completions` of `vllm serve` started with the connector (see docs/serving.md)."""
        return {"model": model, "prompt": list(self.prompt_token_ids), "kv_transfer_params": self.kv_transfer_params,
                "cache_salt": self.cache_salt, **kwargs}

    @staticmethod
    def status(output: Any) -> dict[str, Any]:
        """What the connector did for a finished request: `status` ("loaded", "refused", "failed",
        "prefix_cached"), `reason`, `packet_tokens`, `loaded_tokens`. Takes a vLLM `RequestOutput` or the JSON of
        an OpenAI completion response."""
        params = output.get("kv_transfer_params") if isinstance(output, dict) else getattr(output, "kv_transfer_params", None)
        return dict((params or {}).get(PARAMS_KEY) or {"status": "none"})


class PacketPromptBuilder:
    """Builds vLLM requests whose documents come from a `PacketStore` on disk (the folder the connector reads).

    Missing packets are encoded and written by the store (with the store's model and adapter), so the first request
    of a document pays its encoding here, in the process holding the transformers model, never in vLLM.

    Parameters
    ----------
    store:
        A `PacketStore` with a folder (`root`), the transformers twin of the served model (same checkpoint, same
        dtype) and the adapter, if any.
    template:
        Preamble and query layout (default: from the tokenizer's chat template); documents are wrapped with
        `template.document` exactly as for `PacketCache`.
    placeholder_token_id:
        Token id written at soft-token slots (default: the tokenizer's pad, else EOS, else 0).

    Example
    -------
    >>> store = PacketStore("packets/", model, tok, adapter)
    >>> builder = PacketPromptBuilder(store)
    >>> llm = LLM(model=path, dtype="float32", kv_transfer_config=builder.kv_transfer_config())
    >>> req = builder.build(["doc one ...", "doc two ..."], "Who wrote doc two?")
    >>> llm.generate(req.prompt(), req.sampling_params(max_tokens=32, temperature=0))
    """

    def __init__(self, store: PacketStore, template: PromptTemplate | None = None,
                 placeholder_token_id: int | None = None):
        if store.root is None:
            raise VLLMConnectorError(
                "PacketPromptBuilder needs a PacketStore with a folder: the vLLM connector reads packets from disk. "
                "Pass a folder shared with the vLLM server: PacketStore('packets/', model, tokenizer, adapter).")
        self.store = store
        tok = store.tokenizer
        self.template = template or PromptTemplate.from_tokenizer(tok)
        # The preamble is an unwrapped packet (no adapter), kept in the same folder under its own keys.
        self._preamble_store = PacketStore(store.root, store.model, tok, adapter=None,
                                           max_memory_bytes=store.max_memory_bytes, on_corrupt=store.on_corrupt,
                                           on_write_error="raise")
        if placeholder_token_id is None:
            placeholder_token_id = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)
        self.placeholder_token_id = int(placeholder_token_id)

    def kv_transfer_config(self, **kwargs: Any) -> dict[str, Any]:
        """vLLM's `kv_transfer_config` for this store's folder and model (see `transfer.kv_transfer_config`)."""
        from .transfer import kv_transfer_config

        return kv_transfer_config(os.path.abspath(self.store.root), self.store.model_fingerprint, **kwargs)

    def _ensure_on_disk(self, store: PacketStore, ids: list[list[int]]) -> list[tuple[str, int]]:
        packets = store.get_many(ids, progress=False)
        out = []
        for t, p in zip(ids, packets):
            key = store.key(t)
            if not os.path.exists(store.path(key)):
                raise PacketStoreError(
                    f"{store.path(key)}: the packet could not be written (see the warning above), and the vLLM "
                    "connector reads packets from the store's folder. Make the folder writable, or encode the "
                    "documents where it is.")
            out.append((key, p.length))
        return out

    def build(self, documents: Sequence[str], question: str) -> VLLMPrompt:
        """The request for `documents` (texts, in prompt order) and `question`, laid out by the template."""
        tok = self.store.tokenizer
        preamble = tok(self.template.preamble, add_special_tokens=True)["input_ids"] if self.template.preamble else []
        docs = [self.store.tokenize(self.template.document(d)) for d in documents]
        query = tok(self.template.query(question), add_special_tokens=False)["input_ids"]
        return self.build_ids(preamble, docs, query)

    def build_ids(self, preamble: Sequence[int], documents: Sequence[Sequence[int]],
                  query: Sequence[int]) -> VLLMPrompt:
        """The request for already tokenized parts: preamble (with any BOS), documents, query."""
        if not query:
            raise VLLMConnectorError("The query has no tokens; vLLM must compute at least one prompt token.")
        preamble, docs = list(preamble), [list(d) for d in documents]
        entries = self._ensure_on_disk(self._preamble_store, [preamble]) if preamble else []
        entries += self._ensure_on_disk(self.store, docs) if docs else []
        if not entries:
            raise VLLMConnectorError("Nothing to load: give a preamble or at least one document.")
        adapter = self.store.adapter
        h = adapter.num_header_tokens if adapter is not None else 0
        t = adapter.num_trailer_tokens if adapter is not None else 0
        ph = self.placeholder_token_id
        ids = list(preamble)
        for d in docs:
            ids += [ph] * h + d + [ph] * t
        transfer = PacketTransfer(tuple(k for k, _ in entries), tuple(n for _, n in entries),
                                  self.store.model_fingerprint, self.store.adapter_fingerprint, bool(preamble))
        assert transfer.num_tokens == len(ids), "packet lengths disagree with the prompt layout"
        return VLLMPrompt(ids + list(query), transfer, list(query))


__all__ = ["PacketPromptBuilder", "VLLMPrompt"]
