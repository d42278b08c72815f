"""`PacketStore`: content-addressed packets on disk (safetensors), with a byte-bounded in-memory LRU.

Layout: `<root>/<key[:2]>/<key>.safetensors`, where `key = sha256(format version, model fingerprint, adapter
fingerprint, token ids)`. A different model, fine-tune, dtype or adapter therefore never hits another's packets.
Each file holds `k.<layer>` / `v.<layer>` tensors and the token ids, plus string metadata (fingerprints, header and
trailer lengths, a checksum of every tensor byte). Writes go to a temporary file in the same folder, then `os.replace`:
a crash or two concurrent writers of one key leave either no file or one complete, valid file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .adapter import PacketAdapter, adapter_fingerprint
from .errors import KVPacketError, PacketStoreError
from .fingerprint import FORMAT_VERSION, model_fingerprint
from .packet import Packet, encode_packets
from .packet_file import (  # noqa: F401  (re-exported: the file format lives in packet_file.py)
    CHECKSUM_ALGO,
    _checksum,
    _wsum64,
    kv_layout,
    load_packet,
    parse_safetensors,
    read_file,
    save_packet,
)


def key_path(root: str | os.PathLike, key: str) -> str:
    """The file of `key` in a store folder: `<root>/<key[:2]>/<key>.safetensors` (also read by the vLLM connector)."""
    return os.path.join(os.fspath(root), key[:2], f"{key}.safetensors")


@dataclass
class StoreStats:
    """Counters of a store (cumulative) or of one `get_many` call (`PacketStore.last_call`)."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    bytes_loaded: int = 0
    bytes_encoded: int = 0
    load_seconds: float = 0.0
    encode_seconds: float = 0.0
    evictions: int = 0

    @property
    def hits(self) -> int:
        return self.memory_hits + self.disk_hits

    def add(self, other: "StoreStats") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hits": self.hits}

    def __str__(self) -> str:
        return (f"hits={self.hits} (memory {self.memory_hits}, disk {self.disk_hits}) misses={self.misses} "
                f"loaded={self.bytes_loaded / 2**20:.1f} MiB in {self.load_seconds:.3f}s "
                f"encoded={self.bytes_encoded / 2**20:.1f} MiB in {self.encode_seconds:.3f}s")


ON_CORRUPT = ("reencode", "raise")
ON_WRITE_ERROR = ("warn", "raise")


class PacketStore:
    """Encode documents once, reuse their packets forever.

    Parameters
    ----------
    root:
        Folder of the store (created if missing). Several processes may share it. `None`: a memory-only store (the
        LRU alone, nothing written; e.g. for evaluation or a read-only deployment that must not touch the disk).
    model, tokenizer:
        The model packets are encoded with, and its tokenizer (documents are tokenized without special tokens).
    adapter:
        Header/trailer adapter; `None` stores plain packets (the no-recompute baseline).
    max_memory_bytes:
        Budget of the in-memory LRU (packets kept on `device`); `0` disables it.
    device:
        Where loaded packets live (default: the model's embedding device).
    on_corrupt:
        What a corrupt, truncated or mismatching entry does. `"reencode"` (default): the file is moved to the
        quarantine folder `<root>.quarantine/` beside the store (kept for inspection), the document is encoded again
        and written, with one warning per store. A store is a cache of what the documents and the model determine,
        so an entry can always be rebuilt, and one bad file should not fail a request. `"raise"`:
        `PacketStoreError` naming the file (for audits, or to find a failing disk).
    on_write_error:
        What a failed write does (read-only folder, full disk, quota). `"warn"` (default): the packets of the call
        are returned (and kept in memory) and one warning names the path and the cause; nothing partial is left on
        disk. `"raise"`: `PacketStoreError` naming the path and the cause.

    Example
    -------
    >>> store = PacketStore("packets/", model, tok, adapter)
    >>> packets = store.get_many(["doc one ...", "doc two ..."])   # encodes misses in one batch, loads hits
    >>> print(store.stats)                                           # hits / misses / bytes / seconds
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        model: nn.Module,
        tokenizer: Any,
        adapter: PacketAdapter | None = None,
        max_memory_bytes: int = 2 * 2**30,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        on_corrupt: str = "reencode",
        on_write_error: str = "warn",
    ):
        if on_corrupt not in ON_CORRUPT:
            raise KVPacketError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}.")
        if on_write_error not in ON_WRITE_ERROR:
            raise KVPacketError(f"on_write_error must be one of {ON_WRITE_ERROR}, got {on_write_error!r}.")
        self.root = os.fspath(root) if root is not None else None
        self.on_corrupt, self.on_write_error = on_corrupt, on_write_error
        self.model, self.tokenizer, self.adapter = model, tokenizer, adapter
        self.max_memory_bytes = max_memory_bytes
        self.device = device if device is not None else model.get_input_embeddings().weight.device
        self.batch_size = batch_size
        self.adapter_fingerprint = adapter_fingerprint(adapter)
        self._lru: OrderedDict[str, Packet] = OrderedDict()
        self._lru_bytes = 0
        self._pinned: set[str] = set()
        self._warned: set[str] = set()
        self.stats = StoreStats()
        self.last_call = StoreStats()
        if self.root is not None:
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as e:
                self._write_failed(self.root, e)

    @property
    def model_fingerprint(self) -> str:
        """The model's fingerprint now (it follows in-place dtype and weight changes, see `model_fingerprint`)."""
        return model_fingerprint(self.model)

    @property
    def quarantine_dir(self) -> str | None:
        """Where `on_corrupt="reencode"` moves bad entries: `<root>.quarantine/` beside the store."""
        return None if self.root is None else os.path.normpath(self.root) + ".quarantine"

    # ------------------------------------------------------------------ keys
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def key(self, token_ids: Sequence[int], model_fp: str | None = None) -> str:
        model_fp = model_fp or self.model_fingerprint
        h = hashlib.sha256(f"{FORMAT_VERSION}|{model_fp}|{self.adapter_fingerprint}|".encode())
        h.update(torch.tensor(list(token_ids), dtype=torch.int64).numpy().tobytes())
        return h.hexdigest()

    def path(self, key: str) -> str | None:
        """The file of a key (`None` for a memory-only store)."""
        return None if self.root is None else key_path(self.root, key)

    def _on_disk(self, key: str) -> bool:
        path = self.path(key)
        return path is not None and os.path.exists(path)

    def __contains__(self, document: str | Sequence[int]) -> bool:
        ids = self.tokenize(document) if isinstance(document, str) else document
        k = self.key(ids)
        return k in self._lru or self._on_disk(k)

    # ------------------------------------------------------------------ access
    def get(self, document: str | Sequence[int]) -> Packet:
        return self.get_many([document])[0]

    def put(self, document: str | Sequence[int], packet: Packet) -> str:
        """Store a packet encoded elsewhere (e.g. by `encode_packets` on another worker) under its document's key.

        The packet must be this store's: same model, adapter and format, and the document's tokens. Returns the key.
        """
        ids = self.tokenize(document) if isinstance(document, str) else list(document)
        if tuple(ids) != tuple(packet.token_ids):
            raise PacketStoreError("put: the packet holds other tokens than the document; encode this document.")
        if (packet.model_fingerprint, packet.adapter_fingerprint, packet.format_version) != (
                self.model_fingerprint, self.adapter_fingerprint, FORMAT_VERSION):
            raise PacketStoreError(
                "put: the packet was encoded with another model, adapter or format version than this store's "
                f"(model {packet.model_fingerprint} vs {self.model_fingerprint}, adapter {packet.adapter_fingerprint} "
                f"vs {self.adapter_fingerprint}). Encode it with the store's model and adapter.")
        k = self.key(ids)
        self._write(k, packet)
        self._remember(k, packet, self.stats)
        return k

    def get_many(self, documents: Sequence[str | Sequence[int]], progress: bool = True) -> list[Packet]:
        """Packets for `documents` (texts or token ids), in order: memory and disk hits are loaded, misses encoded in
        one batch and written. A corrupt entry is quarantined and re-encoded (or raises `PacketStoreError` naming its
        file, with `on_corrupt="raise"`); other entries are unaffected.
        """
        call = StoreStats()
        ids = [self.tokenize(d) if isinstance(d, str) else list(d) for d in documents]
        model_fp = self.model_fingerprint  # once per call: it follows in-place changes of the model
        keys = [self.key(t, model_fp) for t in ids]
        out: list[Packet | None] = [None] * len(ids)
        missing: dict[str, list[int]] = {}
        expect = {"model_fingerprint": model_fp, "adapter_fingerprint": self.adapter_fingerprint,
                  "format_version": FORMAT_VERSION}
        on_disk: dict[str, list[int]] = {}
        for i, (k, t) in enumerate(zip(keys, ids)):
            if k in self._lru:
                self._lru.move_to_end(k)
                out[i] = self._lru[k]
                call.memory_hits += 1
            elif k in missing:
                missing[k].append(i)
            elif k in on_disk:
                on_disk[k].append(i)
            elif self._on_disk(k):
                on_disk[k] = [i]
            else:
                missing[k] = [i]
        if on_disk:
            start = time.perf_counter()
            layout = kv_layout(self.model)
            for k, idx in on_disk.items():
                try:
                    packet = load_packet(self.path(k), self.device, expect, ids[idx[0]], layout)
                except PacketStoreError as e:
                    if self.on_corrupt == "raise":
                        raise
                    self._quarantine(k, e)
                    missing[k] = idx
                    continue
                call.disk_hits += 1
                call.memory_hits += len(idx) - 1  # repeats within the call reuse the loaded packet
                call.bytes_loaded += packet.nbytes
                for i in idx:
                    out[i] = packet
                self._remember(k, packet, call)
            call.load_seconds += time.perf_counter() - start
        if missing:
            todo = list(missing)
            start = time.perf_counter()
            encoded = encode_packets(self.model, [ids[missing[k][0]] for k in todo], self.adapter,
                                     batch_size=self.batch_size, progress=progress)
            call.encode_seconds += time.perf_counter() - start
            for k, packet in zip(todo, encoded):
                self._write(k, packet)
                call.misses += 1
                call.bytes_encoded += packet.nbytes
                for i in missing[k]:
                    out[i] = packet
                self._remember(k, packet, call)
        self.last_call = call
        self.stats.add(call)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ disk faults
    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _write_failed(self, path: str, e: OSError) -> None:
        cause = errno.errorcode.get(e.errno, "") if e.errno else ""
        fix = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "the disk is full",
               errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}.get(e.errno, str(e))
        message = (f"PacketStore cannot write {path}: {fix} ({cause or type(e).__name__}: {e.strerror or e}). "
                   "Packets of this call are returned and kept in memory only. Free space or make the store "
                   "writable, or use PacketStore(None, ...) for a memory-only store.")
        if self.on_write_error == "raise":
            raise PacketStoreError(message) from e
        self._warn_once("write", message + " (Shown once per store; on_write_error='raise' makes it an error.)")

    def _write(self, key: str, packet: Packet) -> None:
        path = self.path(key)
        if path is None:
            return
        try:
            save_packet(packet, path)  # atomic: a failure leaves no partial file
        except OSError as e:
            self._write_failed(path, e)

    def _quarantine(self, key: str, error: PacketStoreError) -> None:
        path, qdir = self.path(key), self.quarantine_dir
        where = "could not be moved aside (left in place; it will be overwritten)"
        try:
            os.makedirs(qdir, exist_ok=True)
            target = os.path.join(qdir, f"{os.path.basename(path)}.{int(time.time() * 1000)}")
            shutil.move(path, target)
            where = f"moved to {target}"
        except OSError:
            pass
        self._warn_once("corrupt", f"{error} The entry was {where} and the document is being re-encoded "
                                   "(shown once per store; on_corrupt='raise' makes this an error).")

    # ------------------------------------------------------------------ memory LRU
    def pin(self, document: str | Sequence[int]) -> None:
        """Keep a hot document's packet in memory regardless of LRU pressure."""
        ids = self.tokenize(document) if isinstance(document, str) else document
        k = self.key(ids)
        self.get_many([ids], progress=False)
        self._pinned.add(k)

    def unpin(self, document: str | Sequence[int]) -> None:
        ids = self.tokenize(document) if isinstance(document, str) else document
        self._pinned.discard(self.key(ids))

    @property
    def memory_bytes(self) -> int:
        return self._lru_bytes

    @property
    def num_in_memory(self) -> int:
        """Packets held in memory now."""
        return len(self._lru)

    def in_memory(self, documents: Sequence[str | Sequence[int]]) -> bool:
        """Whether every document's packet is in memory (a `get_many` of them neither reads a file nor encodes)."""
        model_fp = self.model_fingerprint  # once, not per document
        return all(self.key(self.tokenize(d) if isinstance(d, str) else d, model_fp) in self._lru for d in documents)

    def _remember(self, key: str, packet: Packet, call: StoreStats) -> None:
        if self.max_memory_bytes <= 0:
            return
        self._lru[key] = packet
        self._lru_bytes += packet.nbytes
        for k in list(self._lru):
            if self._lru_bytes <= self.max_memory_bytes:
                break
            if k in self._pinned or k == key:
                continue
            self._lru_bytes -= self._lru.pop(k).nbytes
            call.evictions += 1

    def clear_memory(self) -> None:
        """Drop the in-memory LRU (pinned entries too); files stay."""
        self._lru.clear()
        self._lru_bytes = 0
        self._pinned.clear()

    def reset_stats(self) -> None:
        self.stats = StoreStats()
        self.last_call = StoreStats()
