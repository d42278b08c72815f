"""The cache of converted offline models: its root (``$KVPACKET_CACHE``, default ``~/.cache/hf_kvpacket``), each
model's folder ``<root>/models/<name>/``, and whether a folder is complete (a marker written last, with the format
version and the GGUF's SHA-256).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .offline_registry import OFFLINE_MODELS

#: Environment variable naming the cache root.
CACHE_ENV_VAR = "KVPACKET_CACHE"

#: Bumped when the layout of a converted folder changes; an older folder is then converted again.
_FORMAT_VERSION = 1
#: Written last into a converted folder; its presence (with the right version) marks the folder complete.
_MARKER = "kvpacket_offline.json"


def _log(message: str) -> None:
    print(f"hf_kvpacket: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """The cache root: ``$KVPACKET_CACHE`` if set, else ``~/.cache/hf_kvpacket``.

    Returns
    -------
    pathlib.Path
        Absolute, with ``~`` expanded; not created.

    Examples
    --------
    >>> cache_root()  # with KVPACKET_CACHE=~/kvp in the environment  # doctest: +SKIP
    PosixPath('.../kvp')
    """
    value = os.environ.get(CACHE_ENV_VAR)
    root = Path(value).expanduser() if value else Path("~/.cache/hf_kvpacket").expanduser()
    return root.absolute()


def model_cache_dir(name: str) -> Path:
    """The folder a registry model is (or will be) converted to: ``<cache root>/models/<name>``.

    Examples
    --------
    >>> model_cache_dir("smollm2-135m-instruct").name
    'smollm2-135m-instruct'
    """
    if name not in OFFLINE_MODELS:
        raise KeyError(f"{name!r} is not an offline model; known: {sorted(OFFLINE_MODELS)}")
    return cache_root() / "models" / name


def is_converted(name: str) -> bool:
    """Whether registry model ``name`` already has a complete converted folder in the cache.

    Examples
    --------
    >>> is_converted("smollm2-135m-instruct")  # doctest: +SKIP
    True
    """
    marker = model_cache_dir(name) / _MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("format_version") == _FORMAT_VERSION and info.get("sha256") == OFFLINE_MODELS[name].sha256


__all__ = ["CACHE_ENV_VAR", "cache_root", "model_cache_dir", "is_converted"]
