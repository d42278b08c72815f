"""Answer scores: SQuAD token F1, exact match and fidelity (to a reference prediction).

They live with the tasks, whose answer format they score, so that training (e.g. the greedy answer check of a run)
and evaluation share them; `hf_kvpacket.evaluation.metrics` re-exports them next to the corpus-level metrics.

Answers are normalised as in the official SQuAD evaluation script (:func:`normalize_answer`). Per-example scores take
the maximum over the gold answers. As in SQuAD v2, when the prediction or the gold normalises to nothing, F1 is 1 if
both do and 0 otherwise; an empty gold list counts as ``[""]``.

Examples
--------
>>> token_f1("The Eiffel Tower", ["eiffel tower"])
1.0
>>> fidelity("in 1912", "1912")
0.6666666666666666
"""

from __future__ import annotations

import collections
from typing import Iterable

from .schema import normalize_answer


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


__all__ = ["exact_match", "fidelity", "token_f1"]
