"""Contrastive image methods on the textcl trainer (registered in ``textcl.core.method.METHODS``):

* ``simclr`` -- ``simclr.SimCLR``
* ``npid``, ``pirl`` -- ``memory_bank.NPID``, ``memory_bank.PIRL``
* ``moco`` -- ``moco.MoCo`` (v2)
* ``swav`` -- ``swav.SwAV``
"""
