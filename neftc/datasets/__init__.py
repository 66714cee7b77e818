"""Datasets layer: read data files (npz, MNIST IDX, CIFAR-10 batches, the built-in digits) into
bounded tensors, one module per file format. May import: the base modules only."""
