"""Frontend layer: load a model (``.pt2``, ``.pt`` with ``--trust-model``, ``module:Class``, the zoo)
and trace it to an fx graph. May import: the base modules only."""
