"""PacketStore: content addressing, exact round trips, integrity checks, atomic concurrent writes, LRU, statistics."""

import multiprocessing as mp
import os

import pytest
import torch

from hf_kvpacket import PacketAdapter, PacketStore, PacketStoreError, load_packet, save_packet
from tiny_models import ToyTokenizer, build

DOCS = ["alpha beta gamma delta", "the quick brown fox jumps over", "one two three four five six seven"]


@pytest.fixture
def model():
    return build("llama")


def test_round_trip_is_bit_exact(tmp_path, model):
    store = PacketStore(tmp_path, model, ToyTokenizer(), max_memory_bytes=0)
    first = store.get_many(DOCS, progress=False)
    again = PacketStore(tmp_path, model, ToyTokenizer()).get_many(DOCS, progress=False)
    for a, b in zip(first, again):
        assert a.token_ids == b.token_ids and a.model_fingerprint == b.model_fingerprint
        assert all(torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values))


def test_hits_never_reencode(tmp_path, model, monkeypatch):
    store = PacketStore(tmp_path, model, ToyTokenizer())
    store.get_many(DOCS, progress=False)
    assert (store.stats.misses, store.stats.hits) == (3, 0)
    import hf_kvpacket.store as st
    monkeypatch.setattr(st, "encode_packets", lambda *a, **k: pytest.fail("a hit re-encoded"))
    store.get_many(DOCS, progress=False)
    assert store.last_call.memory_hits == 3
    fresh = PacketStore(tmp_path, model, ToyTokenizer())
    fresh.get_many(DOCS + DOCS[:1], progress=False)
    assert fresh.last_call.disk_hits == 3 and fresh.last_call.memory_hits == 1 and fresh.last_call.misses == 0
    assert fresh.last_call.bytes_loaded > 0


def test_key_covers_adapter_and_model(tmp_path, model):
    tok = ToyTokenizer()
    plain = PacketStore(tmp_path, model, tok)
    wrapped = PacketStore(tmp_path, model, tok, PacketAdapter.for_model(model, 2, 2))
    other = PacketStore(tmp_path, build("llama", seed=5), tok)
    keys = {s.key(tok(DOCS[0])["input_ids"]) for s in (plain, wrapped, other)}
    assert len(keys) == 3


def test_corrupt_and_truncated_files_raise_and_others_work(tmp_path, model):
    store = PacketStore(tmp_path, model, ToyTokenizer(), max_memory_bytes=0, on_corrupt="raise")
    store.get_many(DOCS, progress=False)
    tok = ToyTokenizer()
    p0, p1 = (store.path(store.key(tok(d)["input_ids"])) for d in DOCS[:2])
    with open(p0, "r+b") as f:  # flip bytes in the tensor data
        f.seek(os.path.getsize(p0) - 20)
        f.write(b"\x00\xff" * 8)
    with open(p1, "r+b") as f:
        f.truncate(os.path.getsize(p1) // 2)
    with pytest.raises(PacketStoreError, match=os.path.basename(p0)):
        store.get(DOCS[0])
    with pytest.raises(PacketStoreError, match=os.path.basename(p1)):
        store.get(DOCS[1])
    assert store.get(DOCS[2]).token_ids == tuple(tok(DOCS[2])["input_ids"])


def test_checksum_catches_every_single_bit_flip():
    from hf_kvpacket.store import _checksum

    gen = torch.Generator().manual_seed(0)
    tensors = {"k.0": torch.randn(1, 2, 700, 8, generator=gen), "token_ids": torch.arange(13)}  # 44,904 + 104 bytes
    ref = _checksum(tensors)
    for name, t in tensors.items():
        raw = t.reshape(-1).view(torch.uint8)
        for pos in torch.randint(0, raw.numel(), (40,), generator=gen).tolist() + [0, raw.numel() - 1]:
            for bit in (0, 7):  # low bits of a word's low byte and the sign bit of its high byte
                flipped = {k: v.clone() for k, v in tensors.items()}
                flipped[name].reshape(-1).view(torch.uint8)[pos] ^= 1 << bit
                assert _checksum(flipped) != ref, (name, pos, bit)
    swapped = {k: v.clone() for k, v in tensors.items()}  # blocks moved across rows of words
    w = swapped["k.0"].reshape(-1)
    w[:2048], w[2048:4096] = w[2048:4096].clone(), w[:2048].clone()
    assert _checksum(swapped) != ref


def test_files_with_older_checksums_still_load(tmp_path, model):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hf_kvpacket.store import _checksum

    store = PacketStore(tmp_path, model, ToyTokenizer(), max_memory_bytes=0)
    packet = store.get(DOCS[0])
    path = store.path(store.key(ToyTokenizer()(DOCS[0])["input_ids"]))
    with safe_open(path, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k).clone() for k in f.keys()}
    assert meta["checksum_algo"] == "wsum64-v3"
    from safetensors.torch import save

    from hf_kvpacket.store import _wsum64
    v2 = {k: v for k, v in meta.items() if k not in ("dtype", "kv_heads", "head_dim", "length")}
    v2["checksum_algo"], v2["checksum"] = "wsum64-v2", "?" * 16  # data region only, header not covered
    blob = bytearray(save(tensors, metadata=v2))
    n = int.from_bytes(blob[:8], "little")
    at = blob.index(b"?" * 16)
    blob[at: at + 16] = f"{_wsum64(torch.frombuffer(bytearray(blob[8 + n:]), dtype=torch.uint8)):016x}".encode()
    open(path, "wb").write(bytes(blob))
    again = PacketStore(tmp_path, model, ToyTokenizer(), max_memory_bytes=0, on_corrupt="raise").get(DOCS[0])
    assert all(torch.equal(a, b) for a, b in zip(packet.keys + packet.values, again.keys + again.values))
    meta["checksum_algo"], meta["checksum"] = "wsum64-v1", _checksum(tensors, "wsum64-v1")  # per-tensor (v1)
    save_file(tensors, path, metadata=meta)
    again = PacketStore(tmp_path, model, ToyTokenizer(), max_memory_bytes=0).get(DOCS[0])
    assert all(torch.equal(a, b) for a, b in zip(packet.keys, again.keys))
    del meta["checksum_algo"]
    meta["checksum"] = _checksum(tensors, "crc32")  # the first format
    save_file(tensors, path, metadata=meta)
    again = PacketStore(tmp_path, model, ToyTokenizer(), max_memory_bytes=0).get(DOCS[0])
    assert all(torch.equal(a, b) for a, b in zip(packet.keys, again.keys))
    meta["checksum"] = "00000000"
    save_file(tensors, path, metadata=meta)
    with pytest.raises(PacketStoreError, match="checksum mismatch"):
        PacketStore(tmp_path, model, ToyTokenizer(), max_memory_bytes=0, on_corrupt="raise").get(DOCS[0])


def _writer(args):
    path, seed, rounds = args
    model = build("llama")
    from hf_kvpacket import encode_packets
    packet = encode_packets(model, [[1, 2, 3, 4, 5, 6, 7, 8] * 16], progress=False)[0]
    for _ in range(rounds):
        save_packet(packet, path)
    return True


def test_concurrent_writers_leave_one_valid_file(tmp_path):
    path = str(tmp_path / "ab" / "key.safetensors")
    with mp.get_context("spawn").Pool(2) as pool:
        assert all(pool.map(_writer, [(path, 0, 20), (path, 1, 20)]))
    packet = load_packet(path)
    assert packet.length == 128
    assert [f for f in os.listdir(tmp_path / "ab")] == ["key.safetensors"]  # no temporary files left


def test_lru_is_byte_bounded_and_pins(tmp_path, model):
    tok = ToyTokenizer()
    probe = PacketStore(tmp_path, model, tok).get(DOCS[2])
    store = PacketStore(tmp_path, model, tok, max_memory_bytes=int(probe.nbytes * 2.5))
    store.pin(DOCS[0])
    for i in range(6):
        store.get(f"filler document number {i} " * 3)
        assert store.memory_bytes <= store.max_memory_bytes or len(store._lru) <= 2
    store.get(DOCS[0])
    assert store.last_call.memory_hits == 1  # the pinned packet survived the flood
    assert store.stats.evictions > 0


def test_parse_safetensors_equals_safetensors_own_reader(tmp_path):
    """The store's sequential reader gives the same tensors and metadata as safetensors' mmap reader, including
    a tensor whose offset is not aligned to its dtype (copied, not viewed)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hf_kvpacket.store import _wsum64, parse_safetensors, read_file

    tensors = {"a": torch.randn(3, 5, dtype=torch.float32), "b": torch.randn(7).to(torch.bfloat16),
               "c": torch.arange(5, dtype=torch.int64), "d": torch.randn(2, 2, dtype=torch.float64)}
    path = str(tmp_path / "x.safetensors")
    tensors["e"] = torch.randn(3000)  # several rows of words in the data region
    save_file(tensors, path, metadata={"k": "v"})
    buf, digest = read_file(path)
    n = int.from_bytes(bytes(buf[:8].tolist()), "little")
    assert digest == _wsum64(buf[8 + n:])
    for chunk in (5000, 8192, 3 * 8192 + 1):  # reads that end inside rows: the running checksum still agrees
        again, d = read_file(path, chunk=chunk)
        assert d == digest and torch.equal(again, buf)
    meta, got = parse_safetensors(buf)
    with safe_open(path, framework="pt") as f:
        assert meta == f.metadata()
        for name in f.keys():
            want = f.get_tensor(name)
            assert got[name].dtype == want.dtype and torch.equal(got[name], want), name
    with open(path, "rb") as f:
        blob = f.read()
    for cut in (4, 40, len(blob) - 3):
        (tmp_path / "cut.safetensors").write_bytes(blob[:cut])
        with pytest.raises(ValueError):
            parse_safetensors(read_file(str(tmp_path / "cut.safetensors"))[0])


def _fail_writes(monkeypatch, err):
    import errno as _errno

    import hf_kvpacket.packet_file as pf

    def fail(*a, **k):
        raise OSError(err, os.strerror(err))

    if err == _errno.ENOSPC:  # the disk fills up in the middle of the write: the temporary file exists by then
        real = os.fsync
        monkeypatch.setattr(pf.os, "fsync", lambda fd: fail() if True else real(fd))
    else:
        monkeypatch.setattr(pf.tempfile, "mkstemp", fail)


@pytest.mark.parametrize("err, words", [(30, "read-only"), (28, "disk is full")])
def test_unwritable_store_returns_the_packets_with_one_warning(tmp_path, model, monkeypatch, err, words):
    """A miss on a read-only store or a full disk used to raise a raw OSError and lose the hit and the new packet."""
    tok = ToyTokenizer()
    store = PacketStore(tmp_path, model, tok)
    hit = store.get(DOCS[0])
    _fail_writes(monkeypatch, err)
    with pytest.warns(RuntimeWarning, match=f"cannot write {tmp_path}.*{words}") as record:
        packets = store.get_many(DOCS, progress=False)
        store.get_many(["another document here"], progress=False)
    assert len([w for w in record if "cannot write" in str(w.message)]) == 1  # once per store
    assert packets[0] is hit and all(p.token_ids == tuple(tok(d)["input_ids"]) for p, d in zip(packets, DOCS))
    leftovers = [f for _, _, files in os.walk(tmp_path) for f in files if not f.endswith(".safetensors")]
    assert leftovers == []  # never a partial file
    assert store.get(DOCS[1]) is packets[1]  # kept in memory
    strict = PacketStore(tmp_path, model, tok, on_write_error="raise")
    with pytest.raises(PacketStoreError, match=f"cannot write {tmp_path}.*{words}"):
        strict.get_many(["yet another document"], progress=False)


def test_corrupt_entry_is_quarantined_and_reencoded(tmp_path, model):
    tok = ToyTokenizer()
    store = PacketStore(tmp_path, model, tok, max_memory_bytes=0)
    good = store.get_many(DOCS, progress=False)
    bad_path = store.path(store.key(tok(DOCS[1])["input_ids"]))
    with open(bad_path, "r+b") as f:
        f.seek(os.path.getsize(bad_path) - 20)
        f.write(b"\x00\xff" * 8)
    with pytest.warns(RuntimeWarning, match=r"checksum mismatch.*moved to .*\.quarantine"):
        again = store.get_many(DOCS, progress=False)  # one bad file does not fail the call
    assert store.last_call.disk_hits == 2 and store.last_call.misses == 1
    for a, b in zip(good, again):  # re-encoded alone instead of in a padded batch: equal to float rounding
        assert all(torch.allclose(x, y, atol=1e-5, rtol=0) for x, y in zip(a.keys + a.values, b.keys + b.values))
    assert os.listdir(store.quarantine_dir) and os.path.dirname(store.quarantine_dir) == os.path.dirname(str(tmp_path))
    fresh = PacketStore(tmp_path, model, tok, max_memory_bytes=0, on_corrupt="raise")
    fresh.get_many(DOCS, progress=False)
    assert fresh.last_call.disk_hits == 3  # the re-encoded file is valid


def test_memory_only_store_and_put(tmp_path, model):
    from hf_kvpacket import encode_packets

    tok = ToyTokenizer()
    mem = PacketStore(None, model, tok)
    first = mem.get_many(DOCS, progress=False)
    assert mem.get_many(DOCS, progress=False)[0] is first[0] and mem.last_call.memory_hits == 3
    assert mem.path(mem.key([1, 2])) is None
    disk = PacketStore(tmp_path, model, tok, max_memory_bytes=0)
    ids = tok(DOCS[0])["input_ids"]
    packet = encode_packets(model, [ids], progress=False)[0]
    key = disk.put(DOCS[0], packet)
    assert os.path.exists(disk.path(key)) and disk.get(DOCS[0]).token_ids == packet.token_ids
    assert disk.last_call.disk_hits == 1
    with pytest.raises(PacketStoreError, match="other tokens"):
        disk.put(DOCS[1], packet)
    with pytest.raises(PacketStoreError, match="another model"):
        PacketStore(tmp_path, build("llama", seed=3), tok).put(DOCS[0], packet)
