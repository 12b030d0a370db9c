"""Contrastive image learning (SimCLR, NPID/PIRL, MoCo v2, SwAV) on the textcl trainer.

Placeholder package: the methods land with the vision issue; they will register in
``textcl.core.method`` and run through ``python -m textcl.train``.
"""
