"""Base ``Method`` class with the hooks the trainer calls, and the method registry.

A method is an ``nn.Module`` that owns its encoder(s), heads and loss, knows how to
build its training data from the recipe, and returns ``{"loss": ..., **metrics}``
from ``forward(batch)``. The trainer only calls the hooks below; it never knows an
objective by name. How the later methods fit:

* MoCo / CERT: ``after_optimizer_step`` does the momentum update and enqueues the
  keys computed in ``forward`` (queue = registered buffer, so it is checkpointed).
* NPID / PIRL: the batch carries dataset ``index``; ``after_optimizer_step`` writes
  the new features into the memory bank at those indices.
* SwAV: ``before_optimizer_step`` zeroes the prototype gradients during the first
  iterations; ``after_optimizer_step`` (or ``forward``) re-normalises prototypes.
* SGNS: ``configure_optimizer`` returns a plain SGD over the two embedding tables whose
  lr the recipe's ``scheduler: linear`` decays as word2vec does. The autograd backend
  (``backend: torch``) backpropagates sparse row gradients that the optimizer applies with
  ``index_add_``; the CPU backend sets ``updates_in_forward``: a fused kernel applies
  word2vec's per-pair SGD inside ``forward`` and the trainer skips backward/step.
* Several augmented views: the method's ``collate`` builds them; ``forward`` sees all.
* LARS with bias/BN exclusion: ``parameter_groups`` flags groups with
  ``lars_exclude`` / ``weight_decay`` and the trainer's LARS honours the flags.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from textcl.core.recipe import Recipe

__all__ = [
    "METHODS",
    "Method",
    "MethodConfig",
    "available_methods",
    "get_method_class",
    "register_method",
]


class MethodConfig(BaseModel):
    """Base for a method's recipe sections. Unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Method(nn.Module):
    """Base class of every text objective and vision method."""

    #: Registry name (``method:`` in a recipe).
    name: ClassVar[str] = ""
    #: Pydantic model validating the recipe sections ``model``, ``data``, ``objective``.
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    #: BibTeX of the paper the method implements (goes into the model card).
    citation: ClassVar[str] = ""
    #: True when ``forward`` itself applies the parameter update (a fused kernel, e.g.
    #: word2vec's per-pair sparse SGD, where autograd + ``optimizer.step`` would be far
    #: slower). The trainer then skips backward, gradient clipping and ``optimizer.step()``
    #: but still steps the lr scheduler (read the lr from the optimizer that
    #: ``configure_optimizer`` returned), logs, checkpoints and calls every hook.
    #: An instance may set it (e.g. per backend).
    updates_in_forward: bool = False

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_recipe(cls, recipe: Recipe) -> Method:
        """Build the method (weights included) from a validated recipe."""
        raise NotImplementedError

    def train_dataset(self) -> torch.utils.data.Dataset:
        """Map-style dataset of training examples.

        Randomness inside ``__getitem__`` must derive from (seed, epoch, index) -- the
        trainer calls ``set_epoch(epoch)`` on the dataset if it has one -- so a resumed
        run and any number of dataloader workers see the same examples.
        """
        raise NotImplementedError

    def collate(self, examples: list[Any]) -> Any:
        """Turn a list of dataset items into a batch (tensors, possibly nested dicts)."""
        return torch.utils.data.default_collate(examples)

    def examples_in(self, batch: Any) -> int:
        """Number of training examples in ``batch`` (for examples/s)."""
        if isinstance(batch, dict):
            for value in batch.values():
                if isinstance(value, torch.Tensor):
                    return int(value.shape[0])
                if isinstance(value, dict):
                    return self.examples_in(value)
        return 0

    # ---- optimisation -------------------------------------------------------------
    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Default groups: decay for weights; no decay and no LARS adaptation for
        biases and normalisation parameters (1-D tensors), as SimCLR/BYOL do.

        A submodule may set per-parameter options through ``parameter_options()`` (a dict
        ``id(param) -> {"lr_scale": float, "anchor": tensor, "anchor_weight": float}``, see
        :func:`textcl.core.optim.build_optimizer`); parameters with the same options share a group.
        """
        options: dict[int, dict[str, Any]] = {}
        for module in self.modules():
            hook = getattr(module, "parameter_options", None)
            if callable(hook) and module is not self:
                options.update(hook())
        grouped: dict[tuple[Any, ...], dict[str, Any]] = {}
        for _, param in self.named_parameters():
            if not param.requires_grad:
                continue
            opts = options.get(id(param), {})
            no_decay = param.ndim <= 1
            key = (no_decay, opts.get("lr_scale", 1.0), opts.get("anchor_weight", 0.0))
            group = grouped.get(key)
            if group is None:
                group = grouped[key] = {
                    "params": [],
                    "weight_decay": 0.0 if no_decay else weight_decay,
                    "lars_exclude": no_decay,
                }
                if key[1] != 1.0:
                    group["lr_scale"] = key[1]
                if key[2]:
                    group["anchor_weight"], group["anchor"] = key[2], []
            group["params"].append(param)
            if key[2]:
                group["anchor"].append(opts["anchor"])
        # Decay groups first, as before per-parameter options existed (optimizer state order).
        return sorted(grouped.values(), key=lambda g: g["lars_exclude"])

    def configure_optimizer(self, train_config: Any) -> torch.optim.Optimizer | None:
        """Return a custom optimizer, or ``None`` for the trainer's default."""
        return None

    def compile_modules(self) -> list[nn.Module]:
        """Submodules that ``train.compile: true`` compiles in place (``module.compile()``, so
        state-dict keys and checkpoints do not change): by default the ``encoder`` and
        ``backbone`` attributes that exist. Momentum copies and heads stay eager."""
        return [m for m in (getattr(self, "encoder", None), getattr(self, "backbone", None)) if isinstance(m, nn.Module)]

    # ---- hooks (all optional) -------------------------------------------------------
    def on_train_start(self, trainer: Any) -> None:
        """Called once, after the model is on its device and before the first step."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of each epoch (also when resuming mid-epoch)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called when an epoch's batches are exhausted."""

    def before_optimizer_step(self, step: int) -> None:
        """After backward and clipping, before ``optimizer.step()``; ``step`` counts
        completed optimizer steps so far (0 for the first)."""

    def after_optimizer_step(self, step: int) -> None:
        """After ``optimizer.step()``; ``step`` = completed optimizer steps (>= 1)."""

    # ---- evaluation and output --------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Pretext metrics on held-out data (e.g. top-1 retrieval accuracy)."""
        return {}

    def save_model(self, path: Path, card_info: dict[str, Any]) -> None:
        """Write the final model (for text: a sentence-transformers directory)."""
        raise NotImplementedError

    def card_info(self) -> dict[str, Any]:
        """Facts for the generated model card (objective, base model, ...)."""
        return {"objective": self.name, "objective_citation": self.citation}


# Built-in methods, resolved lazily so importing textcl never imports vision or
# transformers. Third-party packages register through the ``textcl.methods``
# entry-point group (name = "module:Class") or ``register_method``.
METHODS: dict[str, str] = {
    "declutr": "textcl.objectives.declutr:DeCLUTR",
    "cert": "textcl.objectives.cert:CERT",
    "sgns": "textcl.objectives.skipgram:SGNS",
    "nsp": "textcl.objectives.next_sentence:NextSentence",
    "neighbour": "textcl.objectives.neighbour_sentence:NeighbourSentence",
    "permutation": "textcl.objectives.permutation:SentencePermutation",
    "permutation-pirl": "textcl.objectives.permutation_pirl:PermutationPIRL",
    "simcse": "textcl.objectives.simcse:SimCSE",
    "simclr": "textcl.vision.methods.simclr:SimCLR",
    "npid": "textcl.vision.methods.memory_bank:NPID",
    "pirl": "textcl.vision.methods.memory_bank:PIRL",
    "moco": "textcl.vision.methods.moco:MoCo",
    "swav": "textcl.vision.methods.swav:SwAV",
}

_RUNTIME: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator registering a method under ``name`` at runtime."""

    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = cls.name or name
        _RUNTIME[name] = cls
        return cls

    return wrap


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="textcl.methods")}


def available_methods() -> list[str]:
    return sorted(set(METHODS) | set(_RUNTIME) | set(_entry_points()))


def get_method_class(name: str) -> type[Method]:
    """Resolve a recipe's ``method:`` name to its class (KeyError with a suggestion)."""
    if name in _RUNTIME:
        return _RUNTIME[name]
    target = METHODS.get(name) or _entry_points().get(name)
    if target is None:
        names = available_methods()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown method {name!r}{hint} (available: {', '.join(names)})")
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{target} is not a textcl Method subclass")
    return cls
