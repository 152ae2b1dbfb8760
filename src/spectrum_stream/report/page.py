"""The report's HTML: one self-contained page (inline CSS and SVG, no scripts, no links out).

Order follows what a reader needs: what was scanned, what is selected and how big it is, what the
numbers mean, the commands to use it; then the pictures; then the tables. Everything that came
from a checkpoint or a user (keys, types, the title, paths) is escaped: module names are data,
and a page that opens offline from a results folder must not run anything from them.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from html import escape

OPEN_ROWS = 12  # a type's selection table stays open when it has at most this many rows
OPEN_TYPES = 30  # ... and the page has at most this many types
TYPES_OPEN = 40  # the types overview stays open up to this many types
PATTERNS_OPEN = 60  # the pattern list stays open up to this many patterns

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .4em 0 1em; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12.5px; overflow-wrap: anywhere; }
pre { background: #f6f6f6; padding: .5em .8em; overflow-x: auto; font-size: 12.5px; }
dl.facts { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 1em; }
dl.facts dt { color: #555; } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.box { border: 1px solid #ccd; background: #f7f8fc; padding: .2em 1em .6em; margin: 1em 0; }
figure { margin: .6em 0 1.4em; } figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 13px; max-width: 80em; }
details { margin: .3em 0; } summary { cursor: pointer; }
details.group > details, details.group > p { margin-left: 1.4em; }
nav a { margin-right: 1em; }
.muted { color: #777; }
ol.patterns { font-size: 12.5px; columns: 2 28em; }
"""


@dataclass
class TypeSummary:
    """One ranking group's row in the overview and its selected modules as (pattern, key, snr,
    rank); `always`: a module outside the layers, trained by every selection."""

    type: str
    projection: str
    count: int
    snr_min: float
    snr_median: float
    snr_max: float
    selected: list[tuple[str, str, float, int]] = field(default_factory=list)
    always: bool = False


@dataclass
class Figure:
    """A heading, a caption, the inline SVG and its kind (the figure's class: rank, outside,
    alpha, experts or spectra)."""

    heading: str
    caption: str
    svg: str
    kind: str = ""


@dataclass
class PageData:
    """What the page shows."""

    title: str
    top_percent: float
    grouping: str | None
    scanned: list[tuple[str, str]]
    modules: int
    n_selected: int
    patterns: list[str]
    size: str
    figures: list[Figure]
    types: list[TypeSummary]
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    results_arg: str = "RESULTS.json"
    selection_file: str = "selection.yaml"
    has_alpha: bool = False
    dense: bool = True
    deficient: str = (
        ""  # the rank-deficient modules, in words (docs/spec.md, "The numerical floor")
    )


def _num(x: float) -> str:
    return f"{x:.6g}" if math.isfinite(x) else escape(str(x))


def _facts(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
    return f"<dl class=facts>{body}</dl>"


def _overview(types: list[TypeSummary]) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(t.type)}</code></td><td class=num>{t.count}</td>"
        f"<td class=num>{len(t.selected)}</td><td class=num>{_num(t.snr_min)}</td>"
        f"<td class=num>{_num(t.snr_median)}</td><td class=num>{_num(t.snr_max)}</td></tr>"
        for t in types
    )
    table = (
        "<table><tr><th>type (sorted by name)</th><th>modules</th><th>selected</th>"
        f"<th>min SNR</th><th>median SNR</th><th>max SNR</th></tr>{rows}</table>"
    )
    if len(types) <= TYPES_OPEN:
        return table
    return f"<details><summary>all {len(types)} types</summary>{table}</details>"


def _type_block(t: TypeSummary, is_open: bool) -> str:
    why = " (outside the layers: always trained)" if t.always else ""
    summary = f"<code>{escape(t.type)}</code> &mdash; {len(t.selected)} of {t.count} selected{why}"
    if not t.selected:
        return f"<p>{summary}</p>"
    rows = "".join(
        f"<tr><td class=num>{rank} / {t.count}</td><td><code>{escape(pattern)}</code></td>"
        f"<td class=num>{_num(snr)}</td></tr>"
        for pattern, _key, snr, rank in t.selected
    )
    table = (
        "<table><tr><th>rank within type</th><th>pattern select writes</th><th>SNR</th></tr>"
        f"{rows}</table>"
    )
    return f"<details{' open' if is_open else ''}><summary>{summary}</summary>{table}</details>"


def _by_type(types: list[TypeSummary]) -> str:
    """One block per type, grouped by projection: a projection with many types (one per expert)
    gets an outer <details> so that 256 experts do not make 256 lines at the top level."""
    groups: dict[str, list[TypeSummary]] = {}
    for t in types:
        groups.setdefault(t.projection, []).append(t)
    few = len(types) <= OPEN_TYPES
    parts = []
    for proj in sorted(groups):
        members = groups[proj]
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


def _commands(page: PageData) -> str:
    flag = f" --expert-grouping {page.grouping}" if page.grouping else ""
    select_cmd = (
        f"spectrum-stream select {shlex.quote(page.results_arg)} --top-percent "
        f"{page.top_percent:g}{flag} -o unfrozen.yaml"
    )
    first = "".join(f"\n  - {json.dumps(p)}" for p in page.patterns[:3])
    more = f"\n  # ... {len(page.patterns) - 3} more" if len(page.patterns) > 3 else ""
    grouping = f", grouping={page.grouping!r}" if page.grouping else ""
    freeze = (
        "from spectrum_stream import freeze\n"
        f"freeze(model, {page.results_arg!r}, top_percent={page.top_percent:g}{grouping})"
    )
    return (
        "<h2 id=next>Use this selection</h2>"
        f'<p>The same list, from the command line (<a href="{escape(page.selection_file)}">'
        f"{escape(page.selection_file)}</a> beside this page is its output):</p>"
        f"<pre>{escape(select_cmd)}</pre>"
        "<p>In axolotl's config, the list goes under <code>unfrozen_parameters</code>:</p>"
        f"<pre>{escape('unfrozen_parameters:' + first + more)}</pre>"
        "<p>In Python, on a model loaded with transformers 5:</p>"
        f"<pre>{escape(freeze)}</pre>"
    )


def _meaning(page: PageData) -> str:
    alpha = (
        "<dt>alpha</dt><dd>The exponent of a power law fitted to the tail of a module's "
        "eigenvalues (squared singular values), as WeightWatcher fits it. Values of about 2 to "
        "6 are typical of trained layers; a large alpha reads as under-trained, and a fit on "
        "few tail values is rough.</dd>"
        if page.has_alpha
        else ""
    )
    return (
        "<h2 id=meaning>What the numbers mean</h2><dl class=facts>"
        "<dt>SNR</dt><dd>A module's signal-to-noise ratio: the sum of its singular values above "
        "the Marchenko-Pastur threshold (the largest a random matrix of its shape would show) "
        "over the sum of those below, divided by the largest singular value. Only the ranking "
        "within a type matters: a module is selected when its SNR is in the top "
        f"{page.top_percent:g}% of its type, however many of its values pass the threshold."
        f"</dd>{alpha}</dl>"
    )


def _patterns(page: PageData) -> str:
    items = "".join(f"<li><code class=pattern>{escape(p)}</code></li>" for p in page.patterns)
    opened = " open" if len(page.patterns) <= PATTERNS_OPEN else ""
    return (
        f"<details{opened}><summary>all {len(page.patterns)} patterns, in the order select "
        f"writes them</summary><ol class=patterns id=patterns>{items}</ol></details>"
    )


def _skipped(page: PageData) -> str:
    if not page.skipped:
        return ""
    items = "".join(f"<li><code>{escape(k)}</code></li>" for k in page.skipped)
    return (
        f"<h2 id=skipped>Skipped: {len(page.skipped)} modules without a finite SNR</h2>"
        "<p class=muted>Their SNR is NaN, Infinity or null in the results file (the original "
        "tool writes these for layer norms and some routers); like every command, the report "
        f"leaves them out.</p><details><summary>list</summary><ul>{items}</ul></details>"
    )


def render(page: PageData) -> str:
    """The whole page as one string."""
    title = page.title or "Spectrum SNR report"
    how = f"{page.grouping} grouping" if page.grouping else "the file's types"
    summary = [
        (
            "selected",
            f"{page.n_selected:,} of {page.modules:,} modules ({len(page.patterns):,} "
            f"patterns): the top {page.top_percent:g}% by SNR within each type ({how}), plus the "
            "embeddings and output head",
        ),
        ("size", page.size),
    ]
    if page.deficient:
        summary.append(("rank deficient", page.deficient))
    figures = "\n".join(
        f"<h2 id=fig{i}>{escape(f.heading)}</h2>\n<figure class={f.kind or 'picture'}>{f.svg}"
        f"<figcaption>{escape(f.caption)}</figcaption></figure>"
        for i, f in enumerate(page.figures)
    )
    links, seen = [("#next", "Use it"), ("#meaning", "Meaning")], set()
    for i, f in enumerate(page.figures):  # one link per kind: "Experts: x" -> "Experts"
        kind = f.heading.split(":")[0].split(" (")[0]
        if kind not in seen:
            seen.add(kind)
            links.append((f"#fig{i}", kind))
    links += [("#types", "Types"), ("#selection", "Selection")]
    if page.skipped:
        links.append(("#skipped", "Skipped"))
    nav = " ".join(f'<a href="{a}">{escape(h)}</a>' for a, h in links)
    notes = "".join(f"<p class=muted>{escape(n)}</p>" for n in page.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<h2 id=scanned>What was scanned</h2>
{_facts(page.scanned)}
<div class=box><h2 id=summary>Selection</h2>
{_facts(summary)}
<p><a href="{escape(page.selection_file)}">{escape(page.selection_file)}</a>: the list as
axolotl reads it, exactly what <code>spectrum-stream select</code> writes.</p>
{_patterns(page)}
</div>
{_meaning(page)}
{_commands(page)}
{notes}
<nav>{nav}</nav>
{figures}
<h2 id=types>Types</h2>
{_overview(page.types)}
<h2 id=selection>Selection by type: top {escape(f"{page.top_percent:g}")}% by SNR within each type</h2>
{_by_type(page.types)}
{_skipped(page)}
</body></html>
"""
