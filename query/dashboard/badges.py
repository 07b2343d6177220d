"""shields.io-style SVG badges ("flat" and "flat-square"). Box widths come from the font's
advance widths (`font_widths`), and each text is drawn with `textLength` set to that width, so
a label never spills out of its box whichever font the viewer falls back to. Every text is
XML-escaped; a badge holds no script and no external reference."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

from botpulse.query.dashboard.font_widths import text_width

STYLES = ("flat", "flat-square")
FONT_PX = 11
PAD_PX = 5
MAX_TEXT = 64

COLORS = {
    "brightgreen": "#4c1",
    "green": "#97ca00",
    "yellow": "#dfb317",
    "orange": "#fe7d37",
    "red": "#e05d44",
    "blue": "#007ec6",
    "grey": "#9f9f9f",
}


def _attr(text: str) -> str:
    return escape(text, {'"': "&quot;", "'": "&apos;"})


def _clip(text: str) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in text).strip()
    return cleaned if len(cleaned) <= MAX_TEXT else cleaned[: MAX_TEXT - 1] + "…"


def render(label: str, value: str, color: str, style: str = "flat") -> str:
    label, value = _clip(label), _clip(value)
    fill = COLORS.get(color, COLORS["grey"])
    label_text = math.ceil(text_width(label, FONT_PX))
    value_text = math.ceil(text_width(value, FONT_PX))
    lw, vw = label_text + 2 * PAD_PX, value_text + 2 * PAD_PX
    width = lw + vw
    # Text is laid out at 10x and scaled down, as shields.io does, for sub-pixel placement.
    lx, vx = lw * 5, (lw + vw / 2) * 10
    title = _attr(f"{label}: {value}")
    label_x, value_x = escape(label), escape(value)

    def texts(x: float, length: int, text: str) -> str:
        shadow = (
            f'<text aria-hidden="true" x="{x:g}" y="150" fill="#010101" fill-opacity=".3" '
            f'transform="scale(.1)" textLength="{length * 10}">{text}</text>'
            if style == "flat"
            else ""
        )
        return (
            shadow + f'<text x="{x:g}" y="140" transform="scale(.1)" fill="#fff" '
            f'textLength="{length * 10}">{text}</text>'
        )

    rounded = style == "flat"
    gradient = (
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        '<stop offset="1" stop-opacity=".1"/></linearGradient>'
        if rounded
        else ""
    )
    clip = (
        f'<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>'
        if rounded
        else ""
    )
    group = '<g clip-path="url(#r)">' if rounded else '<g shape-rendering="crispEdges">'
    shine = f'<rect width="{width}" height="20" fill="url(#s)"/>' if rounded else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{title}"><title>{title}</title>{gradient}{clip}{group}'
        f'<rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{vw}" height="20" fill="{fill}"/>'
        f"{shine}</g>"
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" '
        'text-rendering="geometricPrecision" font-size="110">'
        f"{texts(lx, label_text, label_x)}{texts(vx, value_text, value_x)}</g></svg>"
    )


def uptime_color(percent: float) -> str:
    if percent >= 99:
        return "brightgreen"
    if percent >= 95:
        return "green"
    if percent >= 90:
        return "yellow"
    if percent >= 80:
        return "orange"
    return "red"


def compact(n: float) -> str:
    """1234 -> 1.2k, 3400000 -> 3.4M (what the pages show too)."""
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            text = f"{n / size:.1f}".rstrip("0").rstrip(".")
            return text + unit
    return f"{n:g}" if isinstance(n, float) and not n.is_integer() else str(int(n))
