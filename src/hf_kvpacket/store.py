"""`PacketStore`: content-addressed packets on disk (safetensors), with a byte-bounded in-memory LRU.

Layout: `<root>/<key[:2]>/<key>.safetensors`, where `key = sha256(format version, model fingerprint, adapter
fingerprint, token ids)`. A different model, fine-tune, dtype or adapter therefore never hits another's packets.
Each file holds `k.<layer>` / `v.<layer>` tensors and the token ids, plus string metadata (fingerprints, header and
trailer lengths, a checksum of every tensor byte). Writes go to a temporary file in the same folder, then `os.replace`:
a crash or two concurrent writers of one key leave either no file or one complete, valid file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from safetensors.torch import save
from torch import nn

from .adapter import PacketAdapter, adapter_fingerprint
from .errors import KVPacketError, PacketStoreError
from .fingerprint import FORMAT_VERSION, model_fingerprint
from .packet import Packet, encode_packets


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


_MASK64 = (1 << 64) - 1
#: Checksum written by this version: a position-weighted sum of the 64-bit words of the file's whole data region
#: (see `_wsum64`), computed chunk by chunk while the file is read, so it costs no second pass over memory.
CHECKSUM_ALGO = "wsum64-v2"
_PENDING = "?" * 16  # placeholder in the header while the checksum of the data region is computed
_ROW = 8 * 1024  # bytes of one row of words in `_wsum64`


class _Wsum64:
    """Running `_wsum64` of a byte stream fed in chunks; every chunk but the last must be a multiple of `_ROW`."""

    def __init__(self) -> None:
        self.total, self.rows, self.nbytes = 0, 0, 0

    def update(self, data: torch.Tensor) -> None:
        full = data.numel() // _ROW * _ROW
        if full:
            rows = data[:full].view(torch.int64).view(-1, 1024).sum(1)
            weights = torch.arange(2 * self.rows + 1, 2 * (self.rows + rows.numel()) + 1, 2, dtype=torch.int64)
            self.total += int((rows * weights).sum())  # int64 wraps: sums stay exact modulo 2**64
            self.rows += rows.numel()
        rest = data[full:]
        if rest.numel():
            n8 = rest.numel() // 8 * 8
            self.total += int(rest[:n8].view(torch.int64).sum()) * 0x9E3779B97F4A7C15
            self.total += sum(int(b) << (8 * i) for i, b in enumerate(rest[n8:].tolist())) * 0xC2B2AE3D27D4EB4F
        self.nbytes += data.numel()

    def digest(self) -> int:
        return (self.total + self.nbytes) & _MASK64


def _wsum64(data: torch.Tensor) -> int:
    """Checksum of a flat uint8 tensor at memory speed (zlib's CRC32 was the bottleneck of cold loads).

    Words of 8 bytes are summed in rows of 1024 (int64, wrapping), row sums weighted by odd factors: any single
    corrupted word or bit changes the result, as do truncation, zeroed pages and moved blocks. It guards against
    disk corruption, not against deliberate tampering (the token ids in each file are checked separately).
    """
    acc = _Wsum64()
    acc.update(data)
    return acc.digest()


def _checksum(tensors: dict[str, torch.Tensor], algo: str = "wsum64-v1") -> str:
    """Per-tensor checksums of files written before wsum64-v2 (whose checksum covers the raw data region)."""
    if algo == "crc32":  # files written before wsum64-v1
        crc = 0
        for name in sorted(tensors):
            t = tensors[name].contiguous()
            crc = zlib.crc32(name.encode(), crc)
            crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().data, crc) if t.numel() else crc
        return f"{crc:08x}"
    if algo != "wsum64-v1":
        raise PacketStoreError(f"unknown checksum algorithm {algo!r} (written by a newer hf-kvpacket?). Upgrade it.")
    h = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous().reshape(-1).view(torch.uint8)
        h = (h * 0x100000001B3 + zlib.crc32(name.encode()) + _wsum64(t)) & _MASK64
    return f"{h:016x}"


def save_packet(packet: Packet, path: str | os.PathLike) -> int:
    """Write one packet atomically (temporary file + rename). Returns the file size in bytes."""
    tensors: dict[str, torch.Tensor] = {}
    for i, (k, v) in enumerate(zip(packet.keys, packet.values)):
        tensors[f"k.{i}"] = k.detach().to("cpu").contiguous()
        tensors[f"v.{i}"] = v.detach().to("cpu").contiguous()
    tensors["token_ids"] = torch.tensor(packet.token_ids, dtype=torch.int64)
    meta = {
        "format_version": packet.format_version,
        "model_fingerprint": packet.model_fingerprint,
        "adapter_fingerprint": packet.adapter_fingerprint,
        "num_header_tokens": str(packet.num_header_tokens),
        "num_trailer_tokens": str(packet.num_trailer_tokens),
        "num_layers": str(packet.num_layers),
        "checksum": _PENDING,
        "checksum_algo": CHECKSUM_ALGO,
    }
    blob = bytearray(save(tensors, metadata=meta))
    n = int.from_bytes(blob[:8], "little")
    at = blob.index(_PENDING.encode(), 8, 8 + n)
    digest = _wsum64(torch.frombuffer(blob, dtype=torch.uint8, offset=8 + n)) if len(blob) > 8 + n else 0
    blob[at: at + 16] = f"{digest:016x}".encode()  # same length: the header and every offset stay as they are
    folder = os.path.dirname(os.fspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".safetensors.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return os.path.getsize(path)


_READ_CHUNK = 2 << 20  # small enough that the checksum finds each chunk still in cache
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def read_file(path: str, chunk: int | None = None) -> tuple[torch.Tensor, int]:
    """The whole file as one uint8 tensor, read with large sequential reads (no mmap page faults), and the
    `_wsum64` of its safetensors data region, computed on each chunk right after it arrives (still in cache)."""
    chunk = chunk or _READ_CHUNK
    size = os.path.getsize(path)
    buf = torch.empty(size, dtype=torch.uint8)
    view = memoryview(buf.numpy()).cast("B")
    acc = _Wsum64()
    with open(path, "rb", buffering=0) as f:
        done = f.readinto(view[:8]) or 0
        start = min(size, 8 + int.from_bytes(view[:8], "little")) if done == 8 else size
        summed = start
        while done < size:
            n = f.readinto(view[done: start if done < start else min(size, done + chunk)])  # header, then chunks
            if not n:
                break
            done += n
            rows = max(0, done - summed) // _ROW * _ROW  # the running checksum takes whole rows only
            if rows:
                acc.update(buf[summed: summed + rows])
                summed += rows
    if done != size:
        raise PacketStoreError(f"{path}: file shrank while being read ({done} of {size} bytes).")
    if summed < size:
        acc.update(buf[summed:])
    return buf, acc.digest()


def parse_safetensors(buf: torch.Tensor) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file held in `buf`; tensors are views of `buf` (no copy) where aligned.

    The format (8-byte little-endian header length, JSON header, raw little-endian data) is parsed here because
    safetensors reads either through mmap (page-fault bound on cold reads) or by copying out of a bytes object.
    """
    if buf.numel() < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(bytes(buf[:8].tolist()), "little")
    if n <= 0 or 8 + n > buf.numel():
        raise ValueError(f"header length {n} does not fit the file ({buf.numel()} bytes)")
    header = json.loads(bytes(buf[8: 8 + n].numpy()).decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    data = buf[8 + n:]
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype, shape = _DTYPES[info["dtype"]], info["shape"]
        if not 0 <= start <= end <= data.numel():
            raise ValueError(f"tensor {name!r} lies outside the file (truncated?)")
        raw = data[start:end]
        if raw.storage_offset() % dtype.itemsize:  # misaligned slice: copy it
            raw = raw.clone()
        tensors[name] = raw.view(dtype).view(shape)
    return meta, tensors


def load_packet(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    expect: dict[str, str] | None = None,
    token_ids: Sequence[int] | None = None,
) -> Packet:
    """Read and verify one packet file; `PacketStoreError` names the file and what is wrong with it."""
    path = os.fspath(path)
    try:
        buf, digest = read_file(path)
        meta, tensors = parse_safetensors(buf)
    except PacketStoreError:
        raise
    except Exception as e:  # truncated or garbled files fail in several ways
        raise PacketStoreError(f"{path}: unreadable packet file ({e}). Delete it; it will be re-encoded.") from e
    try:
        n = int(meta["num_layers"])
        algo = meta.get("checksum_algo", "crc32")
        if meta.get("checksum") != (f"{digest:016x}" if algo == CHECKSUM_ALGO else _checksum(tensors, algo)):
            raise PacketStoreError(f"{path}: checksum mismatch (corrupted on disk). Delete it; it will be re-encoded.")
        for key, want in (expect or {}).items():
            if meta.get(key) != want:
                raise PacketStoreError(f"{path}: {key} is {meta.get(key)!r}, expected {want!r}. Delete the file.")
        ids = tuple(tensors["token_ids"].tolist())
        if token_ids is not None and ids != tuple(token_ids):
            raise PacketStoreError(f"{path}: holds other tokens than its key says (hash collision or tampering).")
        keys = tuple(tensors[f"k.{i}"].to(device) for i in range(n))
        values = tuple(tensors[f"v.{i}"].to(device) for i in range(n))
        return Packet(keys, values, ids, meta["model_fingerprint"], meta["adapter_fingerprint"],
                      int(meta["num_header_tokens"]), int(meta["num_trailer_tokens"]), meta["format_version"])
    except PacketStoreError:
        raise
    except (KeyError, ValueError, KVPacketError) as e:
        raise PacketStoreError(f"{path}: malformed packet file ({e!r}). Delete it; it will be re-encoded.") from e


class PacketStore:
    """Encode documents once, reuse their packets forever.

    Parameters
    ----------
    root:
        Folder of the store (created if missing). Several processes may share it.
    model, tokenizer:
        The model packets are encoded with, and its tokenizer (documents are tokenized without special tokens).
    adapter:
        Header/trailer adapter; `None` stores plain packets (the no-recompute baseline).
    max_memory_bytes:
        Budget of the in-memory LRU (packets kept on `device`); `0` disables it.
    device:
        Where loaded packets live (default: the model's embedding device).

    Example
    -------
    >>> store = PacketStore("packets/", model, tok, adapter)
    >>> packets = store.get_many(["doc one ...", "doc two ..."])   # encodes misses in one batch, loads hits
    >>> print(store.stats)                                           # hits / misses / bytes / seconds
    """

    def __init__(
        self,
        root: str | os.PathLike,
        model: nn.Module,
        tokenizer: Any,
        adapter: PacketAdapter | None = None,
        max_memory_bytes: int = 2 * 2**30,
        device: str | torch.device | None = None,
        batch_size: int = 8,
    ):
        self.root = os.fspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.model, self.tokenizer, self.adapter = model, tokenizer, adapter
        self.max_memory_bytes = max_memory_bytes
        self.device = device if device is not None else model.get_input_embeddings().weight.device
        self.batch_size = batch_size
        self.model_fingerprint = model_fingerprint(model)
        self.adapter_fingerprint = adapter_fingerprint(adapter)
        self._lru: OrderedDict[str, Packet] = OrderedDict()
        self._lru_bytes = 0
        self._pinned: set[str] = set()
        self.stats = StoreStats()
        self.last_call = StoreStats()

    # ------------------------------------------------------------------ keys
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def key(self, token_ids: Sequence[int]) -> str:
        h = hashlib.sha256(f"{FORMAT_VERSION}|{self.model_fingerprint}|{self.adapter_fingerprint}|".encode())
        h.update(torch.tensor(list(token_ids), dtype=torch.int64).numpy().tobytes())
        return h.hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], f"{key}.safetensors")

    def __contains__(self, document: str | Sequence[int]) -> bool:
        ids = self.tokenize(document) if isinstance(document, str) else document
        k = self.key(ids)
        return k in self._lru or os.path.exists(self.path(k))

    # ------------------------------------------------------------------ access
    def get(self, document: str | Sequence[int]) -> Packet:
        return self.get_many([document])[0]

    def get_many(self, documents: Sequence[str | Sequence[int]], progress: bool = True) -> list[Packet]:
        """Packets for `documents` (texts or token ids), in order: memory and disk hits are loaded, misses encoded in
        one batch and written. A corrupt entry raises `PacketStoreError` naming its file; other entries are unaffected.
        """
        call = StoreStats()
        ids = [self.tokenize(d) if isinstance(d, str) else list(d) for d in documents]
        keys = [self.key(t) for t in ids]
        out: list[Packet | None] = [None] * len(ids)
        missing: dict[str, list[int]] = {}
        expect = {"model_fingerprint": self.model_fingerprint, "adapter_fingerprint": self.adapter_fingerprint,
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
            elif os.path.exists(self.path(k)):
                on_disk[k] = [i]
            else:
                missing[k] = [i]
        if on_disk:
            start = time.perf_counter()
            for k, idx in on_disk.items():
                packet = load_packet(self.path(k), self.device, expect, ids[idx[0]])
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
                save_packet(packet, self.path(k))
                call.misses += 1
                call.bytes_encoded += packet.nbytes
                for i in missing[k]:
                    out[i] = packet
                self._remember(k, packet, call)
        self.last_call = call
        self.stats.add(call)
        return out  # type: ignore[return-value]

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
