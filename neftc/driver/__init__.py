"""Driver layer: compile a model to a layout (frontend -> NeFT -> passes -> emit -> writer), the
NeFT jobs on model files and the demo. May import every layer below the CLI."""
