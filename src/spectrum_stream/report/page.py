"""The report's HTML: one self-contained page (inline CSS, relative image links, no scripts).

Everything that came from a checkpoint or a user (keys, types, the title) is escaped: module names
are data, and a page that opens offline from a results folder must not run anything from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

OPEN_ROWS = 12  # a type's selection table stays open when it has at most this many rows
OPEN_TYPES = 30  # ... and the page has at most this many types
TYPES_OPEN = 40  # the types overview stays open up to this many types

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .4em 0 1em; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12.5px; word-break: break-all; }
dl.counts { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; }
dl.counts dt { color: #555; } dl.counts dd { margin: 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
details { margin: .3em 0; } summary { cursor: pointer; }
details.group > details, details.group > p { margin-left: 1.4em; }
nav a { margin-right: 1em; }
.muted { color: #777; }
"""


@dataclass
class TypeSummary:
    """One type's row in the overview and its selected modules as (key, snr, rank)."""

    type: str
    projection: str
    count: int
    snr_min: float
    snr_median: float
    snr_max: float
    selected: list[tuple[str, float, int]] = field(default_factory=list)


@dataclass
class PageData:
    """What the page shows; `figures` are (heading, caption, relative PNG path)."""

    title: str
    top_percent: float
    counts: list[tuple[str, str]]
    figures: list[tuple[str, str, str]]
    types: list[TypeSummary]
    notes: list[str] = field(default_factory=list)


def _num(x: float) -> str:
    return f"{x:.6g}" if math.isfinite(x) else escape(str(x))


def _figure(heading: str, caption: str, src: str) -> str:
    return (
        f'<figure><img src="{escape(src, quote=True)}" alt="{escape(heading, quote=True)}"'
        f' loading="lazy"><figcaption>{escape(caption)}</figcaption></figure>'
    )


def _overview(types: list[TypeSummary]) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(t.type)}</code></td><td class=num>{t.count}</td>"
        f"<td class=num>{len(t.selected)}</td><td class=num>{_num(t.snr_min)}</td>"
        f"<td class=num>{_num(t.snr_median)}</td><td class=num>{_num(t.snr_max)}</td></tr>"
        for t in types
    )
    table = (
        "<table><tr><th>type</th><th>modules</th><th>selected</th><th>min SNR</th>"
        f"<th>median SNR</th><th>max SNR</th></tr>{rows}</table>"
    )
    if len(types) <= TYPES_OPEN:
        return table
    return f"<details><summary>all {len(types)} types</summary>{table}</details>"


def _type_block(t: TypeSummary, is_open: bool) -> str:
    summary = f"<code>{escape(t.type)}</code> &mdash; {len(t.selected)} of {t.count} selected"
    if not t.selected:
        return f"<p>{summary}</p>"
    rows = "".join(
        f"<tr><td><code>{escape(t.type)}</code></td><td><code>{escape(key)}</code></td>"
        f"<td class=num>{_num(snr)}</td><td class=num>{rank} / {t.count}</td></tr>"
        for key, snr, rank in t.selected
    )
    table = (
        "<table><tr><th>type</th><th>selected key</th><th>SNR</th>"
        f"<th>rank within type</th></tr>{rows}</table>"
    )
    return f"<details{' open' if is_open else ''}><summary>{summary}</summary>{table}</details>"


def _selection(types: list[TypeSummary]) -> str:
    """One block per type, grouped by projection: a projection with many types (one per expert)
    gets an outer <details> so that 256 experts do not make 256 lines at the top level."""
    groups: dict[str, list[TypeSummary]] = {}
    for t in types:
        groups.setdefault(t.projection, []).append(t)
    few = len(types) <= OPEN_TYPES
    parts = []
    for proj, members in groups.items():
        if len(members) == 1:
            t = members[0]
            parts.append(_type_block(t, few and len(t.selected) <= OPEN_ROWS))
            continue
        n_sel = sum(len(t.selected) for t in members)
        n_all = sum(t.count for t in members)
        inner = "\n".join(_type_block(t, few and len(t.selected) <= OPEN_ROWS) for t in members)
        parts.append(
            f"<details class=group><summary><code>{escape(proj)}</code> &mdash; "
            f"{len(members)} types, {n_sel} of {n_all} selected</summary>\n{inner}"
            "</details>"
        )
    return "\n".join(parts)


def render(page: PageData) -> str:
    """The whole page as one string."""
    title = page.title or "Spectrum SNR report"
    counts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in page.counts)
    figures = "\n".join(
        f"<h2 id=fig{i}>{escape(h)}</h2>\n{_figure(h, c, src)}"
        for i, (h, c, src) in enumerate(page.figures)
    )
    links, seen = [], set()
    for i, (h, _, _) in enumerate(page.figures):  # one link per kind: "Experts: x" -> "Experts"
        kind = h.split(":")[0]
        if kind not in seen:
            seen.add(kind)
            links.append((f"#fig{i}", kind))
    links += [("#types", "Types"), ("#selection", "Selection")]
    nav = " ".join(f'<a href="{a}">{escape(h)}</a>' for a, h in links)
    notes = "".join(f"<p class=muted>{escape(n)}</p>" for n in page.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<dl class=counts>{counts}</dl>
{notes}
<nav>{nav}</nav>
{figures}
<h2 id=types>Types</h2>
{_overview(page.types)}
<h2 id=selection>Selection: top {escape(f"{page.top_percent:g}")}% by SNR within each type</h2>
{_selection(page.types)}
</body></html>
"""
