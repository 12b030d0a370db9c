"""The pipeline config of ``python -m textcl.scratch``: one section per stage, and its reader.

``recipes/text/scratch/pipeline.yaml`` is read like a recipe (``--set`` overrides,
``${VAR}`` expansion, one ``RecipeError`` line per problem naming the key: the readers of
:mod:`textcl.core.recipe`) and validated into a :class:`PipelineConfig`, whose sections
are strict (an unknown key is an error). The ``mlm:`` section is
:class:`textcl.scratch_mlm.MLMStage`, beside the stage it configures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from textcl.core.recipe import OutputDir
from textcl.scratch_mlm import MLMStage

__all__ = [
    "EmbeddingStage",
    "ModelStage",
    "PipelineConfig",
    "SgnsStage",
    "TokenizerStage",
    "TrainStage",
    "load_pipeline_config",
]

DEFAULT_CONFIG = "recipes/text/scratch/pipeline.yaml"
DEFAULT_CORPUS = "${TEXTCL_DATA}/corpora/gutenberg_sentences.txt.gz"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TokenizerStage(_Strict):
    """Stage 1: WordPiece vocabulary."""

    files: list[str] | None = Field(None, validate_default=True, description=f"default: {DEFAULT_CORPUS}")
    vocab_size: int = Field(16000, ge=8)
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = True
    max_lines: int | None = Field(None, ge=1, description="read at most this many texts")
    text_field: str = "text"

    @field_validator("files")
    @classmethod
    def _files_exist(cls, files: list[str] | None) -> list[str]:
        if files is None:
            data = os.environ.get("TEXTCL_DATA")
            if not data:
                raise ValueError(
                    "no corpus given and TEXTCL_DATA is not set -- export TEXTCL_DATA=../shared/data "
                    "or list tokenizer.files"
                )
            files = [DEFAULT_CORPUS.replace("${TEXTCL_DATA}", data)]
        if not files:
            raise ValueError("at least one corpus file is needed")
        missing = [f for f in files if not Path(f).expanduser().is_file()]
        if missing:
            raise ValueError(f"file not found: {', '.join(missing)} -- fix the path or set TEXTCL_DATA")
        return files


class ModelStage(_Strict):
    """Stage 3: BERT size (BertConfig)."""

    layers: int = Field(4, ge=1)
    hidden: int = Field(256, ge=8)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(1024, ge=8)
    max_position: int = Field(128, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = 0


class SgnsStage(_Strict):
    """Stage 2: SGNS word vectors (``vectors`` given: use that file instead of training)."""

    enabled: bool = True
    recipe: str = "recipes/text/sgns.yaml"
    overrides: list[str] = []
    vectors: str | None = None


class EmbeddingStage(_Strict):
    """Stage 4: how SGNS vectors enter the input embeddings."""

    scale: Literal["match", "none"] | float = Field("match", union_mode="left_to_right")
    rest: Literal["keep", "zero"] = "keep"
    lowercase_fallback: bool = True


class TrainStage(_Strict):
    """Stage 6 (optional): an objective recipe trained from base-mlm (mlm.enabled) or base-sgns."""

    recipe: str | None = None
    overrides: list[str] = []


class PipelineConfig(_Strict):
    """``recipes/text/scratch/pipeline.yaml``: unknown keys are errors."""

    output_dir: OutputDir = "runs/scratch"
    tokenizer: TokenizerStage = Field(default_factory=TokenizerStage)
    sgns: SgnsStage = SgnsStage()
    model: ModelStage = ModelStage()
    embeddings: EmbeddingStage = EmbeddingStage()
    mlm: MLMStage = MLMStage()
    train: TrainStage = TrainStage()


def load_pipeline_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read, override (``--set a.b=v``), expand ``${VAR}`` and validate; ``RecipeError`` on any problem."""
    from textcl.core.recipe import RecipeError, read_config, validate_config

    source = str(path)
    if not Path(path).exists():
        raise RecipeError(f"{source}: pipeline config not found (default: {DEFAULT_CONFIG})")
    data = read_config(path, overrides, what="pipeline config", keys="output_dir, tokenizer, ...")
    data.setdefault("tokenizer", {})
    return validate_config(PipelineConfig, data, source)
