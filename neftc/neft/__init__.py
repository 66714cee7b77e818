"""NeFT layer: the feedback and noise modules, the NeFT pipeline, fine-tuning and training (one
training loop). ``neftc.neft.modules`` is the layer's leaf, below ``neftc.passes`` (the NeFT
passes insert its modules) and may import only the base modules, ``format``, ``targets`` and
``ir``; the rest may also import ``passes``, ``datasets`` and ``frontend``."""
