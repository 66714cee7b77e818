"""The layout format: the only contract between the compiler, the runtime and hardware flows.

- ``schema``: the ``layout.json`` document (pydantic; JSON Schema in docs/layout.schema.json);
- ``encoding``: the one definition of the cell encoding (slicing, sign encoding, physical column
  order, the rows and columns each tile covers, grouped-conv inputs, pipeline copies);
- ``reader``: ``load_layout`` (schema, checksums, every consistency check of docs/layout.md §10);
- ``writer``: the sidecars and the atomic, checksummed directory;
- ``graph_codec``: the digital graph's JSON arguments and op names.

The compiler writes through this package; the runtime and every hardware-flow output read through
it. Format layer. May import: the base modules and ``targets`` (``encoding`` imports nothing).
"""
