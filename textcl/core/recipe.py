"""YAML recipe -> typed, validated ``Recipe``.

Every problem with a recipe (malformed YAML, unknown key, wrong type, bad value,
missing file, unset environment variable) raises ``RecipeError`` with one message
naming the recipe file and the key path, plus the nearest valid key when a key is
unknown. ``textcl.train`` prints it and exits with status 2, without a traceback.

Recipe layout::

    method: declutr          # registry name
    output_dir: runs/x
    seed: 42
    model: {...}             # } validated by the method's own config class
    data: {...}              # }
    objective: {...}         # }
    train: {...}             # TrainConfig (shared by every method)
    eval: {...}              # EvalConfig
    hub: {...}               # HubConfig: upload the finished model (optional)

String values may use ``${ENV_VAR}`` (or ``${ENV_VAR:-default}``); paths may use
``textcl://data/NAME`` for files shipped in the package.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from textcl.core.errors import RecipeError

__all__ = [
    "EvalConfig",
    "EvaluatorConfig",
    "HubConfig",
    "InputFile",
    "OutputDir",
    "Recipe",
    "RecipeError",
    "TrainConfig",
    "apply_overrides",
    "flat_config",
    "load_recipe",
    "parse_config_yaml",
    "read_config",
    "read_config_text",
    "resolve_input_path",
    "substitute_env",
    "validate_config",
]


_Model = TypeVar("_Model", bound=BaseModel)


def resolve_input_path(value: str | Path) -> Path:
    """``textcl://data/NAME`` -> packaged file; otherwise an expanded local path."""
    from textcl.data import resolve_path

    return resolve_path(str(value))


def _existing_file(value: str) -> str:
    if value.startswith("hf://"):  # a hub dataset: checked when it is loaded
        return value
    try:
        path = resolve_input_path(value)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    if not path.exists():
        raise ValueError(f"file not found: {value} -- fix the path (relative paths are relative to the working directory)")
    return str(path)


#: A recipe field naming an input file that must exist.
InputFile = Annotated[str, AfterValidator(_existing_file)]


def _non_empty_dir(value: str) -> str:
    # Path("") is the working directory: the model would land among the user's files.
    if not value.strip():
        raise ValueError("is empty — set a directory, e.g. runs/my-run")
    return value


#: A recipe field naming an output directory (not empty: that would be the working directory).
OutputDir = Annotated[str, AfterValidator(_non_empty_dir)]


def read_config_text(path: str | Path, what: str = "recipe") -> str:
    """The text of a YAML config file; ``RecipeError`` (one line) if it is missing, a
    directory, unreadable, binary or not UTF-8."""
    source = str(path)
    p = Path(path)
    if p.is_dir():
        raise RecipeError(f"{source}: is a directory, not a {what} file — give the path of a .yaml file")
    if not p.is_file():
        raise RecipeError(f"{source}: {what} file not found")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{source}: cannot be read ({exc.strerror or exc}) — check the file's permissions") from None
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise RecipeError(f"{source}: line {line}: binary data (a NUL byte), not YAML text — give the path of a {what} .yaml file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"{source}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}) — save the {what} as UTF-8"
        ) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


#: pip package of each Accelerate tracker whose package name differs from the tracker's.
_TRACKER_PACKAGES = {"comet_ml": "comet-ml"}


def _tracker_list(value: Any) -> Any:
    # `report_to: tensorboard` reads as a one-item list; `none` (as in transformers) as no tracker.
    if isinstance(value, str):
        return [] if value.strip().lower() == "none" else [value]
    return value


def _tracker(value: str) -> str:
    """An Accelerate tracker name whose package is installed (Accelerate itself would skip a
    missing one with a debug message, and the run would log nowhere)."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    valid = sorted(t.value for t in LoggerType if t != LoggerType.ALL)
    if value not in valid:
        close = difflib.get_close_matches(value, valid, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown tracker — use one of: {', '.join(valid)}{hint}")
    if LoggerType(value) not in get_available_trackers():
        package = _TRACKER_PACKAGES.get(value, value)
        raise ValueError(
            f"the {value} tracker needs the {package!r} package, which is not installed — "
            f"pip install {package}, or remove {value} from train.report_to"
        )
    return value


class TrainConfig(_Strict):
    """Optimisation settings shared by every method."""

    batch_size: int = Field(32, ge=1, description="examples per process per micro-step")
    gradient_accumulation_steps: int = Field(1, ge=1)
    mini_batch_size: int | None = Field(
        None, ge=1,
        description="GradCache: encode each side of a batch in passes of at most this many rows "
        "(no-gradient pass, loss on the whole batch, then a replayed pass with gradient), so an "
        "in-batch contrastive loss sees batch_size x processes examples while activation memory "
        "stays that of one mini-batch; same loss and gradients as without it (dropout replayed), "
        "for about one extra forward pass. Methods implementing embedding_inputs + "
        "loss_from_embeddings only (textcl.core.gradcache); CPU and GPU alike",
    )
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    max_minutes: float | None = Field(
        None, gt=0,
        description="wall-clock training budget (evaluation and checkpoint time excluded); "
        "training stops at the first step past it, and with no max_steps the lr schedule "
        "runs on the elapsed fraction of the budget; epochs then only cap it when set explicitly",
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op CPU threads; default: torch's")
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, lt=1)
    lars_trust_coefficient: float = Field(0.001, gt=0)
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr / peak lr")
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no",
        description="autocast dtype for forward passes (weights and optimizer stay float32; "
        "info_nce computes its logits in float32). GPU: bf16 on Ampere+ is the fast safe choice; "
        "fp16 adds a dynamic loss scale. CPU: bf16 autocast runs where the CPU has bf16 "
        "instructions (AVX512-BF16/AMX) and is often slower elsewhere; fp16 is for GPUs",
    )
    tf32: bool = Field(
        False,
        description="let CUDA float32 matmuls/convolutions use TF32 tensor cores (Ampere+ GPUs; "
        "~10 mantissa bits in the products, float32 range and accumulation) for the run; "
        "no effect on CPU",
    )
    compile: bool = Field(
        False,
        description="torch.compile the method's encoder(s) in place (Method.compile_modules; for "
        "text the transformer, not the chunk loop). The first steps are slow while it compiles "
        "(and again for new input shapes); GPU: usually faster steps; CPU: needs a C++ compiler "
        "for inductor, and the gain is small",
    )
    log_every_n_steps: int = Field(10, ge=1)
    save_every_n_steps: int | None = Field(None, ge=1)
    keep_last_checkpoints: int = Field(2, ge=1)
    num_workers: int = Field(
        0, ge=0,
        description="DataLoader worker processes building batches (tokenising, collating) "
        "while the model runs; 0 = in the training process. Helps CPU-heavy collate on both CPU "
        "and GPU, but on a few CPU cores workers compete with torch's threads",
    )
    pin_memory: bool | None = Field(
        None,
        description="page-locked host memory for batches, so copies to the GPU are asynchronous "
        "(non_blocking). Default: on when num_workers > 0 and training on CUDA. Ignored on CPU",
    )
    cpu: bool = False
    ddp_find_unused_parameters: bool = False
    report_to: Annotated[list[Annotated[str, AfterValidator(_tracker)]], BeforeValidator(_tracker_list)] = Field(
        default_factory=list,
        description="experiment trackers (Accelerate's: tensorboard, wandb, mlflow, trackio, aim, "
        "comet_ml, clearml, dvclive, swanlab) that get the log.jsonl scalars and eval metrics at the "
        "same steps, plus the resolved recipe as the run config; main process only. Local files go "
        "to output_dir/tracking/ (TensorBoard, Aim; W&B's run dir). Default: none",
    )


def _repo_id(value: str | None) -> str | None:
    if value is None:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        raise ValueError(
            "not a valid repo id — use 'user-or-org/name': letters, digits, '-', '_', '.', at most 96 characters"
        ) from None
    return value


class HubConfig(_Strict):
    """Upload the finished model to the Hugging Face Hub (``textcl.hub.push_to_hub``).

    The token comes from ``HF_TOKEN`` or ``hf auth login``, never from the recipe: the
    resolved recipe is written into output_dir and uploaded with the model.
    """

    repo_id: Annotated[str | None, AfterValidator(_repo_id)] = Field(
        None, description="'user-or-org/name' (or 'name': the token's user) to upload to at the end "
        "of a successful run, main process only; default: no upload. The repo is created (or "
        "checked) before training starts, so a missing token or network fails then"
    )
    private: bool = Field(False, description="create the repo as private (an existing repo keeps its visibility)")
    commit_message: str | None = Field(None, description="default: 'Upload <method> model trained with textcl'")


class EvaluatorConfig(_Strict):
    """One evaluation callback (``name`` from the evaluator registry)."""

    name: Literal["sts"] = "sts"
    path: InputFile
    prefix: str | None = Field(None, description="metric name prefix; default: the file stem")
    batch_size: int = Field(64, ge=1)


class EvalConfig(_Strict):
    every_n_steps: int | None = Field(None, ge=1)
    before_training: bool = True
    evaluators: list[EvaluatorConfig] = []


class _TopLevel(_Strict):
    method: str
    output_dir: OutputDir
    seed: int = 42
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    objective: dict[str, Any] = {}
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    hub: HubConfig = HubConfig()


class Recipe:
    """A validated recipe: shared sections typed here, method sections typed by the method."""

    def __init__(self, path: str, top: _TopLevel, method_config: BaseModel, resolved: dict[str, Any],
                 user_set: dict[str, Any] | None = None, overrides: list[str] | None = None):
        self.path = path
        self.method = top.method
        self.output_dir = Path(top.output_dir)
        self.seed = top.seed
        self.train = top.train
        self.eval = top.eval
        self.hub = top.hub
        #: The method's config object with ``.model``, ``.data``, ``.objective``.
        self.config = method_config
        self.resolved = resolved
        #: What the recipe file and ``--set`` gave (the rest are defaults).
        self.user_set = resolved if user_set is None else user_set
        self.overrides = list(overrides or [])

    def to_yaml(self) -> str:
        """The recipe as run: the keys the recipe and ``--set`` gave, as YAML, then every default
        that was filled in, as comments. Loading it gives the same run: a default written as a
        key would count as set (e.g. ``train.epochs``, which caps a time-budgeted run only when
        set)."""
        source = Path(self.path)  # no absolute local path in a published card
        lines = [f"# resolved from {source.name if source.is_absolute() else source}"]
        if self.overrides:
            lines.append("# --set " + " --set ".join(self.overrides))
        text = "\n".join(lines) + "\n" + yaml.safe_dump(self.user_set, sort_keys=False, allow_unicode=True)
        given = dict(_flatten(self.user_set))
        defaults = [(k, v) for k, v in _flatten(self.resolved) if k not in given]
        if defaults:
            text += "# defaults (not set; filled in by the schemas):\n" + "".join(
                f"#   {k}: {json.dumps(v)}\n" for k, v in defaults
            )
        return text


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]`` (lists and scalars are leaves)."""
    if isinstance(node, dict) and node:
        return [kv for k, v in node.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, node)]


def flat_config(resolved: dict[str, Any]) -> dict[str, bool | int | float | str | None]:
    """A resolved recipe as one level of dotted keys (``{"train.lr": 2e-05, ...}``), the run
    config trackers store. Lists and empty mappings become JSON text: TensorBoard's hparams
    and MLflow's params take scalars only."""
    return {
        key: value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
        for key, value in _flatten(resolved)
    }


# ---------------------------------------------------------------------------------
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, loc: str, source: str) -> Any:
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{loc}.{k}" if loc else str(k), source) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{loc}[{i}]", source) for i, v in enumerate(node)]
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                if m.group(2) is not None:
                    return m.group(2)
                raise RecipeError(
                    f"{source}: {loc}: environment variable {m.group(1)} is not set "
                    f"-- export it (e.g. export {m.group(1)}=../shared/data) or edit the value"
                )
            return value

        return _ENV.sub(repl, node)
    return node


def _parse_override(item: str, source: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"{source}: --set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _apply_override(data: dict[str, Any], keys: list[str], value: Any, item: str, source: str) -> None:
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{source}: --set {item}: {'.'.join(keys[: i + 1])} is not a mapping")
        node = child
    node[keys[-1]] = value


def substitute_env(data: Any, source: str) -> Any:
    """``data`` with ``${VAR}`` / ``${VAR:-default}`` replaced in every string (nested mappings
    and lists too); ``RecipeError`` naming ``source`` and the key when a variable is unset."""
    return _expand_env(data, "", source)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str) -> None:
    """Apply ``--set KEY=VALUE`` items to ``data`` in place: dotted keys reach into (and create)
    nested mappings, values are parsed as YAML (``1e-4`` a number, ``[a, b]`` a list)."""
    for item in overrides:
        keys, value = _parse_override(item, source)
        _apply_override(data, keys, value, item, source)


def parse_config_yaml(text: str, source: str, what: str = "recipe",
                      keys: str = "method, model, data, ...") -> dict[str, Any]:
    """The mapping the YAML ``text`` of a config file holds (an empty file: ``{}``).
    ``RecipeError`` naming ``source`` when it is malformed (with line and column) or not a
    mapping (``what``: the kind of file, ``keys``: its top-level keys, for the message)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{source}: malformed YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the {what} must be a mapping of keys ({keys})")
    return data


def read_config(path: str | Path, overrides: Iterable[str] = (), what: str = "recipe",
                keys: str = "method, model, data, ...") -> dict[str, Any]:
    """Read a YAML config file (a recipe, a pipeline config), apply ``--set`` overrides and
    expand ``${VAR}``: the raw mapping, ready for ``validate_config``. Every problem raises
    ``RecipeError`` naming the file (``read_config_text``, ``parse_config_yaml``)."""
    source = str(path)
    data = copy.deepcopy(parse_config_yaml(read_config_text(path, what), source, what, keys))
    apply_overrides(data, overrides, source)
    return substitute_env(data, source)


def validate_config(model: type[_Model], data: Any, source: str) -> _Model:
    """``model.model_validate(data)``; ``RecipeError`` with one line per problem naming
    ``source`` and the key path (and, for an unknown key, the nearest valid one)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, model, source)) from None


def _fields_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Valid field names of the (nested) model at ``loc`` -- for 'did you mean'."""
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _format_errors(err: ValidationError, model: type[BaseModel], source: str, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = prefix + ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc)
        path = path.replace(".[", "[")
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            valid_txt = f" (valid keys: {', '.join(valid)})" if valid else ""
            lines.append(f"{source}: {path}: unknown key{hint}{valid_txt}")
        elif e["type"] == "missing":
            lines.append(f"{source}: {path}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            value = e.get("input")
            shown = f" (got {value!r})" if value is not None and not isinstance(value, (dict, list)) else ""
            # The value belongs to the "what" part of a message, before its " — fix".
            what, dash, fix = msg.partition(" — ")
            msg = f"{what}{shown}{dash}{fix}"
            # A whole-section rule (a model validator) has no key path of its own.
            lines.append(f"{source}: {path}: {msg}" if path else f"{source}: {msg}")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override, expand and validate a recipe file. Raises ``RecipeError``."""
    source = str(path)
    top = validate_config(_TopLevel, read_config(path, overrides or []), source)

    from textcl.core.method import get_method_class

    try:
        cls = get_method_class(top.method)
    except KeyError as exc:
        raise RecipeError(f"{source}: method: {exc.args[0]}") from None
    sections = {"model": top.model, "data": top.data, "objective": top.objective}
    method_config = validate_config(cls.config_class, sections, source)
    if top.train.mini_batch_size is not None:
        from textcl.core.gradcache import check_gradcache_support

        check_gradcache_support(cls, name=top.method, source=source)

    resolved = {
        "method": top.method,
        "output_dir": top.output_dir,
        "seed": top.seed,
        **method_config.model_dump(mode="json"),
        "train": top.train.model_dump(mode="json"),
        "eval": top.eval.model_dump(mode="json"),
        "hub": top.hub.model_dump(mode="json"),
    }
    user_set = {
        "method": top.method,
        "output_dir": top.output_dir,
        **({"seed": top.seed} if "seed" in top.model_fields_set else {}),
        **method_config.model_dump(mode="json", exclude_unset=True),
        **{k: getattr(top, k).model_dump(mode="json", exclude_unset=True)
           for k in ("train", "eval", "hub") if k in top.model_fields_set},
    }
    return Recipe(source, top, method_config, resolved, user_set, list(overrides or []))
