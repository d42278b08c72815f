"""Conversion of the offline models: a GGUF file (whole or in parts) -> a plain Hugging Face folder, once per machine.

The GGUF is loaded dequantized, a plain model is rebuilt from its config (no ``quantization_config``), and model,
tokenizer and generation config are saved into a temporary folder beside the final one, then moved into place with
``os.replace`` under a file lock: an interrupted run leaves no half folder, concurrent processes convert only once.
The registry is ``offline_registry.py``, the cache folders ``offline_cache.py``, the loader ``offline_models.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .offline_cache import _FORMAT_VERSION, _MARKER, _log, is_converted, model_cache_dir
from .offline_registry import OFFLINE_MODELS, OfflineModelSpec


def _convert_into(spec: OfflineModelSpec, gguf: Path, out_dir: Path) -> None:
    """Load ``gguf`` dequantized, rebuild a plain model from its config and save model + tokenizer to ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        from transformers import GgufConfig

        gguf_kwargs: dict = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older transformers: GGUF is always dequantized
        gguf_kwargs = {}

    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32, **gguf_kwargs)

    config = gguf_model.config
    for attr in ("quantization_config", "_model_name_or_path"):  # GGUF loading artefacts
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = gguf_model.state_dict()
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in _tied_keys(model)]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"Converting {spec.name}: the GGUF's weights do not match {type(model).__name__} "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    model.tie_weights()
    for name, tensor in model.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise RuntimeError(f"Converting {spec.name}: weight {name} has NaN/inf values")
    del gguf_model, state

    # Special tokens: eos first, then the others that end a turn; pad falls back to eos.
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in spec.eos_tokens]
    unk = tokenizer.unk_token_id
    bad = [t for t, i in zip(spec.eos_tokens, eos_ids) if i is None or (i == unk and t != tokenizer.unk_token)]
    if bad:
        raise RuntimeError(f"Converting {spec.name}: tokens {bad} are not in the vocabulary")
    if tokenizer.eos_token != spec.eos_tokens[0]:
        tokenizer.eos_token = spec.eos_tokens[0]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", tokenizer.model_max_length))
    if spec.chat and not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"Converting {spec.name}: the GGUF carries no chat template")

    config.eos_token_id = eos_ids[0]
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _tied_keys(model) -> set[str]:
    """Parameter names that are tied to another one (and so may be absent from a state dict)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        else:
            seen[id(param)] = name
    return tied


def _convert(spec: OfflineModelSpec, final: Path) -> None:
    """Convert ``spec`` into ``final`` atomically. The caller holds the lock."""
    parent = final.parent
    for stale in parent.glob(f".{spec.name}.tmp-*"):  # left by a killed process; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    spec.require()
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=parent))
    try:
        start = time.perf_counter()
        _log(
            f"converting {spec.name} ({spec.hub_id}) from GGUF to safetensors; this happens once per machine "
            f"and takes a minute or two. Saving to {final}"
        )
        gguf = spec.gguf_path(work / "gguf")
        if gguf.parent != work / "gguf":  # one-piece GGUF used where pip put it: check it once here
            spec.verify(gguf)
        out = work / "model"
        _convert_into(spec, gguf, out)
        info = {
            "format_version": _FORMAT_VERSION,
            "name": spec.name,
            "hub_id": spec.hub_id,
            "packages": list(spec.packages),
            "gguf": spec.gguf_name,
            "sha256": spec.sha256,
            "transformers": _version("transformers"),
            "torch": torch.__version__,
            "seconds": round(time.perf_counter() - start, 1),
        }
        (out / _MARKER).write_text(json.dumps(info, indent=2) + "\n")
        _chmod_like_umask(out)
        if final.exists():  # an older or incomplete folder: move it aside, then drop it
            old = parent / f".{spec.name}.tmp-old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(out, final)
        _log(f"converted {spec.name} in {info['seconds']} s -> {final}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _chmod_like_umask(folder: Path) -> None:
    """Give the folder and its files the modes a plain ``mkdir``/``open`` would (mkdtemp and some writers use 0o700/0o600)."""
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, which races with other threads)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover
        return None


def ensure_converted(name: str) -> Path:
    """Convert registry model `name` once (under a file lock) and return its folder; a no-op when it is done."""
    from filelock import FileLock, Timeout

    spec = OFFLINE_MODELS[name]
    final = model_cache_dir(name)
    if is_converted(name):
        return final
    spec.require()  # fail fast, before taking the lock, when a package is missing
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(final.parent / f".{name}.lock"))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        _log(f"waiting for another process converting {name} into {final}")
        lock.acquire()
    try:
        if not is_converted(name):
            _convert(spec, final)
    finally:
        lock.release()
    return final
