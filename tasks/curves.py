"""Training curves from metrics.json's `train.history` (one entry per finished epoch), drawn without a plotting
library: a small SVG (uploaded as curves.svg beside the model and shown in the report's markdown artifact) and
unicode sparklines (text, so they show wherever markdown does, the terminal included). Pure functions only.

Why SVG by hand: matplotlib is not a dependency, and three polylines do not need one. The SVG goes into the
markdown as a data: URI image (an SVG inside <img> runs no script; DOMPurify, which Prefect's UI bundle carries, keeps
data: URIs on <img> in its default configuration). A viewer that drops the image still shows the sparkline table
below it, which says the same in text.
"""

from __future__ import annotations

import base64
import math
from html import escape

SPARKS = "▁▂▃▄▅▆▇█"
#: (history key, label, colour): the series every chart draws, loss on its own scale, the others on 0-1.
SERIES = (("loss", "train loss", "#d9534f"), ("val_accuracy", "val accuracy", "#5bc0de"),
          ("val_macro_f1", "val macro-F1", "#2e7d32"))


def _values(history: list[dict], key: str) -> list[float | None]:
    out: list[float | None] = []
    for entry in history:
        try:
            value = float(entry.get(key))
        except (TypeError, ValueError):
            value = None
        out.append(value if value is not None and math.isfinite(value) else None)
    return out


def sparkline(values: list[float | None], low: float | None = None, high: float | None = None) -> str:
    """'▇▅▃▁' for the values between `low` and `high` (their own min/max by default); a gap is a space."""
    known = [v for v in values if v is not None]
    if not known:
        return ""
    low = min(known) if low is None else low
    high = max(known) if high is None else high
    span = high - low
    marks = []
    for value in values:
        if value is None:
            marks.append(" ")
            continue
        level = 0.5 if span <= 0 else (min(high, max(low, value)) - low) / span
        marks.append(SPARKS[min(len(SPARKS) - 1, int(level * (len(SPARKS) - 1) + 0.5))])
    return "".join(marks)


def curves_table(history: list[dict]) -> str:
    """A markdown table: one row per series, its sparkline over the epochs and its first and last value."""
    lines = ["| series | per epoch | first → last |", "|---|---|---|"]
    for key, label, _colour in SERIES:
        values = _values(history, key)
        known = [v for v in values if v is not None]
        if not known:
            continue
        bounds = (None, None) if key == "loss" else (0.0, 1.0)
        lines.append(f"| {label} | `{sparkline(values, *bounds)}` | {known[0]:.4f} → {known[-1]:.4f} |")
    return "\n".join(lines)


def curves_svg(history: list[dict], title: str, width: int = 480, height: int = 220) -> str:
    """An SVG line chart of the epochs: train loss scaled to its own maximum (left axis), validation accuracy and
    macro-F1 on 0-1 (right axis)."""
    left, right, top, bottom = 44, 44, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(history)
    epochs = [entry.get("epoch", i + 1) for i, entry in enumerate(history)]

    def x(i: int) -> float:
        return left + (plot_w / 2 if n <= 1 else plot_w * i / (n - 1))

    def y(fraction: float) -> float:
        return top + plot_h * (1.0 - min(1.0, max(0.0, fraction)))

    losses = [v for v in _values(history, "loss") if v is not None]
    loss_max = max(losses) if losses and max(losses) > 0 else 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        ty = y(tick)
        parts.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{ty + 4:.1f}" text-anchor="end">{tick * loss_max:.2f}</text>')
        parts.append(f'<text x="{left + plot_w + 4}" y="{ty + 4:.1f}">{tick:.1f}</text>')
    for i, epoch in enumerate(epochs):
        parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{escape(str(epoch))}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">epoch</text>')
    for s, (key, label, colour) in enumerate(SERIES):
        points = [(x(i), y(v / loss_max if key == "loss" else v))
                  for i, v in enumerate(_values(history, key)) if v is not None]
        if len(points) > 1:
            coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>' for px, py in points]
        lx = left + 8 + s * 120
        parts.append(f'<rect x="{lx}" y="{top + 6}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="{top + 15}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def curves_markdown(model: str, history: list[dict], svg_uri: str | None = None, *, svg: str | None = None) -> str:
    """The curves artifact: the chart as an image (`svg`, when the caller already drew it), the sparkline table, and
    where the SVG file is."""
    if not history:
        return f"### {model}: training curves\n\nno finished epoch in metrics.json's train.history"
    lines = [f"### {model}: training curves", "",
             f"![{model} training curves]({svg_data_uri(svg or curves_svg(history, f'{model}: training curves'))})", "",
             curves_table(history)]
    if svg_uri:
        lines += ["", f"SVG: `{svg_uri}`"]
    return "\n".join(lines)
