"""Deprecated alias of :mod:`hf_kvpacket.evaluation.card` (kept for one release).

Filling a card with evaluation numbers reads `kvpacket eval`'s results format, so it moved to the evaluation side:
import ``update_card`` / ``card_results_from_eval`` from ``hf_kvpacket.evaluation.card``. Importing this module
does not import the evaluation (training never does); the first use of a name here does, with a `DeprecationWarning`.
"""

from __future__ import annotations

import warnings
from typing import Any

_MOVED = ("card_results_from_eval", "update_card")


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"hf_kvpacket.training.card_results.{name} moved to hf_kvpacket.evaluation.card.{name}; the old "
                  "path will be removed in the next release.", DeprecationWarning, stacklevel=2)
    from ..evaluation import card

    return getattr(card, name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_MOVED))
