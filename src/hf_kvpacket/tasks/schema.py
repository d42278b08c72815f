"""The row schema shared by every task, the split rule and the seeded RNG streams.

Every task yields rows with exactly these columns:

``id`` (str)
    Stable identifier: the same call returns the same ids; unique within a dataset.
``task`` (str)
    Task name (``"biography"``, ``"niah"``, ``"hotpotqa"``, ``"squad"``).
``documents`` (list[str])
    Standalone document texts; each one is encoded into its own reusable KV packet.
``question`` (str)
    The question asked over all documents.
``answers`` (list[str])
    Gold answers (score with the max over them).
``source_index`` (int)
    Index of the question in its source file, or ``-1`` for synthetic rows.

Examples
--------
>>> rows = [{"id": "x-0", "task": "x", "documents": ["A doc."], "question": "Q?", "answers": ["A"],
...          "source_index": -1}]
>>> rows_to_dataset(rows).column_names
['id', 'task', 'documents', 'question', 'answers', 'source_index']
"""

from __future__ import annotations

import random
import re
import string
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # pragma: no cover
    import datasets

SPLITS = ("train", "eval")
COLUMNS = ("id", "task", "documents", "question", "answers", "source_index")
EVAL_HOLDOUT = 4000
"""Rows of HotpotQA/SQuAD with ``source_index < EVAL_HOLDOUT`` are reserved for ``split="eval"``."""

SYNTHETIC_INDEX = -1

Row = dict[str, Any]


def check_split(split: str) -> str:
    """Validate a split name.

    Examples
    --------
    >>> check_split("train")
    'train'
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    return split


def make_rng(task: str, split: str, seed: int) -> random.Random:
    """Return the RNG stream of ``(task, split, seed)``.

    ``random.Random`` seeded with a string hashes it with SHA-512, so the stream is the same
    on every machine and Python run (independent of ``PYTHONHASHSEED``), and ``"train"`` and
    ``"eval"`` never share a stream.

    Examples
    --------
    >>> make_rng("niah", "eval", 0).random() == make_rng("niah", "eval", 0).random()
    True
    >>> make_rng("niah", "eval", 0).random() == make_rng("niah", "train", 0).random()
    False
    """
    check_split(split)
    return random.Random(f"hf_kvpacket/{task}/{split}/{int(seed)}")


def features() -> "datasets.Features":
    """The :class:`datasets.Features` of every task dataset.

    Examples
    --------
    >>> sorted(features())
    ['answers', 'documents', 'id', 'question', 'source_index', 'task']
    """
    import datasets

    string = datasets.Value("string")
    list_of = getattr(datasets, "List", datasets.Sequence)  # `List` since datasets 4, `Sequence` before
    return datasets.Features(
        {
            "id": string,
            "task": string,
            "documents": list_of(string),
            "question": string,
            "answers": list_of(string),
            "source_index": datasets.Value("int64"),
        }
    )


def rows_to_dataset(rows: Iterable[Row]) -> "datasets.Dataset":
    """Build a :class:`datasets.Dataset` with the task schema (columns in :data:`COLUMNS` order).

    Examples
    --------
    >>> rows_to_dataset([]).num_rows
    0
    """
    import datasets

    rows = list(rows)
    for row in rows:
        if set(row) != set(COLUMNS):
            raise ValueError(f"row {row.get('id')!r} has columns {sorted(row)}, expected {sorted(COLUMNS)}.")
    data = {column: [row[column] for row in rows] for column in COLUMNS}
    return datasets.Dataset.from_dict(data, features=features())


def check_num_samples(num_samples: int | None, available: int, task: str, split: str) -> int:
    """Resolve ``num_samples`` against the rows available (``None`` means all of them).

    Examples
    --------
    >>> check_num_samples(None, 10, "squad", "eval")
    10
    """
    if num_samples is None:
        return available
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}.")
    if num_samples > available:
        raise ValueError(
            f"{task!r} split {split!r} has {available} rows, fewer than num_samples={num_samples}."
        )
    return int(num_samples)


__all__ = [
    "SPLITS",
    "COLUMNS",
    "EVAL_HOLDOUT",
    "SYNTHETIC_INDEX",
    "Row",
    "check_split",
    "make_rng",
    "features",
    "rows_to_dataset",
    "check_num_samples",
    "normalize_answer",
]


_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)


def normalize_answer(text: str) -> str:
    """Normalise an answer the SQuAD way: lower-case, drop punctuation and articles, squeeze spaces.

    Examples
    --------
    >>> normalize_answer("  The  Quick, brown fox! ")
    'quick brown fox'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())
