"""Process-wide device switches around a training run (``textcl.core.trainer``): Accelerate's
process state, whether torch sees an accelerator, and TF32 matmuls for the run's duration."""

from __future__ import annotations

import torch

__all__ = ["accelerator_device", "allow_tf32", "reset_single_process_accelerate_state"]


def reset_single_process_accelerate_state() -> None:
    """Let a second Trainer in one process use another precision/device (notebooks, tests).

    Accelerate keeps process-wide state and refuses a new ``mixed_precision`` once it is
    set. In a single process nothing else depends on it, so it is reset; under a
    distributed launch it stays, since it holds the process group.
    """
    from accelerate.state import AcceleratorState, PartialState

    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)


def accelerator_device() -> bool:
    """Whether torch sees a GPU-like device. Without one, Accelerate must be given
    ``cpu=True``: otherwise, under ``torchrun``, it finds no backend for the processes and
    each trains alone as rank 0 (``DistributedType.NO``), all writing the same output_dir."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


class allow_tf32:
    """Context: ``train.tf32`` lets CUDA float32 matmuls and convolutions use TF32 tensor
    cores (Ampere and later); restores the previous flags. No effect on CPU."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self) -> None:
        if self.enabled:
            # The legacy flags, not torch.backends.*.fp32_precision: mixing the two APIs
            # makes torch.get_float32_matmul_precision() raise in torch >= 2.9.
            self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
