"""The real Trainer under 2 gloo processes (Accelerate + DDP) == 1 process, 2x batch."""

import os
import socket

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(batch_size):
    from textcl.core.recipe import TrainConfig

    return TrainConfig(batch_size=batch_size, max_steps=5, lr=0.05, scheduler="constant", cpu=True,
                       log_every_n_steps=1, save_every_n_steps=5)


def _toy():
    from _toy import Toy, ToyConfig

    torch.manual_seed(0)
    return Toy(ToyConfig())


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    from textcl.core.trainer import Trainer

    method = _toy()
    trainer = Trainer(method, _cfg(4), out_dir, seed=11)
    trainer.fit()
    torch.save({k: v.clone() for k, v in method.state_dict().items()}, os.path.join(out_dir, f"w{rank}.pt"))
    trainer.accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


def test_two_process_trainer_equals_one_process(tmp_path):
    from textcl.core.trainer import Trainer

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    single = _toy()
    Trainer(single, _cfg(8), tmp_path / "single", seed=11).fit()
    w0 = torch.load(tmp_path / "ddp" / "w0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "ddp" / "w1.pt", weights_only=True)
    for name, p in single.state_dict().items():
        assert torch.allclose(w0[name], p, atol=1e-6), name
        assert torch.equal(w0[name], w1[name]), name  # ranks stay in sync
    # only rank 0 wrote the log, and it holds one line per step
    lines = (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 5 + 1  # 5 steps + final eval line
    assert (tmp_path / "ddp" / "checkpoints" / "step_00000005" / "model.safetensors").exists()
