"""Datasets layer: read data files (npz, MNIST IDX, CIFAR-10 batches, the built-in digits) into
bounded tensors, one module per file format. May import: the base modules only.

``spec.load_dataset`` picks the format; ``base`` holds ``Dataset``, ``Split``, the split rule and
``check_compatible``; ``files`` the safe reading and the memory budget; ``npz``, ``idx``,
``cifar10`` and ``digits`` one file format each. This package re-exports nothing: import a name
from the module that defines it (``from neftc.datasets.spec import load_dataset``)."""
