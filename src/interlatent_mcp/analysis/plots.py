"""Small PNG plots of a channel: its value histogram next to its timeline over a run."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

DEFAULT_SIZE_PX = (720, 260)
DPI = 90


def plot_channel(
    values: np.ndarray,
    *,
    first_step: int = 0,
    hist_edges: Sequence[float] = (),
    hist_counts: Sequence[int] = (),
    episode_starts: Sequence[int] = (),
    title: str = "",
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> bytes:
    """Render a histogram (left) and the timeline of `values` (right) as PNG bytes.

    `hist_edges`/`hist_counts` are the stored histogram over the whole analysis; when they are
    empty the histogram of `values` is drawn instead. Steps in `episode_starts` get a faint
    vertical line. Non-finite values are left out of both panels. Uses matplotlib's Agg canvas
    directly, without pyplot, so it is safe to call from worker threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    hist_axes, time_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.4]})
    finite = np.isfinite(values)

    # Histogram
    if len(hist_edges) == len(hist_counts) + 1 and len(hist_counts) > 0:
        hist_axes.stairs(np.asarray(hist_counts), np.asarray(hist_edges), fill=True, color="C0")
        hist_axes.set_title("histogram (all analysed steps)", fontsize=8)
    elif finite.any():
        hist_axes.hist(values[finite], bins=40, color="C0")
        hist_axes.set_title("histogram (plotted steps)", fontsize=8)
    hist_axes.set_xlabel("activation", fontsize=8)
    hist_axes.tick_params(labelsize=7)

    # Timeline
    steps = np.arange(first_step, first_step + values.shape[0])
    time_axes.plot(steps[finite], values[finite], linewidth=0.8, color="C1")
    for start in episode_starts:
        time_axes.axvline(start, color="0.75", linewidth=0.6, zorder=0)
    time_axes.set_xlabel("step", fontsize=8)
    time_axes.set_title("activation over the run (grey lines: episode starts)", fontsize=8)
    time_axes.tick_params(labelsize=7)

    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
