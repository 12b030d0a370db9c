"""Contrastive image learning on the textcl trainer: SimCLR, NPID / PIRL, MoCo v2, SwAV.

* ``textcl.vision.backbones`` -- ResNet-18/50 (CIFAR stem option), a small ResNet, ViT-tiny,
  from ``transformers`` configs; safetensors output.
* ``textcl.vision.augment`` -- batched on-device augmentations (views, multi-crop, jigsaw).
* ``textcl.vision.methods`` -- the methods, registered in ``textcl.core.method.METHODS``
  (``simclr``, ``npid``, ``pirl``, ``moco``, ``swav``) and run by
  ``python -m textcl.train recipes/vision/<method>_cifar10[_cpu].yaml``.
* ``textcl.vision.evaluate`` -- weighted kNN and linear probe on frozen features.
* ``textcl.vision.data`` -- CIFAR-10 (shared npz or hub), image folders, synthetic test data.

The code lives in the repository's top-level ``vision/`` folder and installs as
``textcl.vision`` (``package-dir`` in pyproject.toml): a top-level ``vision`` package in
site-packages could collide with another distribution's. It used to be importable as
``vision``; that name is gone (a shim under it would be the very collision).
"""

if __name__ != "textcl.vision":  # the folder imported by its own name, e.g. from the repository root
    raise ImportError(
        f"{__name__!r} is the folder of the package textcl.vision: import textcl.vision (e.g. "
        "from textcl.vision.backbones import load_backbone); after a checkout, pip install -e ."
    )
