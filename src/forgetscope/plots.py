"""The project's one plotting helper: figures drawn to PNG bytes, or straight to PNG files.

Figures are built with matplotlib's object-oriented `Figure` (its own Agg canvas), not
`pyplot`, so nothing here selects a backend, opens a window or keeps global figure state.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from forgetscope.files import write_atomically


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (7, 4.5), **kwargs):
    """`(figure, axes)` like `pyplot.subplots`, without pyplot."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def png(fig: Figure) -> bytes:
    """`fig` laid out and drawn as a PNG, in memory: the same figure gives the same bytes."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    return buffer.getvalue()


def save(fig: Figure, path: Path) -> None:
    """Lay out and write `fig` as a PNG, whole or not at all (`files.write_atomically`)."""
    write_atomically(path, png(fig))


def colors(values) -> dict:
    """One viridis colour per distinct value, in sorted order."""
    order = sorted(set(values))
    cmap = colormaps["viridis"]
    return {v: cmap(i / max(1, len(order) - 1)) for i, v in enumerate(order)}
