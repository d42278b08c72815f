"""KV Packet: packets wrapped by the trained header/trailer adapter, stitched, only the query prefilled."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..adapter import PacketAdapter
from .base import BaselineError, MethodContext, StitchedPackets


@dataclass
class KVPacket(StitchedPackets):
    """The method of arXiv 2604.13226: `[header | document | trailer]` packets, recomputation-free.

    Parameters
    ----------
    adapter:
        The trained :class:`~hf_kvpacket.PacketAdapter`; default: the context's (`MethodContext(adapter=...)`).
        Without any adapter this method refuses to run (use :class:`NoRecompute` for plain packets).

    Examples
    --------
    >>> ctx = MethodContext(model, tok, adapter=PacketAdapter.from_pretrained("adapters/smollm2-135m-instruct-mixture"))
    >>> KVPacket().answer(ctx, {"documents": docs, "question": q})
    """

    name = "kv_packet"

    display = "KV Packet"
    adapter: PacketAdapter | None = field(default=None, repr=False)

    def packet_adapter(self, ctx: MethodContext) -> PacketAdapter:
        adapter = self.adapter if self.adapter is not None else ctx.adapter
        if adapter is None:
            raise BaselineError(
                "kv_packet needs a trained adapter: pass MethodContext(adapter=PacketAdapter.from_pretrained(...)) or "
                "KVPacket(adapter=...) (`kvpacket eval --adapter DIR`, or `--adapter random` for an untrained one)."
            )
        return adapter


__all__ = ["KVPacket"]
