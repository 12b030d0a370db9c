"""GLUE's metrics as an ``evaluate`` metric module that loads offline::

    evaluate.load("benchmarks/glue_metric.py", config_name="mrpc")
    # .compute(predictions=[...], references=[...]) -> {"accuracy": ..., "f1": ...}

The same config names, result keys and formulas as the hub's ``evaluate.load("glue",
task)`` (``benchmarks.glue_scores``), with two differences: STS-B scores are computed on
float64 (the hub module casts them to float32), and a correlation with a constant side is
NaN without scipy's warning. ``benchmarks.glue`` loads the hub module when the hub is
reachable and this one otherwise.
"""

from __future__ import annotations

import datasets
import evaluate

from .glue_scores import CONFIG_METRICS, METRICS

_DESCRIPTION = "GLUE dev-set metrics (offline copy of the hub's 'glue' module)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (STS-B: scores).
    references: gold labels (STS-B: scores).
Returns: by config name,
    cola: matthews_correlation; stsb: pearson, spearmanr; mrpc, qqp: accuracy, f1;
    sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli, hans: accuracy.
"""
_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Glue(evaluate.Metric):
    """GLUE metrics of one task (the ``config_name``)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in CONFIG_METRICS:
            raise KeyError(
                f"unknown GLUE config {self.config_name!r}; use one of: {', '.join(CONFIG_METRICS)}"
            )
        dtype = "float64" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            # Python lists: datasets' numpy format would hand STS-B scores over as float32.
        )

    def _compute(self, predictions, references):
        return {name: METRICS[name](references, predictions) for name in CONFIG_METRICS[self.config_name]}
