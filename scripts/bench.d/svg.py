"""Grouped bar charts as plain SVG, so the report needs nothing beyond the standard library.

A chart is a row of panels; each panel has groups along x (a step: `c50`, `p99`, ...) and one bar
per series (contender) in every group, with the median's value written on the bar and, where given,
a thin line from the lowest to the highest round.
"""

import math
from xml.sax.saxutils import escape

FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""


def nice_step(span, target=5):
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def si(v):
    """Short number: 1234 -> 1.23k, 0.0123 -> 0.0123."""
    if v is None:
        return "n/a"
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            x = v / div
            return f"{x:.3g}{suffix}"
    return f"{v:.3g}"


class Panel:
    def __init__(self, title, groups, series, *, unit="", log=False, note=None):
        """series: list of {label, color, values: [v per group], lo: [...], hi: [...]}."""
        self.title = title
        self.groups = groups
        self.series = series
        self.unit = unit
        self.log = log
        self.note = note

    def values(self):
        out = []
        for s in self.series:
            for key in ("values", "hi", "lo"):
                out += [v for v in s.get(key) or [] if v is not None and v > 0]
        return out


class LinePanel:
    def __init__(self, title, series, *, unit="", x_unit="", log=False, note=None, width=440,
                 x_max=None):
        """series: list of {label, color, points: [(x, y), ...], dash: optional}; a y of None
        breaks the line."""
        self.title = title
        self.series = series
        self.unit = unit
        self.x_unit = x_unit
        self.log = log
        self.note = note
        self.width = width
        self.x_max = x_max


def panel_width(p):
    if isinstance(p, LinePanel):
        return p.width
    return max(230, 90 + len(p.groups) * (max(len(p.series), 1) * 22 + 16))


def chart(title, panels, *, row_height=270, subtitle=None, max_width=1320):
    """Panels left to right, wrapping to a new row past `max_width`."""
    left, right, top, bottom = 62, 14, 44, 46
    rows, row, used = [], [], 0
    for p in panels:
        pw = panel_width(p)
        if row and used + pw > max_width:
            rows.append(row)
            row, used = [], 0
        row.append((p, pw))
        used += pw
    if row:
        rows.append(row)
    width = max(max(sum(pw for _, pw in r) for r in rows), 420)
    # One legend for the whole chart: the series are the same in every panel. It wraps to
    # more lines when it is wider than the chart.
    items, lx, ly = [], 10, (58 if subtitle else 40)
    for s in panels[0].series:
        if s.get("legend") is False:
            continue
        w = 24 + 7 * len(s["label"])
        if lx > 10 and lx + w > width:
            lx, ly = 10, ly + 17
        items.append((lx, ly, s))
        lx += w
    header = ly + 12 if items else (70 if subtitle else 52)
    height = header + len(rows) * row_height
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" {FONT} font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    if subtitle:
        out.append(f'<text x="10" y="38" fill="#555">{escape(subtitle)}</text>')
    for lx, ly, s in items:
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="11" height="11" fill="{s["color"]}"/>')
        out.append(f'<text x="{lx + 15}" y="{ly}">{escape(s["label"])}</text>')
    for i, r in enumerate(rows):
        x0 = 0
        for p, pw in r:
            out.append(f'<g transform="translate({x0} {header + i * row_height})">')
            draw = line_panel_svg if isinstance(p, LinePanel) else panel_svg
            out += draw(p, pw, row_height, left, right, top, bottom)
            out.append("</g>")
            x0 += pw
    out.append("</svg>")
    return "\n".join(out) + "\n"


def panel_svg(p, pw, height, left, right, top, bottom):
    """One panel in its own coordinates: (0, 0) is its top left corner."""
    out = []
    px0, px1 = left, pw - right
    py0, py1 = top, height - bottom  # y grows downwards: py1 is the axis
    out.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{top - 16}" text-anchor="middle" '
               f'font-weight="bold">{escape(p.title)}</text>')
    vals = p.values()
    if not vals:
        out.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{(py0 + py1) / 2:.1f}" '
                   f'text-anchor="middle" fill="#888">no data</text>')
        return out
    if p.log:
        lo_exp = math.floor(math.log10(min(vals)))
        # Room above the tallest bar for its value, written upwards.
        hi_exp = max(math.log10(max(vals)) + 0.45, lo_exp + 1)

        def y(v):
            v = max(v, 10 ** lo_exp)
            return py1 - (math.log10(v) - lo_exp) / (hi_exp - lo_exp) * (py1 - py0)

        ticks = [10 ** e for e in range(lo_exp, math.floor(hi_exp) + 1)]
        base = 10 ** lo_exp
    else:
        # Room above the tallest bar for its value, written upwards.
        step = nice_step(max(vals) * 1.3)
        top_v = step * math.ceil(max(vals) * 1.3 / step)

        def y(v):
            return py1 - v / top_v * (py1 - py0)

        ticks = [step * i for i in range(int(round(top_v / step)) + 1)]
        base = 0
    for t in ticks:
        ty = y(t)
        out.append(f'<line x1="{px0}" x2="{px1}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{px0 - 4}" y="{ty + 4:.1f}" text-anchor="end" fill="#444">'
                   f'{escape(si(t))}</text>')
    out.append(f'<line x1="{px0}" x2="{px1}" y1="{py1}" y2="{py1}" stroke="#333"/>')
    out.append(f'<line x1="{px0}" x2="{px0}" y1="{py0}" y2="{py1}" stroke="#333"/>')
    if p.unit:
        cy = (py0 + py1) / 2
        out.append(f'<text x="12" y="{cy:.1f}" text-anchor="middle" fill="#444" '
                   f'transform="rotate(-90 12 {cy:.1f})">{escape(p.unit)}</text>')
    n_groups, n_series = len(p.groups), max(len(p.series), 1)
    gw = (px1 - px0) / n_groups
    bw = min(28.0, (gw - 10) / n_series)
    for g, label in enumerate(p.groups):
        gx = px0 + g * gw + (gw - bw * n_series) / 2
        out.append(f'<text x="{px0 + g * gw + gw / 2:.1f}" y="{py1 + 16}" text-anchor="middle">'
                   f'{escape(label)}</text>')
        for k, s in enumerate(p.series):
            v = s["values"][g]
            bx = gx + k * bw
            if v is None:
                out.append(f'<text x="{bx + bw / 2:.1f}" y="{py1 - 4}" text-anchor="middle" '
                           f'font-size="8" fill="#999">n/a</text>')
                continue
            by = y(max(v, base)) if v > 0 else py1
            out.append(f'<rect x="{bx + 1:.1f}" y="{by:.1f}" width="{bw - 2:.1f}" '
                       f'height="{max(py1 - by, 0.5):.1f}" fill="{s["color"]}">'
                       f'<title>{escape(s["label"])} {escape(label)}: {escape(si(v))}</title></rect>')
            lo, hi = (s.get("lo") or [None] * n_groups)[g], (s.get("hi") or [None] * n_groups)[g]
            if lo is not None and hi is not None and hi > lo and lo > 0:
                cx = bx + bw / 2
                out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(lo):.1f}" y2="{y(hi):.1f}" '
                           f'stroke="#222" stroke-width="1"/>')
            # The value stands above the bar and its whisker, read bottom to top.
            tx = bx + bw / 2 + 3
            ty = min(by, y(hi) if hi is not None and hi > 0 else by) - 3
            flag = (s.get("flags") or [None] * n_groups)[g]
            text = si(v) + (f" {flag}" if flag else "")
            color = "#c00" if flag else "#222"
            out.append(f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="9" fill="{color}" '
                       f'transform="rotate(-90 {tx:.1f} {ty:.1f})">{escape(text)}</text>')
    if p.note:
        out.append(f'<text x="{px0}" y="{height - 8}" font-size="9" fill="#666">'
                   f'{escape(p.note)}</text>')
    return out


def line_panel_svg(p, pw, height, left, right, top, bottom):
    """A line chart in its own coordinates: x from 0 to the largest x, y linear or log."""
    out = []
    px0, px1 = left, pw - right
    py0, py1 = top, height - bottom
    out.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{top - 16}" text-anchor="middle" '
               f'font-weight="bold">{escape(p.title)}</text>')
    xs = [x for s in p.series for x, v in s["points"] if v is not None]
    ys = [v for s in p.series for _, v in s["points"] if v is not None and (v > 0 or not p.log)]
    if not xs or not ys:
        out.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{(py0 + py1) / 2:.1f}" '
                   f'text-anchor="middle" fill="#888">no data</text>')
        return out
    x_max = p.x_max or max(xs)
    x_step = nice_step(x_max)
    x_top = x_step * math.ceil(x_max / x_step)

    def x(v):
        return px0 + v / x_top * (px1 - px0)

    if p.log:
        lo_exp = math.floor(math.log10(min(ys)))
        hi_exp = max(math.ceil(math.log10(max(ys))), lo_exp + 1)

        def y(v):
            v = max(v, 10 ** lo_exp)
            return py1 - (math.log10(v) - lo_exp) / (hi_exp - lo_exp) * (py1 - py0)

        ticks = [10 ** e for e in range(lo_exp, hi_exp + 1)]
    else:
        step = nice_step(max(ys) * 1.05)
        top_v = step * math.ceil(max(ys) * 1.05 / step)

        def y(v):
            return py1 - v / top_v * (py1 - py0)

        ticks = [step * i for i in range(int(round(top_v / step)) + 1)]
    for t in ticks:
        ty = y(t)
        out.append(f'<line x1="{px0}" x2="{px1}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{px0 - 4}" y="{ty + 4:.1f}" text-anchor="end" fill="#444">'
                   f'{escape(si(t))}</text>')
    k = 0
    while k * x_step <= x_top + 1e-9:
        tx = x(k * x_step)
        out.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{py1}" y2="{py1 + 4}" stroke="#333"/>')
        out.append(f'<text x="{tx:.1f}" y="{py1 + 15}" text-anchor="middle" fill="#444">'
                   f'{escape(si(k * x_step))}</text>')
        k += 1
    out.append(f'<line x1="{px0}" x2="{px1}" y1="{py1}" y2="{py1}" stroke="#333"/>')
    out.append(f'<line x1="{px0}" x2="{px0}" y1="{py0}" y2="{py1}" stroke="#333"/>')
    if p.unit:
        cy = (py0 + py1) / 2
        out.append(f'<text x="12" y="{cy:.1f}" text-anchor="middle" fill="#444" '
                   f'transform="rotate(-90 12 {cy:.1f})">{escape(p.unit)}</text>')
    if p.x_unit:
        out.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{py1 + 30}" text-anchor="middle" '
                   f'fill="#444">{escape(p.x_unit)}</text>')
    # Wider lines first, so that a thin one drawn over a wide one shows both where they agree.
    for s in sorted(p.series, key=lambda s: -s.get("width", 1.6)):
        runs, cur = [], []
        for px, v in s["points"]:
            if v is None or (p.log and v <= 0):
                if cur:
                    runs.append(cur)
                cur = []
                continue
            cur.append(f"{x(px):.1f},{y(v):.1f}")
        if cur:
            runs.append(cur)
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        stroke = s.get("width", 1.6)
        for r in runs:
            if len(r) == 1:
                cx, cy = r[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="1.8" fill="{s["color"]}"/>')
                continue
            out.append(f'<polyline fill="none" stroke="{s["color"]}" stroke-width="{stroke}"{dash} '
                       f'points="{" ".join(r)}"><title>{escape(s["label"])}</title></polyline>')
    if p.note:
        out.append(f'<text x="{px0}" y="{height - 4}" font-size="9" fill="#666">'
                   f'{escape(p.note)}</text>')
    return out
