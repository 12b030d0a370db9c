"""Training checkpoints without pickle, verified against a manifest before a resume.

``checkpoints/step_NNNNNNNN/`` holds:

| file | written by | content |
|---|---|---|
| ``model.safetensors`` | main process | the method's state dict: parameters and buffers (momentum encoders, queues, memory banks, BatchNorm statistics) |
| ``state.json`` + ``state.safetensors`` | main process | optimizer, lr scheduler, gradient scaler, trainer position, process count |
| ``rank_R.json`` + ``rank_R.safetensors`` | process R | RNG states (python, numpy, torch CPU and CUDA), the data loader's generator, the open log window |
| ``manifest.json`` | main process, last | size and sha256 of every other file |

Why not ``accelerator.save_state``: it pickles the RNG states and the registered objects
and unpickles them with ``weights_only=False``, so a crafted checkpoint runs code on
``--resume``. Here a resume reads only safetensors and JSON. A JSON file holds the
non-tensor structure of its state (nested dicts, lists, tuples, numbers) with each tensor
replaced by a reference into the safetensors file of the same name.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textcl.core.io import atomic_write_json, file_sha256, replace_dir
from textcl.core.recipe import RecipeError

__all__ = ["CheckpointError", "LogWindow", "Resumed", "find_intact", "list_checkpoints", "load", "save",
           "truncate_log", "verify"]

logger = logging.getLogger("textcl")

FORMAT = "textcl-checkpoint/1"
MANIFEST = "manifest.json"
MODEL = "model.safetensors"
STATE = "state"  # state.json + state.safetensors
#: What a pickle-based (accelerate ``save_state``) checkpoint of an older textcl holds.
_LEGACY = ("*.pkl", "*.bin", "*.pt")
#: Distributed modes whose model/optimizer state is sharded or owned by the engine:
#: ``state_dict()`` of one process is not the whole state there.
_UNSUPPORTED = ("DEEPSPEED", "FSDP", "MEGATRON_LM")
_OVERWRITE = "restart with --overwrite"


class CheckpointError(RecipeError):
    """A checkpoint cannot be resumed from; the message names the file, what is wrong and the fix.

    A ``RecipeError``, so ``python -m textcl.train`` prints it on one line and exits 2."""


@dataclass
class LogWindow:
    """One process's sums over the steps since the last log record. Checkpointed, so the
    first record after a resume averages the same steps as the uninterrupted run's."""

    start: float  # time.perf_counter() when the window opened
    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    examples: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "steps": self.steps, "examples": self.examples,
                "seconds": time.perf_counter() - self.start}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LogWindow:
        sums = {str(k): float(v) for k, v in dict(state["sums"]).items()}
        return cls(time.perf_counter() - float(state["seconds"]), sums, int(state["steps"]), int(state["examples"]))


@dataclass
class Resumed:
    """What ``load`` hands back to the trainer (the rest it restores in place)."""

    position: dict[str, float]  # TrainerState.state_dict()
    loader_state: torch.Tensor  # the DataLoader generator's state at the start of the epoch
    window: LogWindow


# ------------------------------------------------------------------ tensors + JSON
class _Tensors:
    """The tensors of one state tree, each stored once, under keys "0", "1", ..."""

    def __init__(self) -> None:
        self.by_key: dict[str, torch.Tensor] = {}
        self.keys: dict[int, str] = {}  # id(tensor) -> key
        self.storages: set[int] = set()

    def add(self, tensor: torch.Tensor) -> str:
        if id(tensor) in self.keys:  # the same tensor twice: stored once
            return self.keys[id(tensor)]
        key = self.keys[id(tensor)] = str(len(self.by_key))
        t = tensor.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in self.storages:  # safetensors refuses shared memory: copy
            t = t.clone()
        self.storages.add(t.untyped_storage().data_ptr())
        self.by_key[key] = t
        return key


def _encode(obj: Any, tensors: _Tensors, where: str) -> Any:
    """``obj`` as a JSON tree; tensors go into ``tensors`` and are referenced by key."""
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": tensors.add(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        # Non-string keys (an optimizer's state is keyed by parameter index): JSON
        # objects would turn them into strings, so the items are stored as pairs.
        return {"__items__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                              for k, v in obj.items()]}
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {where} (only tensors, numbers, "
                    "strings, lists, tuples and dicts)")


def _decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``_encode``: builds only containers, numbers, strings and tensors."""
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__tuple__" in tree:
        return tuple(_decode(v, tensors) for v in tree["__tuple__"])
    if "__items__" in tree:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in tree["__items__"]}
    return {k: _decode(v, tensors) for k, v in tree.items()}


def _fsync(path: Path) -> None:
    """Flush ``path`` to disk: the manifest must never vouch for bytes still in a cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bundle(directory: Path, name: str, obj: Any) -> None:
    """``obj`` as ``name.json`` + ``name.safetensors``, written in place (the caller's
    directory is a temporary one, renamed when complete)."""
    from safetensors.torch import save_file

    tensors = _Tensors()
    tree = _encode(obj, tensors, name)
    save_file(tensors.by_key, str(directory / f"{name}.safetensors"))
    with open(directory / f"{name}.json", "w", encoding="utf-8") as fh:
        json.dump({"format": FORMAT, "tree": tree}, fh)
    for suffix in (".safetensors", ".json"):
        _fsync(directory / f"{name}{suffix}")


def _read_bundle(directory: Path, name: str) -> Any:
    """Read back ``_write_bundle``'s files: JSON and safetensors only, never pickle."""
    from safetensors.torch import load_file

    path = directory / f"{name}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
        # Copies: optimizer.load_state_dict keeps CPU tensors as given, and they must not
        # stay views of a memory-mapped file that a later checkpoint rotation deletes.
        tensors = {k: v.clone() for k, v in load_file(str(directory / f"{name}.safetensors")).items()}
        return _decode(doc["tree"], tensors)
    except Exception as exc:  # noqa: BLE001 -- any malformed content is one clear error
        raise CheckpointError(f"{path}: malformed checkpoint state ({exc}) — {_OVERWRITE}") from None


# ------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    """This process's RNG states: python ``random``, numpy, torch CPU and every CUDA device."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [str(name), np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any], device: torch.device, where: Path) -> None:
    """Restore ``rng_state()``. Missing CUDA states on a CUDA run are an error: the
    resumed run would silently differ from the uninterrupted one."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if torch.cuda.is_available():
        if cuda is not None and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        elif device.type == "cuda":
            saved = "no" if cuda is None else len(cuda)
            raise CheckpointError(
                f"{where}: holds CUDA RNG states for {saved} devices, this process sees "
                f"{torch.cuda.device_count()} — resume on the same kind of machine, or {_OVERWRITE}"
            )


# ------------------------------------------------------------------ manifest
def write_manifest(directory: Path) -> None:
    """``manifest.json``: size and sha256 of every file in ``directory``; written last."""
    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST
    }
    atomic_write_json(directory / MANIFEST, {"format": FORMAT, "files": files})


def _manifest_files(directory: Path) -> dict[str, Any]:
    doc = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    files = doc["files"]
    if doc.get("format") != FORMAT or not isinstance(files, dict):
        raise ValueError(f"format {doc.get('format')!r}")
    return files


def verify(directory: Path) -> str | None:
    """``None`` if every file the manifest lists is there with its size and hash; otherwise
    the problem, naming the file. Files the manifest does not list are never read."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return f"{manifest}: missing (the checkpoint is incomplete)"
    try:
        files = _manifest_files(directory)
    except Exception as exc:  # noqa: BLE001 -- a torn or garbled manifest
        return f"{manifest}: unreadable ({exc})"
    for name, entry in files.items():
        path = directory / str(name)
        if Path(str(name)).name != name or name == MANIFEST:  # no paths outside the checkpoint
            return f"{manifest}: lists an invalid file name {name!r}"
        if not path.is_file():
            return f"{path}: listed in the manifest but missing"
        try:
            size, digest = int(entry["size"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            return f"{manifest}: malformed entry for {name!r}"
        if path.stat().st_size != size:
            return f"{path}: {path.stat().st_size} bytes, the manifest says {size} (truncated or overwritten)"
        if file_sha256(path) != digest:
            return f"{path}: sha256 differs from the manifest (corrupted)"
    return None


def _is_legacy(directory: Path) -> bool:
    """A pickle-based checkpoint of an older textcl (no manifest, ``.pkl``/``.bin`` files)."""
    return not (directory / MANIFEST).exists() and any(any(directory.glob(g)) for g in _LEGACY)


# ------------------------------------------------------------------ save / find / load
def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """``step_*`` checkpoint directories, oldest first (temporary ``.tmp-*`` ones excluded)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p for p in checkpoint_dir.glob("step_*") if p.is_dir())


def check_supported(accelerator: Any) -> None:
    """Refuse distributed modes whose sharded state this format does not gather."""
    name = accelerator.distributed_type.name
    if name in _UNSUPPORTED:
        raise CheckpointError(
            f"train.save_every_n_steps: checkpoints are written for single-process and DDP runs, not "
            f"{name} — launch with plain DDP, or unset train.save_every_n_steps and do not --resume"
        )


def save(accelerator: Any, final: Path, *, model: torch.nn.Module, optimizer: Any, scheduler: Any,
         position: dict[str, float], loader_state: torch.Tensor, window: LogWindow, keep: int) -> None:
    """Write a checkpoint into a temporary directory, add the manifest, rename it to
    ``final``: a kill never leaves a half-written checkpoint under a real name. Every
    process writes its own ``rank_R`` files; the main process writes the rest and keeps
    the last ``keep`` checkpoints. Collective: every process must call it."""
    from safetensors.torch import save_model

    acc, rank = accelerator, accelerator.process_index
    tmp = final.with_name(f".tmp-{final.name}")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_model(model, str(tmp / MODEL))  # drops tied duplicates; load_model restores them
        _fsync(tmp / MODEL)
        _write_bundle(tmp, STATE, {
            "world_size": acc.num_processes,
            "trainer": position,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
        })
    _write_bundle(tmp, f"rank_{rank}", {"rng": rng_state(), "loader_generator": loader_state,
                                         "log_window": window.state_dict()})
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_manifest(tmp)
        replace_dir(tmp, final)
        for old in list_checkpoints(final.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def find_intact(checkpoint_dir: Path, warn: bool = True) -> Path | None:
    """The newest checkpoint that matches its manifest; ``None`` if there is none at all.

    A corrupted or incomplete newer one is skipped with a warning naming the bad file.
    Raises ``CheckpointError`` if checkpoints exist but none is intact, or if a pickle-based
    checkpoint of an older textcl is met (it is never loaded)."""
    checkpoints = list_checkpoints(checkpoint_dir)
    if not checkpoints:
        return None
    problems = []
    for i, path in enumerate(reversed(checkpoints)):
        if _is_legacy(path):
            raise CheckpointError(f"{path}: checkpoint from an older textcl (pickle-based); not loaded — {_OVERWRITE}")
        problem = verify(path)
        if problem is None:
            return path
        problems.append(problem)
        if warn:
            then = "trying the previous one" if i + 1 < len(checkpoints) else "no earlier checkpoint"
            logger.warning("checkpoint %s is not intact: %s; %s", path.name, problem, then)
    raise CheckpointError(f"{checkpoint_dir}: no intact checkpoint ({'; '.join(problems)}) — {_OVERWRITE}")


def load(accelerator: Any, directory: Path, *, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> Resumed:
    """Restore model, optimizer, scheduler, gradient scaler and this process's RNG from a
    checkpoint that ``verify`` passed; the trainer's own state is returned. A piece that is
    missing although the manifest is intact is an error: resuming without it would
    silently differ from the uninterrupted run."""
    from safetensors.torch import load_model

    rank, world = accelerator.process_index, accelerator.num_processes
    listed = set(_manifest_files(directory))
    for name in (MODEL, f"{STATE}.json", f"{STATE}.safetensors"):
        if name not in listed:
            raise CheckpointError(f"{directory / name}: missing from the checkpoint — {_OVERWRITE}")
    state = _read_bundle(directory, STATE)
    if not isinstance(state, dict) or {"world_size", "trainer", "optimizer", "scheduler", "scaler"} - set(state):
        raise CheckpointError(f"{directory / STATE}.json: malformed checkpoint state — {_OVERWRITE}")
    if state["world_size"] != world:
        raise CheckpointError(
            f"{directory}: written by {state['world_size']} processes, resumed with {world} — resume with "
            f"{state['world_size']} processes (the data order and RNG streams depend on it), or {_OVERWRITE}"
        )
    for name in (f"rank_{rank}.json", f"rank_{rank}.safetensors"):
        if name not in listed:
            raise CheckpointError(
                f"{directory / name}: process {rank}'s RNG state is missing from the checkpoint — {_OVERWRITE}")
    where = directory / f"rank_{rank}.json"
    mine = _read_bundle(directory, f"rank_{rank}")
    try:
        back = Resumed(
            {str(k): _number(v) for k, v in dict(state["trainer"]).items()},
            mine["loader_generator"], LogWindow.from_state(mine["log_window"]),
        )
        if not isinstance(back.loader_state, torch.Tensor) or back.loader_state.dtype != torch.uint8:
            raise TypeError("loader_generator is not a generator state (uint8 tensor)")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: malformed checkpoint state ({exc}) — {_OVERWRITE}") from None
    try:
        load_model(model, str(directory / MODEL), strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state["scaler"]:
            accelerator.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{directory}: does not fit this run ({first}) — resume with the recipe that wrote it, or {_OVERWRITE}"
        ) from None
    try:
        set_rng_state(mine["rng"], accelerator.device, where)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: malformed RNG state ({exc}) — {_OVERWRITE}") from None
    return back


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    return value


def truncate_log(path: Path, step: int) -> None:
    """After a resume, drop the ``log.jsonl`` lines of steps the resumed run will redo."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
