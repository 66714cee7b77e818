"""CLI layer: the ``neftc`` command (``neftc.cli.main:main``), one module per command family. May
import every layer."""
