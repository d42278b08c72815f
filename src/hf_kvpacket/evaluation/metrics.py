"""SQuAD-style answer metrics: token F1, exact match and fidelity.

All scores are fractions in ``[0, 1]``. Answers are normalised as in the official SQuAD
evaluation script: lower-case, punctuation removed, articles (``a``, ``an``, ``the``) removed,
whitespace collapsed. Per-example scores take the maximum over the gold answers; corpus scores
are micro averages (the mean of per-example scores). As in SQuAD v2, when the prediction or the
gold normalises to nothing, F1 is 1 if both do and 0 otherwise; an empty gold list counts as
``[""]``.

``fidelity`` scores a prediction against a *reference prediction* (e.g. the answer the model
gave with full recomputation of the context) instead of the gold answer: it measures how
faithfully a cached-KV method reproduces the full-recompute output.

Examples
--------
>>> token_f1("The Eiffel Tower", ["eiffel tower"])
1.0
>>> exact_match("Paris, France", ["Paris"])
0.0
>>> round(token_f1("Paris, France", ["Paris"]), 4)
0.6667
>>> compute_metrics(["Paris"], [["Paris", "City of Paris"]], reference_predictions=["paris"])
{'f1': 1.0, 'exact_match': 1.0, 'fidelity': 1.0, 'num_samples': 1}
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import evaluate

from hf_kvpacket.tasks.schema import normalize_answer  # noqa: E402  (tasks use it too: it lives with them)

METRIC_DIR = Path(__file__).resolve().parent / "metrics" / "kvpacket_f1"
"""Folder of the ``evaluate`` metric module (load it with :func:`load_f1_metric`)."""


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def _as_golds(golds: str | Iterable[str]) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)
    return golds or [""]


def _f1_single(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = _tokens(prediction), _tokens(gold)
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: str | Iterable[str]) -> float:
    """SQuAD token F1 of ``prediction``, the maximum over ``golds``.

    Parameters
    ----------
    prediction : str
        Model answer.
    golds : str or iterable of str
        Gold answers (a single string is one gold answer).

    Returns
    -------
    float
        In ``[0, 1]``.

    Examples
    --------
    >>> token_f1("blue whale", ["the blue whale", "whale"])
    1.0
    >>> token_f1("", [""])
    1.0
    >>> token_f1("", ["x"])
    0.0
    """
    return max(_f1_single(prediction, gold) for gold in _as_golds(golds))


def exact_match(prediction: str, golds: str | Iterable[str]) -> float:
    """1.0 when ``prediction`` equals a gold answer after normalisation, else 0.0.

    Examples
    --------
    >>> exact_match("The Beatles.", ["beatles"])
    1.0
    >>> exact_match("Beatles band", ["beatles"])
    0.0
    """
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(gold) for gold in _as_golds(golds)))


def fidelity(prediction: str, reference: str) -> float:
    """Token F1 of ``prediction`` against a reference prediction (e.g. the full-recompute answer).

    Examples
    --------
    >>> fidelity("in 1912", "1912")
    0.6666666666666666
    """
    return token_f1(prediction, [reference])


def compute_metrics(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    reference_predictions: Sequence[str] | None = None,
) -> dict[str, float | int]:
    """Micro-averaged F1 and exact match (and fidelity when reference predictions are given).

    Parameters
    ----------
    predictions : sequence of str
        Model answers.
    references : sequence of (str or sequence of str)
        Gold answers per example.
    reference_predictions : sequence of str, optional
        Answers of the reference system (e.g. full recompute), one per example.

    Returns
    -------
    dict
        ``{"f1", "exact_match", "num_samples"}`` plus ``"fidelity"`` when
        ``reference_predictions`` is given. Empty inputs give 0.0 scores.

    Examples
    --------
    >>> compute_metrics(["a cat", "dog"], [["cat"], ["bird"]])
    {'f1': 0.5, 'exact_match': 0.5, 'num_samples': 2}
    """
    predictions = list(predictions)
    references = list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    count = len(predictions)

    def mean(values: Iterable[float]) -> float:
        values = list(values)
        return sum(values) / len(values) if values else 0.0

    result: dict[str, float | int] = {
        "f1": mean(token_f1(p, g) for p, g in zip(predictions, references)),
        "exact_match": mean(exact_match(p, g) for p, g in zip(predictions, references)),
    }
    if reference_predictions is not None:
        reference_predictions = list(reference_predictions)
        if len(reference_predictions) != count:
            raise ValueError(f"{count} predictions but {len(reference_predictions)} reference predictions.")
        result["fidelity"] = mean(fidelity(p, r) for p, r in zip(predictions, reference_predictions))
    result["num_samples"] = count
    return result


def load_f1_metric(**kwargs) -> "evaluate.EvaluationModule":
    """Load the ``kvpacket_f1`` :mod:`evaluate` metric from its local folder (no Hub access).

    Parameters
    ----------
    **kwargs
        Passed to :func:`evaluate.load` (e.g. ``experiment_id``).

    Examples
    --------
    >>> metric = load_f1_metric()  # doctest: +SKIP
    >>> metric.compute(predictions=["Paris"], references=[["Paris"]], reference_predictions=["Paris"])  # doctest: +SKIP
    {'f1': 1.0, 'exact_match': 1.0, 'fidelity': 1.0, 'num_samples': 1}
    """
    import evaluate

    return evaluate.load(str(METRIC_DIR), **kwargs)


__all__ = [
    "METRIC_DIR",
    "normalize_answer",
    "token_f1",
    "exact_match",
    "fidelity",
    "compute_metrics",
    "load_f1_metric",
]
