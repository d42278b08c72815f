"""Seeded synthetic biographies: one short biography per person, one question about one person.

Each sample has ``k`` persons (``k`` drawn from ``[min_documents, max_documents]``, or fixed by
``num_documents``). Each person gets one document of a few sentences (about 50-90 words,
60-120 tokens) stating 4-6 of seven attributes (birth date, birth city, university, major,
employer, job title, hobby) in varied sentence templates. The question asks for one attribute
of one person; the answer is that attribute's value. Within a sample, the persons' values of the
asked attribute are all different, so the question can only be answered from the right document.

Train/eval separation
---------------------
* The RNG stream is derived from ``("biography", split, seed)``, so ``"train"`` and ``"eval"``
  draw different samples for the same seed.
* First names are partitioned by split: even positions of each first-name pool are used by
  ``"train"``, odd positions by ``"eval"``. No full name of an eval person can therefore appear
  in any train sample, for every seed.

Examples
--------
>>> ds = build_biography(split="eval", num_samples=3, seed=0)
>>> ds.column_names
['id', 'task', 'documents', 'question', 'answers', 'source_index']
>>> row = ds[0]
>>> row["answers"][0] in " ".join(row["documents"])
True
"""

from __future__ import annotations

import dataclasses
import json
import random
from importlib import resources
from typing import TYPE_CHECKING, Any

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

TASK = "biography"

# Pools and phrasings are data (tasks/data/biography.json). First names are split by position parity
# (train: even, eval: odd).
_TABLES = json.loads(resources.files("hf_kvpacket.tasks").joinpath("data/biography.json").read_text("utf-8"))

MALE_FIRST_NAMES: tuple[str, ...] = tuple(_TABLES["male_first_names"])
FEMALE_FIRST_NAMES: tuple[str, ...] = tuple(_TABLES["female_first_names"])
LAST_NAMES: tuple[str, ...] = tuple(_TABLES["last_names"])
CITIES: tuple[str, ...] = tuple(_TABLES["cities"])
UNIVERSITIES: tuple[str, ...] = tuple(_TABLES["universities"])
MAJORS: tuple[str, ...] = tuple(_TABLES["majors"])
COMPANIES: tuple[str, ...] = tuple(_TABLES["companies"])
JOB_TITLES: tuple[str, ...] = tuple(_TABLES["job_titles"])
HOBBIES: tuple[str, ...] = tuple(_TABLES["hobbies"])
MONTHS: tuple[str, ...] = tuple(_TABLES["months"])
_DAYS_IN_MONTH = tuple(_TABLES["days_in_month"])
ATTRIBUTES: tuple[str, ...] = tuple(_TABLES["attributes"])
_TEMPLATES = {k: tuple(v) for k, v in _TABLES["templates"].items()}
_QUESTIONS = {k: tuple(v) for k, v in _TABLES["questions"].items()}
_OPENINGS: tuple[str, ...] = tuple(_TABLES["openings"])
_CLOSINGS: tuple[str, ...] = tuple(_TABLES["closings"])


@dataclasses.dataclass(frozen=True)
class BiographyConfig:
    """Settings of the biography generator.

    Parameters
    ----------
    num_documents : int or None
        Persons (documents) per sample; ``None`` draws it from ``[min_documents, max_documents]``.
    min_documents, max_documents : int
        Range of persons per sample when ``num_documents`` is ``None``.
    min_attributes, max_attributes : int
        Attributes stated per person (out of the seven in :data:`ATTRIBUTES`).

    Examples
    --------
    >>> BiographyConfig(num_documents=4).num_documents
    4
    """

    num_documents: int | None = None
    min_documents: int = 2
    max_documents: int = 8
    min_attributes: int = 4
    max_attributes: int = 6

    def __post_init__(self) -> None:
        if self.num_documents is not None and self.num_documents < 1:
            raise ValueError(f"num_documents must be >= 1, got {self.num_documents}.")
        if not 1 <= self.min_documents <= self.max_documents:
            raise ValueError(
                f"need 1 <= min_documents <= max_documents, got {self.min_documents}, {self.max_documents}."
            )
        if not 1 <= self.min_attributes <= self.max_attributes <= len(ATTRIBUTES):
            raise ValueError(f"need 1 <= min_attributes <= max_attributes <= {len(ATTRIBUTES)}.")
        most = self.num_documents or self.max_documents
        if most > 40:
            raise ValueError(f"at most 40 persons per sample (value pools are finite), got {most}.")


def first_names(split: str, gender: str) -> tuple[str, ...]:
    """First names reserved for ``split`` (train: even positions of the pool, eval: odd).

    Examples
    --------
    >>> set(first_names("train", "female")).isdisjoint(first_names("eval", "female"))
    True
    """
    check_split(split)
    pool = MALE_FIRST_NAMES if gender == "male" else FEMALE_FIRST_NAMES
    return pool[0::2] if split == "train" else pool[1::2]


def _with_article(noun: str) -> str:
    """``"architect"`` -> ``"an architect"``, ``"chemist"`` -> ``"a chemist"``."""
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _random_date(rng: random.Random) -> str:
    month = rng.randrange(12)
    day = rng.randint(1, _DAYS_IN_MONTH[month])
    year = rng.randint(1940, 2004)
    return f"{MONTHS[month]} {day}, {year}"


def _render_person(rng: random.Random, person: dict[str, Any], attributes: list[str]) -> str:
    name, first = person["name"], person["first"]
    subj, obj, pos = ("he", "him", "his") if person["gender"] == "male" else ("she", "her", "her")
    sentences = [rng.choice(_OPENINGS).format(name=name)]
    order = list(attributes)
    rng.shuffle(order)
    for i, attribute in enumerate(order):
        template = rng.choice(_TEMPLATES[attribute])
        # First attribute sentence names the person; later ones use first name or pronoun.
        ref = name if i == 0 else rng.choice((first, subj, subj))
        value = person[attribute]
        sentences.append(
            template.format(
                Ref=ref[0].upper() + ref[1:],
                ref=ref,
                ref_subj=subj,
                pos=pos,
                Pos_cap=(f"{ref}'s" if ref != subj else pos.capitalize()),
                v=value,
                v_a=_with_article(value),
            )
        )
    for closing in rng.sample(_CLOSINGS, rng.randint(1, 2)):
        sentences.append(closing.format(subj=subj, Subj=subj.capitalize(), obj=obj, pos=pos))
    return " ".join(sentences)


_VALUE_POOLS: dict[str, tuple[str, ...]] = {
    "birth_city": CITIES,
    "university": UNIVERSITIES,
    "major": MAJORS,
    "employer": COMPANIES,
    "job_title": JOB_TITLES,
    "hobby": HOBBIES,
}


def _draw_sample(
    rng: random.Random, config: BiographyConfig, names: dict[str, tuple[str, ...]]
) -> tuple[list[str], str, str]:
    """Draw one sample: (documents, question, answer)."""
    k = config.num_documents or rng.randint(config.min_documents, config.max_documents)
    # Distinct first names and distinct last names: no two persons of a sample can be confused.
    genders = [rng.choice(("male", "female")) for _ in range(k)]
    chosen_first = {g: rng.sample(names[g], genders.count(g)) for g in ("male", "female")}
    last = rng.sample(LAST_NAMES, k)
    # Distinct values per attribute: the asked value identifies one person only.
    values = {attribute: rng.sample(pool, k) for attribute, pool in _VALUE_POOLS.items()}
    dates: list[str] = []
    while len(dates) < k:
        date = _random_date(rng)
        if date not in dates:
            dates.append(date)
    values["birth_date"] = dates
    persons = []
    counters = {"male": 0, "female": 0}
    for i, gender in enumerate(genders):
        first = chosen_first[gender][counters[gender]]
        counters[gender] += 1
        person = {"first": first, "name": f"{first} {last[i]}", "gender": gender}
        person.update({attribute: values[attribute][i] for attribute in ATTRIBUTES})
        persons.append(person)
    target = rng.randrange(k)
    asked = rng.choice(ATTRIBUTES)
    documents = []
    for i, person in enumerate(persons):
        count = rng.randint(config.min_attributes, config.max_attributes)
        attributes = rng.sample(ATTRIBUTES, count)
        if i == target and asked not in attributes:
            attributes[rng.randrange(count)] = asked
        documents.append(_render_person(rng, person, attributes))
    question = rng.choice(_QUESTIONS[asked]).format(name=persons[target]["name"])
    return documents, question, persons[target][asked]


def generate_biography_rows(
    split: str = "eval", num_samples: int = 100, seed: int = 42, config: BiographyConfig | None = None
) -> list[Row]:
    """Generate biography rows as plain dicts (see :func:`build_biography`).

    Examples
    --------
    >>> rows = generate_biography_rows("train", 2, seed=1, config=BiographyConfig(num_documents=3))
    >>> [len(r["documents"]) for r in rows]
    [3, 3]
    """
    check_split(split)
    config = config or BiographyConfig()
    if num_samples is None:
        raise ValueError(f"{TASK!r} is synthetic: pass num_samples (an int), not None.")
    num_samples = check_num_samples(num_samples, num_samples, TASK, split)
    rng = make_rng(TASK, split, seed)
    names = {gender: first_names(split, gender) for gender in ("male", "female")}
    rows: list[Row] = []
    for n in range(num_samples):
        while True:  # redraw the rare sample whose answer string also occurs in another document
            documents, question, answer = _draw_sample(rng, config, names)
            if sum(answer in document for document in documents) == 1:
                break
        rows.append(
            {
                "id": f"{TASK}-{split}-s{seed}-{n:06d}",
                "task": TASK,
                "documents": documents,
                "question": question,
                "answers": [answer],
                "source_index": SYNTHETIC_INDEX,
            }
        )
    return rows


def build_biography(
    split: str = "eval", num_samples: int = 100, seed: int = 42, **kwargs: Any
) -> "datasets.Dataset":
    """Build the synthetic multi-biography QA dataset.

    Parameters
    ----------
    split : {"train", "eval"}
        Which stream (and which half of the first-name pools) to use.
    num_samples : int
        Rows to generate.
    seed : int
        Seed; the same ``(split, seed)`` always gives the same rows.
    **kwargs
        Fields of :class:`BiographyConfig` (e.g. ``num_documents=4``).

    Returns
    -------
    datasets.Dataset
        Rows with the schema of :mod:`hf_kvpacket.tasks.schema`; ``source_index`` is ``-1``.

    Examples
    --------
    >>> ds = build_biography("train", num_samples=2, seed=7, num_documents=5)
    >>> len(ds[0]["documents"])
    5
    """
    return rows_to_dataset(generate_biography_rows(split, num_samples, seed, BiographyConfig(**kwargs)))


__all__ = [
    "TASK",
    "ATTRIBUTES",
    "BiographyConfig",
    "first_names",
    "generate_biography_rows",
    "build_biography",
]
