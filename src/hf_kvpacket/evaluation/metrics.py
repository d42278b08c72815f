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

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import evaluate

from hf_kvpacket.tasks.schema import normalize_answer  # noqa: E402  (tasks use it too: it lives with them)
from hf_kvpacket.tasks.scoring import exact_match, fidelity, token_f1  # noqa: E402,F401  (shared with training)

METRIC_DIR = Path(__file__).resolve().parent / "metrics" / "kvpacket_f1"
"""Folder of the ``evaluate`` metric module (load it with :func:`load_f1_metric`)."""


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
