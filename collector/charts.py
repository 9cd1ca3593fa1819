"""Line charts as SVG, drawn on the server: no script, no library, nothing fetched (a leaf).

A series of any length becomes at most four points per pixel column (:func:`columns`): each
column's first, lowest, highest and last point, in time order (M4, Jugel et al., VLDB 2014),
which draws exactly the line the whole series would at that width, spikes included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

#: The chart's drawing size, in SVG units (it scales to its box; the lines keep their width).
WIDTH, HEIGHT = 720, 160
#: Space kept above and below the line, as a share of the height.
MARGIN = 0.06


@dataclass(frozen=True)
class Chart:
    """An SVG line chart and what it shows."""

    svg: str
    #: points of the series (before reduction), and points drawn
    series: int
    drawn: int
    low: float | None
    high: float | None


def columns(
    points: Sequence[tuple[float, float]], start: float, end: float, width: int = WIDTH
) -> list[tuple[float, float]]:
    """``points`` (x, y), x in ``[start, end]`` and ascending, reduced to each pixel column's
    first, lowest, highest and last point, in order; x in columns ``0 .. width``."""
    span = (end - start) or 1.0
    out: list[tuple[float, float]] = []
    i = 0
    while i < len(points):
        column = min(width, max(0, int((points[i][0] - start) / span * width)))
        j = i
        low = high = i
        while j + 1 < len(points):
            nxt = min(width, max(0, int((points[j + 1][0] - start) / span * width)))
            if nxt != column:
                break
            j += 1
            if points[j][1] < points[low][1]:
                low = j
            if points[j][1] > points[high][1]:
                high = j
        for k in sorted({i, low, high, j}):
            out.append(((points[k][0] - start) / span * width, points[k][1]))
        i = j + 1
    return out


def line(
    points: Sequence[tuple[float, float]],
    start: float,
    end: float,
    label: str,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    css: str = "chart",
    marks: Sequence[float] = (),
) -> Chart:
    """A line through ``points`` (x: seconds, y: a value) over ``[start, end]``; ``label`` is
    its accessible name. ``marks``: times drawn as ticks on the bottom edge, outside the line
    and its low and high (a value that is not the whole of what it measures)."""
    drawn = columns(points, start, end, width)
    ys = [y for _, y in drawn]
    low, high = (min(ys), max(ys)) if ys else (None, None)
    shapes = []
    if drawn and low is not None and high is not None:
        span = (high - low) or abs(high) or 1.0
        top, usable = height * MARGIN, height * (1 - 2 * MARGIN)

        def y_of(value: float) -> float:
            return top + (1 - (value - low) / span) * usable if high != low else height / 2

        coords = " ".join(f"{x:.1f},{y_of(y):.1f}" for x, y in drawn)
        shapes.append(
            f'<polyline points="{coords}" fill="none" stroke="currentColor" stroke-width="1.5" '
            'vector-effect="non-scaling-stroke" stroke-linejoin="round"/>'
        )
        # The newest point as a dot: a line of one point draws nothing, and the latest value is
        # the one people look for. (A zero-length line with round caps: a circle would be
        # stretched by the chart's free aspect ratio.)
        x, y = drawn[-1]
        shapes.append(
            f'<line class="last" x1="{x:.1f}" y1="{y_of(y):.1f}" x2="{x:.1f}" y2="{y_of(y):.1f}" '
            'stroke="currentColor" stroke-width="6" stroke-linecap="round" '
            'vector-effect="non-scaling-stroke"/>'
        )
    else:
        shapes.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
            'font-size="14" fill="#888">no data in this range</text>'
        )
    span_x = (end - start) or 1.0
    for when in marks:
        x = min(width, max(0.0, (when - start) / span_x * width))
        shapes.append(
            f'<line class="incomplete" x1="{x:.1f}" y1="{height:.1f}" x2="{x:.1f}" '
            f'y2="{height * 0.9:.1f}" stroke="#c60" stroke-width="2" '
            'vector-effect="non-scaling-stroke"/>'
        )
    grid = "".join(
        f'<line x1="0" x2="{width}" y1="{height * f:.1f}" y2="{height * f:.1f}" '
        'stroke="#8883" vector-effect="non-scaling-stroke"/>'
        for f in (0.25, 0.5, 0.75)
    )
    svg = (
        f'<svg class="{css}" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        f'role="img" aria-label="{escape(label)}" data-points="{len(drawn)}" '
        f'data-series="{len(points)}" data-marks="{len(marks)}">{grid}{"".join(shapes)}</svg>'
    )
    return Chart(svg, len(points), len(drawn), low, high)
