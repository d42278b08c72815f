"""The packet file format: writer, sequential reader, checksums and full validation.

A packet file is a safetensors file: `k.<layer>` / `v.<layer>` tensors `(kv_heads, slots, head_dim)`, `token_ids`, and
string metadata (fingerprints, header/trailer lengths, layer count, dtype and shape, checksum). Since `wsum64-v3` the
checksum covers the whole file after the 8-byte length prefix: the JSON header (tensor names, dtypes, shapes, offsets,
metadata, with the checksum's own value blanked) and the data region. On top of the checksum, every tensor's dtype
and shape is checked against the metadata and, when the caller says what it expects (a store does), against the
model's KV layout. Any fault raises `PacketStoreError` naming the file, what is wrong and the fix; nothing else
escapes `load_packet` (a seeded fuzz test in `tests/test_packet_file.py` holds it to that).

Files written by earlier versions (`wsum64-v2`: data region only; `wsum64-v1`: per tensor; CRC32) still load; their
header is not covered by the checksum, but their dtypes and shapes are still validated against the expected layout.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from safetensors.torch import save

from .errors import KVPacketError, PacketStoreError
from .packet import Packet

_MASK64 = (1 << 64) - 1
#: Checksum written by this version: a position-weighted sum of the 64-bit words of the data region (see `_wsum64`),
#: computed chunk by chunk while the file is read, combined with a CRC32 of the JSON header (checksum value blanked).
CHECKSUM_ALGO = "wsum64-v3"
_OLD_ALGOS = ("wsum64-v2", "wsum64-v1", "crc32")
_PENDING = "?" * 16  # placeholder in the header while the checksum is computed
_ROW = 8 * 1024  # bytes of one row of words in `_wsum64`
_READ_CHUNK = 2 << 20  # small enough that the checksum finds each chunk still in cache
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_FIX = "Delete it (a PacketStore re-encodes it; with on_corrupt='reencode' it does so by itself)."


@dataclass(frozen=True)
class KVLayout:
    """What a model's packets must look like: layer count, KV heads, head dim and dtype (`None`: not checked)."""

    num_layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    dtype: torch.dtype | None = None


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


def _combine(header_crc: int, data_digest: int) -> str:
    return f"{(data_digest * 0x100000001B3 + header_crc) & _MASK64:016x}"


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


def _header_crc(header: bytes, checksum: str) -> int:
    """CRC32 of the JSON header with the checksum's own value blanked (it cannot cover itself)."""
    field = b'"checksum":"' + checksum.encode() + b'"'
    at = header.find(field)
    if at < 0:
        return zlib.crc32(header)  # no checksum field: the comparison fails anyway
    return zlib.crc32(header[:at] + b'"checksum":"' + _PENDING.encode() + b'"' + header[at + len(field):])


def save_packet(packet: Packet, path: str | os.PathLike) -> int:
    """Write one packet atomically (temporary file + fsync + rename). Returns the file size in bytes.

    An `OSError` (read-only folder, full disk, ...) propagates with the temporary file removed: never a partial file.
    """
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
        "dtype": _DTYPE_NAMES.get(packet.dtype, str(packet.dtype)),
        "kv_heads": str(packet.keys[0].shape[0]),
        "head_dim": str(packet.keys[0].shape[-1]),
        "length": str(packet.length),
        "checksum": _PENDING,
        "checksum_algo": CHECKSUM_ALGO,
    }
    blob = bytearray(save(tensors, metadata=meta))
    n = int.from_bytes(blob[:8], "little")
    at = blob.index(_PENDING.encode(), 8, 8 + n)
    data = _wsum64(torch.frombuffer(blob, dtype=torch.uint8, offset=8 + n)) if len(blob) > 8 + n else 0
    digest = _combine(zlib.crc32(bytes(blob[8: 8 + n])), data)
    blob[at: at + 16] = digest.encode()  # same length: the header and every offset stay as they are
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


def _header_bytes(buf: torch.Tensor) -> bytes:
    if buf.numel() < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(bytes(buf[:8].tolist()), "little")
    if n <= 0 or 8 + n > buf.numel():
        raise ValueError(f"header length {n} does not fit the file ({buf.numel()} bytes)")
    return bytes(buf[8: 8 + n].numpy())


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata, tensor entries) of a packet file from its JSON header alone (the data is not read or verified):
    a cheap check of fingerprints and lengths before a full `load_packet`. Raises `PacketStoreError` naming the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100 << 20:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n).decode("utf-8"))
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("metadata must map strings to strings")
        return meta, header
    except OSError as e:
        raise PacketStoreError(f"{path}: cannot read the packet file ({e.strerror or e}).") from e
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise PacketStoreError(f"{path}: unreadable packet file header ({e}). {_FIX}") from e


def parse_safetensors(buf: torch.Tensor) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file held in `buf`; tensors are views of `buf` (no copy) where aligned.

    The format (8-byte little-endian header length, JSON header, raw little-endian data) is parsed here because
    safetensors reads either through mmap (page-fault bound on cold reads) or by copying out of a bytes object.
    Raises `ValueError` for anything that is not a well-formed file (offsets outside the data, sizes that disagree
    with dtype and shape, overlapping tensors, unknown dtypes, non-string metadata).
    """
    raw_header = _header_bytes(buf)
    header = json.loads(raw_header.decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("metadata must map strings to strings")
    data = buf[8 + len(raw_header):]
    tensors, spans = {}, []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name!r}: entry is not an object")
        dtype = _DTYPES.get(info.get("dtype"))
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if dtype is None:
            raise ValueError(f"tensor {name!r}: unknown dtype {info.get('dtype')!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise ValueError(f"tensor {name!r}: bad shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ValueError(f"tensor {name!r}: bad data_offsets {offsets!r}")
        start, end = offsets
        if not 0 <= start <= end <= data.numel():
            raise ValueError(f"tensor {name!r} lies outside the file (truncated?)")
        numel = 1
        for d in shape:
            numel *= d
        if end - start != numel * dtype.itemsize:
            raise ValueError(f"tensor {name!r}: {end - start} bytes for shape {shape} of {info['dtype']}")
        spans.append((start, end, name))
        raw = data[start:end]
        if raw.storage_offset() % dtype.itemsize:  # misaligned slice: copy it
            raw = raw.clone()
        tensors[name] = raw.view(dtype).view(shape)
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"tensors {a!r} and {b!r} overlap")
    return meta, tensors


def _int(meta: dict[str, str], key: str) -> int:
    value = meta.get(key)
    if value is None or not value.isdigit():
        raise ValueError(f"metadata {key!r} is {value!r}, not a non-negative integer")
    return int(value)


def _validate(meta: dict[str, str], tensors: dict[str, torch.Tensor], layout: KVLayout | None) -> None:
    """Every layer's dtype and shape against the file's metadata and the expected layout; ValueError names the layer."""
    n = _int(meta, "num_layers")
    if layout is not None and layout.num_layers is not None and n != layout.num_layers:
        raise ValueError(f"{n} layers, the model has {layout.num_layers}")
    if n == 0:
        raise ValueError("no layers")
    names = {f"{kind}.{i}" for kind in "kv" for i in range(n)} | {"token_ids"}
    if set(tensors) != names:
        extra, missing = sorted(set(tensors) - names), sorted(names - set(tensors))
        raise ValueError(f"tensor names differ from {n} layers (missing {missing[:4]}, unexpected {extra[:4]})")
    ids = tensors["token_ids"]
    if ids.dtype != torch.int64 or ids.dim() != 1:
        raise ValueError(f"token_ids is {ids.dtype} of shape {tuple(ids.shape)}, expected a 1-D int64 tensor")
    slots = ids.numel() + _int(meta, "num_header_tokens") + _int(meta, "num_trailer_tokens")
    want_dtype = _DTYPES.get(meta["dtype"]) if "dtype" in meta else None
    if "dtype" in meta and want_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"metadata dtype {meta['dtype']!r} is not a floating-point type")
    if layout is not None and layout.dtype is not None:
        if want_dtype is not None and want_dtype != layout.dtype:
            raise ValueError(f"packet dtype {want_dtype}, the model computes in {layout.dtype}")
        want_dtype = layout.dtype
    heads = _int(meta, "kv_heads") if "kv_heads" in meta else (layout.kv_heads if layout else None)
    head_dim = _int(meta, "head_dim") if "head_dim" in meta else (layout.head_dim if layout else None)
    if "length" in meta and _int(meta, "length") != slots:
        raise ValueError(f"metadata length {meta['length']} but header + tokens + trailer = {slots}")
    first = tensors["k.0"]
    want_dtype = want_dtype or first.dtype
    if want_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"layer 0 keys are {first.dtype}, not a floating-point type")
    for i in range(n):
        for kind in "kv":
            t = tensors[f"{kind}.{i}"]
            what = f"layer {i} {'keys' if kind == 'k' else 'values'}"
            if t.dtype != want_dtype:
                raise ValueError(f"{what} are {t.dtype}, expected {want_dtype}")
            if t.dim() != 3 or t.shape[1] != slots:
                raise ValueError(f"{what} have shape {tuple(t.shape)}, expected (kv_heads, {slots}, head_dim)")
            if (heads is not None and t.shape[0] != heads) or (head_dim is not None and t.shape[2] != head_dim):
                raise ValueError(f"{what} have shape {tuple(t.shape)}, expected ({heads}, {slots}, {head_dim})")
            if layout is not None and ((layout.kv_heads is not None and t.shape[0] != layout.kv_heads)
                                       or (layout.head_dim is not None and t.shape[2] != layout.head_dim)):
                raise ValueError(f"{what} have shape {tuple(t.shape)}, the model's KV layout is "
                                 f"({layout.kv_heads}, {slots}, {layout.head_dim})")


def load_packet(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    expect: dict[str, str] | None = None,
    token_ids: Sequence[int] | None = None,
    layout: KVLayout | None = None,
) -> Packet:
    """Read and verify one packet file; any fault raises `PacketStoreError` naming the file and what is wrong.

    `expect`: metadata values that must match (fingerprints, format version); `token_ids`: the tokens its key says it
    holds; `layout`: the model's KV layout (layers, heads, head dim, dtype) every tensor must have.
    """
    path = os.fspath(path)
    try:
        buf, digest = read_file(path)
        meta, tensors = parse_safetensors(buf)
    except PacketStoreError:
        raise
    except Exception as e:  # truncated or garbled files fail in several ways
        raise PacketStoreError(f"{path}: unreadable packet file ({e}). {_FIX}") from e
    try:
        algo = meta.get("checksum_algo", "crc32")
        stored = meta.get("checksum", "")
        if algo == CHECKSUM_ALGO:
            want = _combine(_header_crc(_header_bytes(buf), stored), digest)
        elif algo == "wsum64-v2":
            want = f"{digest:016x}"
        elif algo in _OLD_ALGOS:
            want = _checksum(tensors, algo)
        else:
            raise PacketStoreError(f"{path}: unknown checksum algorithm {algo!r} (written by a newer hf-kvpacket?). "
                                   "Upgrade hf-kvpacket, or delete the file to re-encode it.")
        if stored != want:
            raise PacketStoreError(f"{path}: checksum mismatch (corrupted on disk). {_FIX}")
        for key, value in (expect or {}).items():
            if meta.get(key) != value:
                raise PacketStoreError(f"{path}: {key} is {meta.get(key)!r}, expected {value!r}. {_FIX}")
        _validate(meta, tensors, layout)
        ids = tuple(tensors["token_ids"].tolist())
        if token_ids is not None and ids != tuple(token_ids):
            raise PacketStoreError(f"{path}: holds other tokens than its key says (hash collision or tampering). {_FIX}")
        n = int(meta["num_layers"])
        keys = tuple(tensors[f"k.{i}"].to(device) for i in range(n))
        values = tuple(tensors[f"v.{i}"].to(device) for i in range(n))
        return Packet(keys, values, ids, meta["model_fingerprint"], meta["adapter_fingerprint"],
                      int(meta["num_header_tokens"]), int(meta["num_trailer_tokens"]), meta["format_version"])
    except PacketStoreError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, KVPacketError) as e:
        raise PacketStoreError(f"{path}: malformed packet file ({e}). {_FIX}") from e


def kv_layout(model: Any) -> KVLayout:
    """The KV layout a model's packets have: decoder layers, KV heads, head dim (from the config) and dtype."""
    from .rope import decoder_layers, text_config

    cfg = text_config(model)
    heads = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", None)
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim is None and getattr(cfg, "num_attention_heads", None):
        head_dim = cfg.hidden_size // cfg.num_attention_heads
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return KVLayout(len(decoder_layers(model)), heads, head_dim, param.dtype if param is not None else None)


__all__ = ["save_packet", "load_packet", "read_file", "read_metadata", "parse_safetensors", "kv_layout", "KVLayout", "CHECKSUM_ALGO"]
