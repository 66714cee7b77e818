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


#: Most layers the placement legend names one by one (the rest are counted).
LEGEND_LAYERS = 40


def layer_colours(count: int) -> list[tuple[float, float, float]]:
    """The colour of layer ``i`` in the placement picture and its legend (tab20, repeating)."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"]
    return [tuple(palette(i % 20)[:3]) for i in range(count)]  # type: ignore[misc]


def _placement_plot(doc: LayoutDoc, owner: Any) -> str:
    """Which layer owns each array (white: free), with a legend naming the layers."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    colours = layer_colours(len(doc.layers))
    image = np.ones((*owner.shape, 3))
    for index, colour in enumerate(colours):
        image[owner == index] = colour
    fig, ax = plt.subplots(figsize=(12, max(2.5, owner.shape[0] * 0.12 + 1)))
    ax.imshow(image, aspect="auto", interpolation="nearest")
    ax.set_xlabel("array in core")
    ax.set_ylabel("core")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"placement ({doc.placement.strategy}): colour = layer, white = free array")
    handles = [Patch(facecolor=colour, edgecolor="black", linewidth=0.3, label=layer.name)
               for layer, colour in zip(doc.layers[:LEGEND_LAYERS], colours)]
    hidden = len(doc.layers) - len(handles)
    if hidden > 0:
        handles.append(Patch(facecolor="none", edgecolor="none",
                             label=f"... and {hidden} more layers"))
    handles.append(Patch(facecolor="white", edgecolor="black", linewidth=0.3, label="free"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
              title="layer", ncol=1 + len(handles) // 25, frameon=False)
    return _png(fig)


def report_plots(doc: LayoutDoc, summary: LayoutSummary,
           verify: VerifyRecord | None) -> dict[str, str]:
    """The embedded PNG plots by name; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
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
    plots["placement"] = _placement_plot(doc, owner)
    energy = {k.removesuffix("_pj"): v for k, v in summary.cost.energy_pj.model_dump().items()
              if k != "total_pj"}
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(list(energy), [v / 1e6 for v in energy.values()], color="#4477aa")
    ax.set_xlabel("energy per inference (uJ)")
    plots["energy"] = _png(fig)
    if verify:
        plots["accuracy"] = _accuracy_plot(verify)
    return plots
