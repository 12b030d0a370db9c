"""recipes/text/scratch/neighbour-bag-sif-bt.yaml: the second stage of a sequential schedule.
It trains on from the first stage's saved bag, keeps that model's frozen start half and SIF
weights, and moves only the trained table."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from textcl.encoders import TextEncoder
from textcl.train import main

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import tiny_encoder  # noqa: E402

SCRATCH = Path(__file__).resolve().parents[1] / "recipes" / "text" / "scratch"
pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [
    ("my hands shook and i made a bad job of it", "my hands trembled and i did a bad job"),
    ("he was too tired to mind the questions", "he was too tired to care about the questions"),
    ("the ship sailed at dawn", "the boat left at sunrise"),
    ("she laughed at the old joke", "she smiled at the old jest"),
    ("the road was long and dusty", "the path was long and dry"),
    ("they ate bread and cheese by the fire", "they had bread and cheese near the fire"),
    ("the king rode into the town", "the monarch rode into the city"),
    ("rain fell all night on the roof", "it rained on the roof the whole night"),
]


def test_stage_two_reads_stage_one_and_differs_in_objective_only():
    stage2 = yaml.safe_load((SCRATCH / "neighbour-bag-sif-bt.yaml").read_text())
    stage1 = yaml.safe_load((SCRATCH / "neighbour-bag-sif.yaml").read_text())
    # The default start is where python -m textcl.train neighbour-bag-sif.yaml saves its model.
    assert stage2["model"] == {"name_or_path": "${TEXTCL_BAG_STAGE1:-" + stage1["output_dir"] + "}"}
    assert (stage2["method"], stage2["objective"]["mode"]) == ("simcse", "supervised")
    assert stage2["seed"] == stage1["seed"]
    same = ("batch_size", "optimizer", "lr", "scheduler", "warmup_ratio", "threads")
    assert {k: stage2["train"][k] for k in same} == {k: stage1["train"][k] for k in same}


def test_stage_two_keeps_the_start_half_and_token_weights_and_trains_the_bag(tmp_path, monkeypatch):
    plain = tiny_encoder(tmp_path)
    table0 = plain.transformer.get_input_embeddings().weight.detach().clone()
    weights = torch.rand(table0.shape[0]) + 0.1
    stage1 = TextEncoder(plain.transformer, plain.tokenizer, max_seq_length=32, bow_weight=1.0, context_weight=0.0,
                         start_bag_weight=1.0, token_weights=weights)
    with torch.no_grad():  # stage 1 moved its trained table away from the start copy
        stage1.transformer.get_input_embeddings().weight.add_(0.05 * torch.randn_like(table0))
    trained1 = stage1.transformer.get_input_embeddings().weight.detach().clone()
    stage1.save(tmp_path / "stage1", model_card="# stage 1\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"text": a, "translations": [b]}) + "\n" for a, b in PAIRS))
    overrides = [f"output_dir={tmp_path / 'stage2'}", "data.held_out_fraction=0.25", "data.max_eval_documents=8", "data.max_tokens=16",
                 f"data.pairs={pairs}", "train.batch_size=4", "train.max_steps=6", "train.max_minutes=null",
                 "train.lr=0.05", "eval.evaluators=[]", "train.threads=1"]
    argv = [str(SCRATCH / "neighbour-bag-sif-bt.yaml")] + [a for o in overrides for a in ("--set", o)]
    monkeypatch.setenv("TEXTCL_BAG_STAGE1", str(tmp_path / "stage1"))
    assert main(argv) == 0
    out = TextEncoder.from_pretrained(tmp_path / "stage2")
    assert (out.bow_weight, out.context_weight, out.start_bag_weight) == (1.0, 0.0, 1.0)
    assert torch.equal(out.start_bag.weight, table0)
    torch.testing.assert_close(out.token_weights, weights)
    trained2 = out.transformer.get_input_embeddings().weight.detach()
    ids = torch.tensor(sorted({i for a, b in PAIRS for i in plain.tokenizer(a + " " + b)["input_ids"]}))
    # The rows of the pairs' tokens moved.
    assert (trained2[ids] - trained1[ids]).abs().max() > 1e-2
    others = torch.ones(len(table0), dtype=torch.bool)
    others[ids] = False
    # Rows of tokens in no pair only shrink by AdamW's decay: stage 2 began at stage 1's table.
    torch.testing.assert_close(trained2[others], trained1[others], atol=2e-3, rtol=0)
    assert (trained1 - table0).abs().max() > 0.1
