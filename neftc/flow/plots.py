"""The plots of ``report.html``, embedded as PNG: array utilisation, placement, energy and
accuracy versus sigma. They need matplotlib (``pip install neftc[report]``); without it
``report_plots`` returns none and the report keeps its tables."""

from __future__ import annotations

import base64
import io
from typing import Any

from neftc.flow.records import LayoutSummary, VerifyRecord
from neftc.format.schema import LayoutDoc


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _array_maps(doc: LayoutDoc) -> tuple[Any, Any]:
    """Per (core, array) of the cores in use: cell utilisation (NaN: free) and owning layer
    index (-1: free)."""
    import numpy as np

    chip = doc.target.chip
    rows, cols = doc.target.array.rows, doc.target.array.cols
    utilisation = np.full((chip.cores, chip.arrays_per_core), np.nan)
    owner = np.full((chip.cores, chip.arrays_per_core), -1)
    for index, layer in enumerate(doc.layers):
        for tile in layer.tiles:
            for core, array in [(tile.core, tile.array), *tile.replicas]:
                utilisation[core, array] = tile.row_count * tile.col_count / (rows * cols)
                owner[core, array] = index
    used_cores = sorted({c for c in range(chip.cores) if (owner[c] >= 0).any()})
    shown = used_cores[-1] + 1 if used_cores else 1
    return utilisation[:shown], owner[:shown]


def _accuracy_plot(verify: VerifyRecord) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    results = verify.results
    sigmas = [r.sigma for r in results]
    means = np.array([r.mc.mean for r in results]) * 100
    ci = np.array([r.mc.ci95 or 0.0 for r in results]) * 100  # one chip: no band
    ax.plot(sigmas, means, marker="o", label="MC mean")
    ax.fill_between(sigmas, means - ci, means + ci, alpha=0.3, label="95 % CI of the mean")
    ax.plot(sigmas, [r.quantized_accuracy * 100 for r in results], "--", label="noise-free")
    ax.set_xlabel("device variation sigma (relative to cell range)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    ax.set_title(f"{verify.data}, {results[0].mc.trials} chip instances per sigma")
    return _png(fig)


def report_plots(doc: LayoutDoc, summary: LayoutSummary,
           verify: VerifyRecord | None) -> dict[str, str]:
    """The embedded PNG plots by name; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return {}
    utilisation, owner = _array_maps(doc)
    plots = {}
    fig, ax = plt.subplots(figsize=(10, max(2.0, owner.shape[0] * 0.12 + 1)))
    image = ax.imshow(utilisation, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                      interpolation="nearest")
    ax.set_xlabel("array in core")
    ax.set_ylabel("core")
    ax.set_title("cell utilisation of each array (blank: free)")
    fig.colorbar(image, ax=ax)
    plots["heatmap"] = _png(fig)
    fig, ax = plt.subplots(figsize=(10, max(2.0, owner.shape[0] * 0.12 + 1)))
    ax.imshow(np.ma.masked_less(owner, 0), aspect="auto", cmap="tab20", interpolation="nearest")
    ax.set_xlabel("array in core")
    ax.set_ylabel("core")
    ax.set_title(f"placement ({doc.placement.strategy}): colour = layer")
    plots["placement"] = _png(fig)
    energy = {k.removesuffix("_pj"): v for k, v in summary.cost.energy_pj.model_dump().items()
              if k != "total_pj"}
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(list(energy), [v / 1e6 for v in energy.values()], color="#4477aa")
    ax.set_xlabel("energy per inference (uJ)")
    plots["energy"] = _png(fig)
    if verify:
        plots["accuracy"] = _accuracy_plot(verify)
    return plots
