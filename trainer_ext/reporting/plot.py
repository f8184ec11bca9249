"""The model card's accuracy-against-latency plot (`accuracy_vs_latency.png`): every variant with both figures
measured, the teacher and budget lines, and point labels placed so that none covers another."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from trainer_ext.files import write_atomic
from trainer_ext.reporting.results import Results, Variant
from trainer_ext.reporting.sections import is_number, variant_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Where a point's label may go, in points from the point, tried in order: above right (where every label went before
# labels could collide), below right, above left, below left; then further above and below, tied to the point by a
# thin line. The first place that covers no other label, stays inside the axes and covers no marker is taken.
_NEAR = ((5, 5, "left", "bottom"), (5, -5, "left", "top"), (-5, 5, "right", "bottom"), (-5, -5, "right", "top"))
_FAR = tuple(
    (5, sign * (5 + 11 * step), "left", "bottom" if sign > 0 else "top") for step in range(1, 9) for sign in (1, -1)
)
_GAP_PX = 1.0  # labels keep at least this far apart
_MARKER_SIZE = 6  # points, every marker of the plot


def place_labels(
    ax: Axes,
    labels: list[tuple[str, float, float]],
    markers: list[tuple[float, float]] = (),
    fontsize: float = 8,
) -> list:
    """Annotate each `(label, x, y)` at the first place of `_NEAR` and `_FAR` that covers no label annotated before
    it, lies inside the axes and covers none of `markers` (data coordinates); where none does, at the place that
    covers the least label, then stays inside, then covers the least marker. Call once the axes' scales and layout
    are final: placement is measured in display coordinates. Returns the annotations."""
    from matplotlib.text import Annotation, Text
    from matplotlib.transforms import Bbox

    def text_box(annotation: Annotation) -> Bbox:  # the text alone: an Annotation's own extent includes its line
        annotation.update_positions(renderer)
        return Text.get_window_extent(annotation, renderer)

    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    half = _MARKER_SIZE * ax.figure.dpi / 72 / 2
    marker_boxes = (
        [Bbox.from_extents(x - half, y - half, x + half, y + half) for x, y in ax.transData.transform(markers)]
        if markers
        else []
    )
    placed: list = []
    for label, x, y in labels:
        best = None  # (score, annotation); score: (label overlap, outside the axes, marker overlap), 0s when free
        for dx, dy, ha, va in _NEAR + _FAR:
            tied = {"arrowprops": {"arrowstyle": "-", "lw": 0.5, "color": "grey"}} if (dx, dy, ha, va) in _FAR else {}
            annotation = ax.annotate(
                label, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=fontsize, **tied
            )
            box = text_box(annotation).padded(_GAP_PX)
            score = (
                sum(_overlap_area(box, text_box(other)) for other in placed),
                not (inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)),
                sum(_overlap_area(box, marker) for marker in marker_boxes),
            )
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, annotation)
            else:
                annotation.remove()
            if not any(score):
                break
        placed.append(best[1])
    return placed


def _overlap_area(a, b) -> float:
    """The area two display boxes share (0 when they are apart or only touch)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def accuracy_latency_figure(results: Results) -> Figure | None:
    """Scatter of accuracy against latency for every variant with both measured (filled: batch 1 at the fixed length;
    hollow, same colour: real length and batch 32 per sentence, where measured); None when there is none. The caller
    saves and closes the figure."""
    if not any(is_number(v.latency_ms) and is_number(v.accuracy) for v in results.variants.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    shape_markers = {"real_length": ("o", "real length"), "batch_32": ("s", "batch 32, per sentence")}
    labels, markers = [], []  # (label, x, y) of each variant's filled marker; (x, y) of every marker
    for name, v in results.variants.items():
        if not (is_number(v.latency_ms) and is_number(v.accuracy)):
            continue
        accuracy = 100 * v.accuracy
        (dot,) = ax.plot([v.latency_ms], [accuracy], "D", markersize=_MARKER_SIZE)
        labels.append((variant_label(name), v.latency_ms, accuracy))
        markers.append((v.latency_ms, accuracy))
        for shape, (marker, _) in shape_markers.items():
            ms = (v.shapes or {}).get(shape, {}).get("median_ms")
            if is_number(ms):  # the same variant served another way: same colour, hollow marker
                ax.plot([ms], [accuracy], marker, markersize=_MARKER_SIZE, mfc="none", color=dot.get_color())
                markers.append((ms, accuracy))
    length = results.latency.get("sequence_length", 64)
    handles = [plt.Line2D([], [], marker="D", ls="", color="grey", label=f"batch 1, length {length}")]
    teacher = results.variants.get("teacher") or Variant()
    budget = (results.selection or {}).get("budget") or {}
    if is_number(teacher.accuracy):
        handles.append(ax.axhline(100 * teacher.accuracy, color="black", lw=0.8, ls=":", label="teacher"))
        if is_number(budget.get("max_accuracy_drop")):
            level = 100 * teacher.accuracy - budget["max_accuracy_drop"]
            label = f"accuracy budget: teacher - {budget['max_accuracy_drop']:g} (set on the eval split)"
            handles.append(ax.axhline(level, color="tab:red", lw=0.8, ls="--", label=label))
    if is_number(budget.get("max_latency_ms")):
        label = f"latency budget: {budget['max_latency_ms']:g} ms, real length"
        handles.append(ax.axvline(budget["max_latency_ms"], color="tab:red", lw=0.8, ls="-.", label=label))
    if any(v.shapes for v in results.variants.values()):
        handles += [
            plt.Line2D([], [], marker=m, ls="", mfc="none", color="grey", label=text)
            for m, text in shape_markers.values()
        ]
    # Below the axes: inside, with the teacher and budget lines, no corner is free of points and labels.
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_xscale("log")
    # Plain numbers at 1, 2, 5, 10, 20, ... ms instead of matplotlib's "2x10^0" labels.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel(f"{results.metric} (%)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.canvas.draw()  # the limits and layout are final: the labels are placed in display coordinates
    place_labels(ax, labels, markers)
    return fig


def accuracy_latency_plot(results: Results, path: str | os.PathLike) -> Path | None:
    """`accuracy_latency_figure` written to `path` (atomically); None, and no file, when nothing has both figures."""
    fig = accuracy_latency_figure(results)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    write_atomic(path, partial(fig.savefig, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)
