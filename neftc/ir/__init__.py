"""IR layer: the facts recorded on fx nodes, the pass manager, weights and their quantisation.
May import: the base modules (``neftc.errors``, ``bounds``, ``devices``, ``atomic``),
``neftc.format``, ``neftc.targets``."""
