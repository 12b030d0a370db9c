"""A tiny regression ``Method`` for testing the trainer's mechanics quickly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from textcl.core.method import Method, MethodConfig, register_method


class ToyModel(MethodConfig):
    dim: int = 4
    dropout: float = 0.0


class ToyData(MethodConfig):
    n: int = Field(64, ge=0)


class ToyObjective(MethodConfig):
    nan_at_step: int | None = None  # forward returns NaN on this (1-based) step


class ToyConfig(MethodConfig):
    model: ToyModel = ToyModel()
    data: ToyData = ToyData()
    objective: ToyObjective = ToyObjective()


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int, dim: int, seed: int = 123):
        w = torch.randn(dim, 1, generator=torch.Generator().manual_seed(0))  # same task for every split
        self.x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
        self.y = self.x @ w + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i], "index": torch.tensor(i)}


@register_method("toy")
class Toy(Method):
    name = "toy"
    config_class = ToyConfig

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.net = torch.nn.Sequential(
            torch.nn.Linear(cfg.model.dim, 8), torch.nn.Dropout(cfg.model.dropout), torch.nn.Linear(8, 1)
        )
        self.calls = 0
        self.hook_log: list[tuple[str, int]] = []

    @classmethod
    def from_recipe(cls, recipe: Any) -> Toy:
        return cls(recipe.config)

    def train_dataset(self) -> torch.utils.data.Dataset:
        return _Pairs(self.cfg.data.n, self.cfg.model.dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        loss = torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])
        if self.cfg.objective.nan_at_step is not None and self.calls == self.cfg.objective.nan_at_step:
            loss = loss * float("nan")
        return {"loss": loss, "mean_index": batch["index"].float().mean()}

    def on_epoch_start(self, epoch: int) -> None:
        self.hook_log.append(("epoch_start", epoch))

    def after_optimizer_step(self, step: int) -> None:
        self.hook_log.append(("after_step", step))

    def evaluate(self) -> dict[str, float]:
        ds = _Pairs(32, self.cfg.model.dim, seed=456)  # held out
        with torch.no_grad():
            return {"toy_mse": float(torch.nn.functional.mse_loss(self.net(ds.x), ds.y))}

    def save_model(self, path: Path, card_info: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "toy.safetensors"))
        (path / "README.md").write_text(json.dumps(card_info, default=str))
