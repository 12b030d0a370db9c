"""benchmarks/glue_metric.py: an ``evaluate`` metric module that loads offline from its file and
scores every GLUE config as scikit-learn / scipy do; benchmarks.glue scores through it, and
asks the hub's "glue" module first only when the hub is reachable."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import glue  # noqa: E402
from benchmarks.glue_scores import CONFIG_METRICS  # noqa: E402

evaluate = pytest.importorskip("evaluate")


def _reference(y, p):
    """Each metric from scikit-learn / scipy called directly."""
    return {
        "matthews_correlation": lambda: matthews_corrcoef(y, p),
        "accuracy": lambda: accuracy_score(y, p),
        "f1": lambda: f1_score(y, p),
        "pearson": lambda: pearsonr(y, p)[0],
        "spearmanr": lambda: spearmanr(y, p)[0],
    }


def _random(config, rng, n=200):
    if config == "stsb":
        y = rng.uniform(0, 5, n)
        return y, y + rng.normal(0, 1.5, n)
    classes = 3 if config.startswith("mnli") else 2  # MNLI: entailment, neutral, contradiction
    y = rng.integers(0, classes, n)
    # right ~70% of the time, so every metric is away from 0 and from 1
    return y, np.where(rng.random(n) < 0.7, y, rng.integers(0, classes, n))


@pytest.mark.parametrize("config", sorted(CONFIG_METRICS))
def test_local_module_matches_sklearn_and_scipy(config):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: no hub, the file alone
    metric = evaluate.load(str(glue.GLUE_METRIC_MODULE), config_name=config, keep_in_memory=True)
    rng = np.random.default_rng(sum(map(ord, config)))
    y, p = _random(config, rng)
    result = metric.compute(predictions=p, references=y)
    assert set(result) == set(CONFIG_METRICS[config])
    reference = _reference(y, p)
    for name, value in result.items():
        assert value == pytest.approx(float(reference[name]()), abs=1e-12), name
        assert 0.05 < abs(value) < 0.999, (name, value)  # a real score, not a degenerate one


def test_unknown_config_is_refused():
    with pytest.raises(KeyError, match="unknown GLUE config 'mnli-mm'.*cola"):
        evaluate.load(str(glue.GLUE_METRIC_MODULE), config_name="mnli-mm", keep_in_memory=True)


def test_glue_score_goes_through_the_module_and_keeps_its_numbers():
    rng = np.random.default_rng(0)
    for task in glue.TASKS.values():
        y, p = _random(task.name, rng)
        metric = glue.glue_metric(task.name)
        assert Path(metric.__module__.replace(".", "/")).name == "glue_metric"  # the local file offline
        reference = _reference(y, p)
        # score(): the task's metrics in its order, x100, 3 decimals -- as before the module
        assert glue.score(task, y, p) == {name: round(100 * float(reference[name]()), 3) for name in task.metrics}
    assert glue.score(glue.TASKS["cola"], [0, 1, 0, 1], [1, 1, 1, 1]) == {"matthews_correlation": 0.0}
    undefined = glue.score(glue.TASKS["stsb"], [1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert undefined == {"pearson": None, "spearmanr": None} and not any(
        isinstance(v, float) and math.isnan(v) for v in undefined.values())


def test_hub_module_is_tried_first_only_when_reachable(monkeypatch):
    import textcl.model_location

    calls = []
    real_load = evaluate.load

    def load(path, *args, **kwargs):
        calls.append(path)
        if path == "glue":
            raise ConnectionError("hub went away")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(evaluate, "load", load)
    glue.glue_metric.cache_clear()
    try:
        monkeypatch.setattr(textcl.model_location, "_hub_reachable", lambda *a, **k: pytest.fail("probed offline"))
        glue.glue_metric("rte")
        assert calls == [str(glue.GLUE_METRIC_MODULE)]

        glue.glue_metric.cache_clear()
        calls.clear()
        monkeypatch.setattr(textcl.model_location, "_offline_env", lambda: False)
        monkeypatch.setattr(textcl.model_location, "_hub_reachable", lambda *a, **k: True)
        metric = glue.glue_metric("rte")  # hub first; its failure falls back to the local file
        assert calls == ["glue", str(glue.GLUE_METRIC_MODULE)]
        assert metric.compute(predictions=[1, 0], references=[1, 1]) == {"accuracy": 0.5}
    finally:
        glue.glue_metric.cache_clear()
