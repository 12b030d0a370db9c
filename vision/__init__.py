"""Contrastive image learning on the textcl trainer: SimCLR, NPID / PIRL, MoCo v2, SwAV.

* ``vision.backbones`` -- ResNet-18/50 (CIFAR stem option), a small ResNet, ViT-tiny,
  from ``transformers`` configs; safetensors output.
* ``vision.augment`` -- batched on-device augmentations (views, multi-crop, jigsaw).
* ``vision.methods`` -- the methods, registered in ``textcl.core.method.METHODS``
  (``simclr``, ``npid``, ``pirl``, ``moco``, ``swav``) and run by
  ``python -m textcl.train recipes/vision/<method>_cifar10[_cpu].yaml``.
* ``vision.evaluate`` -- weighted kNN and linear probe on frozen features.
* ``vision.data`` -- CIFAR-10 (shared npz or hub), image folders, synthetic test data.
"""
