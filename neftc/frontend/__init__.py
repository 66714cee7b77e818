"""Frontend layer: load a model (``.pt2``, ``.pt`` with ``--trust-model``, ``module:Class``, the
zoo) and trace it to an fx graph. May import: the base modules only.

``loader.load_model`` is the entry; ``model_file`` reads a file safely (size, zip members, kind);
``pt2_archive`` checks a ``.pt2``'s members, ``pickle_guard`` its sample-input pickle,
``program_guard`` its symbolic shapes and graph ops and ``treespec`` makes its pytree specs plain
data; ``exported`` turns the program into a graph with one output, ``inputs`` describes its
inputs and draws examples, ``batch`` makes a fixed-batch program batch-agnostic; ``arch`` builds a
state_dict's module; ``trace`` traces and exports; ``zoo`` holds the built-in models."""
