"""Precision and speed switches of TrainConfig: compile, tf32, pin_memory."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _toy import Toy, ToyConfig

from textcl.core.recipe import TrainConfig
from textcl.core.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class _Net(torch.nn.Module):
    # A user-defined module: torch.compile skips top-level frames of torch.nn's own
    # containers (a bare nn.Sequential would silently stay eager).
    def __init__(self, dim: int):
        super().__init__()
        self.a, self.b = torch.nn.Linear(dim, 8), torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class _ToyEncoder(Toy):
    """Toy whose regression net is its ``encoder`` (what compile_modules compiles by default)."""

    def __init__(self, cfg: ToyConfig):
        super().__init__(cfg)
        self.encoder = _Net(cfg.model.dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"loss": torch.nn.functional.mse_loss(self.encoder(batch["x"]), batch["y"])}


def _fit(tmp_path, name: str, **kw: Any) -> _ToyEncoder:
    torch.manual_seed(0)
    method = _ToyEncoder(ToyConfig())
    cfg = TrainConfig(batch_size=8, max_steps=3, lr=0.05, scheduler="constant", cpu=True, **kw)
    Trainer(method, cfg, tmp_path / name, seed=1).fit()
    return method


def test_compile_trains_like_eager(tmp_path):
    dynamo = pytest.importorskip("torch._dynamo")
    if not dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python/platform")
    from torch._dynamo.utils import counters

    eager = _fit(tmp_path, "eager")
    counters.clear()
    try:
        compiled = _fit(tmp_path, "compiled", compile=True)
    except Exception as exc:  # inductor needs a working C++ compiler on CPU
        if "compiler" in str(exc).lower() or "InductorError" in type(exc).__name__:
            pytest.skip(f"torch.compile cannot build CPU kernels here: {exc}")
        raise
    assert counters["stats"]["unique_graphs"] >= 1  # the encoder really ran compiled
    assert list(compiled.state_dict()) == list(eager.state_dict())  # in place: same checkpoint keys
    for name, p in eager.state_dict().items():
        assert torch.allclose(compiled.state_dict()[name], p, atol=1e-5), name


def test_tf32_is_set_for_the_run_and_restored(tmp_path):
    seen = []

    class Probe:
        def on_step_end(self, trainer):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=8, max_steps=2, cpu=True, tf32=True)
    Trainer(Toy(ToyConfig()), cfg, tmp_path, callbacks=[Probe()]).fit()
    assert seen == [(True, True)] * 2
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert torch.get_float32_matmul_precision() in ("highest", "high")  # legacy API still readable


def test_pin_memory_is_ignored_on_cpu(tmp_path):
    # Pinning needs an accelerator; on CPU the switch must not break or change training.
    plain = _fit(tmp_path, "plain", num_workers=0)
    pinned = _fit(tmp_path, "pinned", num_workers=0, pin_memory=True)
    for name, p in plain.state_dict().items():
        assert torch.equal(pinned.state_dict()[name], p), name
