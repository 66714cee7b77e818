"""The layout format: the only contract between the compiler, the runtime and hardware flows.

- ``schema``: the ``layout.json`` document (pydantic; JSON Schema in docs/layout.schema.json);
- ``encoding``: the one definition of the cell encoding (slicing, sign encoding, physical column
  order, the rows and columns each tile covers, grouped-conv inputs, pipeline copies);
- ``reader``: ``load_layout`` (schema, checksums, every consistency check of docs/layout.md §10),
  reading ``layout.json`` with limits (``layout_json``) and running the checks of
  ``layer_checks``, ``tile_checks`` and ``graph_checks`` (shared state and the one-line refusal in
  ``consistency``);
- ``writer``: the sidecars and the atomic, checksummed directory;
- ``graph_codec``: the digital graph's JSON arguments and op names;
- ``ops``: the op allow-list (``op_table``), the argument kinds (``arg_kinds``) and the shape and
  size propagation (``op_values``).

The compiler writes through this package; the runtime and every hardware-flow output read through
it. Format layer. May import: the base modules and ``targets`` (``encoding`` imports nothing).
"""
