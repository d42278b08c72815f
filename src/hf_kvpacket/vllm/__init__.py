"""Serve packets with vLLM: a KV connector that hands vLLM the composed packets, so it computes only the query.

Install with `pip install "hf-kvpacket[vllm]"` (vLLM pins its own torch and transformers: use its own virtualenv).

Example
-------
>>> from hf_kvpacket import PacketAdapter, PacketStore
>>> from hf_kvpacket.vllm import PacketPromptBuilder
>>> store = PacketStore("packets/", hf_model, tok, adapter)      # the transformers twin of the served model
>>> builder = PacketPromptBuilder(store)
>>> llm = LLM(model=path, dtype="float32", kv_transfer_config=builder.kv_transfer_config())
>>> req = builder.build(["doc one ...", "doc two ..."], "Who wrote doc two?")
>>> out = llm.generate(req.prompt(), req.sampling_params(max_tokens=32, temperature=0))
>>> req.status(out[0])     # {"status": "loaded", "loaded_tokens": ..., ...}

The connector itself (`hf_kvpacket.vllm.connector.KVPacketConnector`) imports vLLM; this package's face does not, so
requests can be built in a process without vLLM (e.g. a client of `vllm serve`).
"""

from .request import PacketPromptBuilder, VLLMPrompt
from .transfer import (
    CONNECTOR_MODULE,
    CONNECTOR_NAME,
    PARAMS_KEY,
    PacketTransfer,
    VLLMConnectorError,
    kv_transfer_config,
)

__all__ = ["PacketPromptBuilder", "VLLMPrompt", "PacketTransfer", "VLLMConnectorError", "kv_transfer_config",
           "PARAMS_KEY", "CONNECTOR_NAME", "CONNECTOR_MODULE"]
