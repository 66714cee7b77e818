"""Flow layer: what is done with a written layout (verify, DAC calibration, ONNX, programming
files, cost, summary, report). May import the base modules, ``format``, ``targets``, ``ir``,
``passes``, ``runtime`` and ``datasets``; never the driver or the CLI."""
