"""``kvpacket_f1``: SQuAD-normalised token F1, exact match and fidelity as an ``evaluate`` metric.

Load it from its local folder (no Hub access needed)::

    import evaluate
    from hf_kvpacket.evaluation.metrics import METRIC_DIR
    metric = evaluate.load(str(METRIC_DIR))          # or hf_kvpacket.evaluation.load_f1_metric()
    metric.compute(predictions=["Paris"], references=[["Paris", "City of Paris"]],
                   reference_predictions=["Paris"])
    # {'f1': 1.0, 'exact_match': 1.0, 'fidelity': 1.0, 'num_samples': 1}

The scores come from :func:`hf_kvpacket.evaluation.metrics.compute_metrics`.
"""

import datasets
import evaluate

from hf_kvpacket.evaluation.metrics import compute_metrics

_DESCRIPTION = """\
Token-level F1 and exact match with SQuAD answer normalisation (lower-case, no punctuation, no articles,
collapsed whitespace), the maximum over several gold answers per example, micro-averaged over examples.
With `reference_predictions` (e.g. the answers of full recomputation), also reports `fidelity`: the token
F1 of each prediction against its reference prediction. Scores are fractions in [0, 1].
"""

_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
  title = {{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text},
  author = {Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle = {Proceedings of EMNLP},
  year = {2016},
}
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list` of `str`): model answers.
    references (`list` of `list` of `str`): gold answers for each example.
    reference_predictions (`list` of `str`, optional): reference-system answers for `fidelity`.
Returns:
    f1 (`float`): mean max-over-golds token F1.
    exact_match (`float`): mean max-over-golds normalised exact match.
    fidelity (`float`, only with `reference_predictions`): mean token F1 against the reference predictions.
    num_samples (`int`): number of examples.
Examples:
    >>> metric = evaluate.load("path/to/kvpacket_f1")  # doctest: +SKIP
    >>> metric.compute(predictions=["the cat"], references=[["cat", "a dog"]])  # doctest: +SKIP
    {'f1': 1.0, 'exact_match': 1.0, 'num_samples': 1}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KvpacketF1(evaluate.Metric):
    """Token F1 / exact match / fidelity for KV Packet evaluation."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2604.13226", "https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references, reference_predictions=None):
        return compute_metrics(predictions, references, reference_predictions=reference_predictions)
