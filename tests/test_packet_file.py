"""The packet file format (packet_file.py): the checksum covers header and data, every layer is validated, and a
seeded fuzz of byte flips, truncations and header edits either loads identical tensors or raises PacketStoreError."""

import dataclasses
import json
import random

import pytest
import torch

from hf_kvpacket import KVPacketError, Packet, PacketStoreError, encode_packets, load_packet, save_packet
from hf_kvpacket.packet_file import kv_layout
from tiny_models import build

DOC = list(range(3, 15))


@pytest.fixture(scope="module")
def model():
    return build("llama")


@pytest.fixture(scope="module")
def packet(model):
    return encode_packets(model, [DOC], progress=False)[0]


def _header(blob: bytes) -> tuple[int, dict]:
    n = int.from_bytes(blob[:8], "little")
    return n, json.loads(blob[8: 8 + n])


def _with_header(blob: bytes, header: dict) -> bytes:
    n, _ = _header(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + blob[8 + n:]


def _same(a: Packet, b: Packet) -> bool:
    return a.token_ids == b.token_ids and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        for x, y in zip(a.keys + a.values, b.keys + b.values)) and len(a.keys) == len(b.keys)


def _load(path, model, packet):
    expect = {"model_fingerprint": packet.model_fingerprint, "adapter_fingerprint": packet.adapter_fingerprint,
              "format_version": packet.format_version}
    return load_packet(path, expect=expect, token_ids=packet.token_ids, layout=kv_layout(model))


def test_header_dtype_edit_is_refused(tmp_path, model, packet):
    """F32 -> I32 for one layer in the JSON header used to load int32 keys and change the answer."""
    path = tmp_path / "p.safetensors"
    save_packet(packet, path)
    blob = path.read_bytes()
    _, header = _header(blob)
    assert header["k.1"]["dtype"] == "F32"
    header["k.1"]["dtype"] = "I32"
    path.write_bytes(_with_header(blob, header))
    with pytest.raises(PacketStoreError, match="p.safetensors: checksum mismatch"):
        _load(path, model, packet)


def test_header_edit_of_an_older_file_is_caught_by_the_layout_check(tmp_path, model, packet):
    """wsum64-v2 files (checksum over the data only) are still loaded, and still validated against the model."""
    from safetensors.torch import save

    from hf_kvpacket.packet_file import _wsum64

    tensors = {f"k.{i}": k for i, k in enumerate(packet.keys)} | {f"v.{i}": v for i, v in enumerate(packet.values)}
    tensors["token_ids"] = torch.tensor(packet.token_ids)
    meta = {"format_version": packet.format_version, "model_fingerprint": packet.model_fingerprint,
            "adapter_fingerprint": packet.adapter_fingerprint, "num_header_tokens": "0", "num_trailer_tokens": "0",
            "num_layers": str(packet.num_layers), "checksum": "?" * 16, "checksum_algo": "wsum64-v2"}
    blob = bytearray(save(tensors, metadata=meta))
    n = int.from_bytes(blob[:8], "little")
    at = blob.index(b"?" * 16)
    blob[at: at + 16] = f"{_wsum64(torch.frombuffer(bytearray(blob[8 + n:]), dtype=torch.uint8)):016x}".encode()
    path = tmp_path / "old.safetensors"
    path.write_bytes(bytes(blob))
    assert _same(_load(path, model, packet), packet)
    _, header = _header(bytes(blob))
    header["k.1"]["dtype"] = "I32"
    path.write_bytes(_with_header(bytes(blob), header))
    with pytest.raises(PacketStoreError, match=r"old.safetensors.*layer 1 keys are torch.int32"):
        _load(path, model, packet)


def test_every_layer_is_validated_at_construction(packet):
    short = tuple(k[:, :-2] if i == 1 else k for i, k in enumerate(packet.keys))
    with pytest.raises(KVPacketError, match="layer 1 keys"):
        dataclasses.replace(packet, keys=short)
    with pytest.raises(KVPacketError, match="layer 1 values"):
        dataclasses.replace(packet, values=tuple(v.double() if i == 1 else v for i, v in enumerate(packet.values)))
    with pytest.raises(KVPacketError, match="layer 1 keys .* KV heads"):
        dataclasses.replace(packet, keys=tuple(k[:1] if i == 1 else k for i, k in enumerate(packet.keys)))


def test_a_short_layer_written_by_save_packet_is_refused_at_load(tmp_path, model, packet):
    """Layer 1 two slots short, valid checksum: it used to compose uninitialised memory."""
    bad = object.__new__(Packet)
    for f in dataclasses.fields(Packet):
        object.__setattr__(bad, f.name, getattr(packet, f.name))
    object.__setattr__(bad, "keys", tuple(k[:, :-2] if i == 1 else k for i, k in enumerate(packet.keys)))
    path = tmp_path / "short.safetensors"
    save_packet(bad, path)
    with pytest.raises(PacketStoreError, match=r"short.safetensors.*layer 1 keys have shape"):
        _load(path, model, packet)
    with pytest.raises(PacketStoreError, match="short.safetensors"):
        load_packet(path)  # without the model's layout too


def test_layout_of_another_model_is_refused(tmp_path, packet):
    path = tmp_path / "p.safetensors"
    save_packet(packet, path)
    other = build("llama", torch.float64)
    with pytest.raises(PacketStoreError, match="float64"):
        load_packet(path, layout=kv_layout(other))


def _cases(blob: bytes, rng: random.Random):
    n, header = _header(blob)
    size = len(blob)
    for _ in range(150):  # byte flips anywhere: length prefix, header, data
        data = bytearray(blob)
        for _ in range(rng.choice([1, 1, 2, 3])):
            data[rng.randrange(size)] ^= rng.randrange(1, 256)
        yield "flip", bytes(data)
    for _ in range(60):
        yield "truncate", blob[: rng.randrange(size)]
    yield "extend", blob + b"\x00" * 8
    names = [k for k in header if k != "__metadata__"]
    for _ in range(120):  # header edits that keep the file well-formed JSON
        h = json.loads(json.dumps(header))
        name = rng.choice(names)
        kind = rng.randrange(7)
        if kind == 0:
            h[name]["dtype"] = rng.choice(["I32", "F16", "BF16", "F64", "U8", "X9"])
        elif kind == 1:
            shape = h[name]["shape"]
            shape[rng.randrange(len(shape))] += rng.choice([-2, -1, 1])
        elif kind == 2:
            h[name]["shape"] = list(reversed(h[name]["shape"]))
        elif kind == 3:
            other = rng.choice(names)
            h[name]["data_offsets"], h[other]["data_offsets"] = h[other]["data_offsets"], h[name]["data_offsets"]
        elif kind == 4:
            h[name]["data_offsets"][rng.randrange(2)] += rng.choice([-8, -4, 4, 8])
        elif kind == 5:
            key = rng.choice(sorted(h["__metadata__"]))
            h["__metadata__"][key] = rng.choice(["0", "1", "-1", "x", "", "999", h["__metadata__"][key] + "0"])
        else:
            del h[name]
        yield f"header-{kind}", _with_header(blob, h)


def test_fuzz_reader_loads_identical_tensors_or_raises_packet_store_error(tmp_path, model, packet):
    path = tmp_path / "fuzz.safetensors"
    save_packet(packet, path)
    blob = path.read_bytes()
    rng = random.Random(1234)
    outcomes = {"identical": 0, "refused": 0}
    for i, (kind, data) in enumerate(_cases(blob, rng)):
        path.write_bytes(data)
        try:
            got = _load(path, model, packet)
        except PacketStoreError as e:
            assert "fuzz.safetensors" in str(e), (i, kind, e)
            outcomes["refused"] += 1
            continue
        except Exception as e:  # noqa: BLE001  (the point: nothing else may escape)
            pytest.fail(f"case {i} ({kind}) raised {type(e).__name__}: {e}")
        assert _same(got, packet), f"case {i} ({kind}) loaded different tensors"
        outcomes["identical"] += 1
    assert sum(outcomes.values()) > 300 and outcomes["refused"] > 250
