"""How similar are two scans? Rank correlation of SNRs and agreement of the top-P selections.

Why: a scan in float32 vs bfloat16, on GPU vs CPU, with the Gram route vs svdvals, or ours vs a
file published by the original Spectrum tool, should choose the same modules to train; this says
per type how far they agree. Statistics are defined in docs/metrics.md ("Comparing two scans").
Published files sometimes hold NaN, Infinity or null SNRs: such entries are skipped and counted.
"""

from __future__ import annotations

import math

import numpy as np

from ..results.select import group, read_results, select, top_count


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than 2 pairs or a constant side."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(
            f"spearman needs two 1-D sequences of one length, got {xs.shape} and {ys.shape}"
        )
    if xs.size < 2:
        return math.nan
    rx = _average_ranks(xs) - (xs.size + 1) / 2
    ry = _average_ranks(ys) - (ys.size + 1) / 2
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if denominator == 0.0:
        return math.nan
    return max(-1.0, min(1.0, float(rx @ ry) / denominator))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts_group = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    group_of = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], values.size)  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[group_of]
    return ranks


def load_published_results(path) -> dict:
    """A results file as written by any Spectrum tool (results/published.py): the modules with a
    finite SNR; the skipped ones are warned about, see read_results for their keys."""
    return read_results(path, "in the compare output").results


def _usable(results: dict) -> tuple[dict, list[str]]:
    """(entries with a finite number snr and a string type, keys of the others)."""
    kept, skipped = {}, []
    for key, info in results.items():
        snr = info.get("snr") if isinstance(info, dict) else None
        ok = (
            isinstance(snr, int | float)
            and not isinstance(snr, bool)
            and math.isfinite(snr)
            and isinstance(info.get("type"), str)
        )
        if ok:
            kept[key] = info
        else:
            skipped.append(key)
    return kept, skipped


def _jaccard(chosen_a: set, chosen_b: set) -> float | None:
    """|A & B| / |A | B|; None where both selections are empty: nothing was chosen to agree on."""
    union = chosen_a | chosen_b
    return len(chosen_a & chosen_b) / len(union) if union else None


def _nan_to_none(value: float):
    return None if isinstance(value, float) and math.isnan(value) else value


def compare_results(
    a: dict,
    b: dict,
    top_percent: float = 25.0,
    grouping: str | None = None,
    skipped: tuple[list[str], list[str]] = ([], []),
) -> dict:
    """Compare two results dicts {key: {"snr", "type"}} type by type (see docs/metrics.md).

    Per type present in both: spearman over the common keys (None below 2), top_overlap (Jaccard of
    the two top-P selections, each made from its own scan as a trainer would), entered (in B's
    selection, not A's; in B's order), left (in A's, not B's; in A's order), n_a, n_b, n_common.
    Top level: the same statistics over all modules, only_in_a/only_in_b, and the skipped keys
    (`skipped`: those the file reader already left out, plus any non-finite ones in a and b).
    `grouping` None ranks within each file's own types, as `select` and `report` do. top_overlap
    is None where neither side selects anything (`empty_types` names the types where P% of the
    type's size rounds down to none on a side).
    """
    clean_a, skipped_a = _usable(a)
    clean_b, skipped_b = _usable(b)
    skipped_a, skipped_b = list(skipped[0]) + skipped_a, list(skipped[1]) + skipped_b
    groups_a, groups_b = group(clean_a, grouping), group(clean_b, grouping)
    chosen_a, chosen_b = (
        select(clean_a, top_percent, grouping),
        select(clean_b, top_percent, grouping),
    )
    types = {}
    for t in [t for t in groups_a if t in groups_b]:
        snr_a, snr_b = dict(groups_a[t]), dict(groups_b[t])
        common = [key for key in snr_a if key in snr_b]
        top_a, top_b = set(chosen_a[t]), set(chosen_b[t])
        types[t] = {
            "spearman": _nan_to_none(
                spearman([snr_a[k] for k in common], [snr_b[k] for k in common])
            ),
            "top_overlap": _jaccard(top_a, top_b),
            "entered": [k for k in chosen_b[t] if k not in top_a],
            "left": [k for k in chosen_a[t] if k not in top_b],
            "n_a": len(snr_a),
            "n_b": len(snr_b),
            "n_common": len(common),
            "n_top_a": len(top_a),
            "n_top_b": len(top_b),
        }
    empty_types = [
        t
        for t in types
        if top_count(len(groups_a[t]), top_percent) == 0
        or top_count(len(groups_b[t]), top_percent) == 0
    ]
    gone_a, gone_b = set(skipped_a), set(skipped_b)
    common_keys = [key for key in clean_a if key in clean_b]
    all_top_a = {k for keys in chosen_a.values() for k in keys}
    all_top_b = {k for keys in chosen_b.values() for k in keys}
    return {
        "top_percent": top_percent,
        "grouping": grouping or "types",
        "spearman": _nan_to_none(
            spearman(
                [clean_a[k]["snr"] for k in common_keys], [clean_b[k]["snr"] for k in common_keys]
            )
        ),
        "top_overlap": _jaccard(all_top_a, all_top_b),
        "n_top_a": len(all_top_a),
        "n_top_b": len(all_top_b),
        "empty_types": empty_types,
        "n_a": len(clean_a),
        "n_b": len(clean_b),
        "n_common": len(common_keys),
        "only_in_a": [k for k in a if k not in b and k not in gone_b],
        "only_in_b": [k for k in b if k not in a and k not in gone_a],
        "skipped_a": skipped_a,
        "skipped_b": skipped_b,
        "types_only_in_a": [t for t in groups_a if t not in groups_b],
        "types_only_in_b": [t for t in groups_b if t not in groups_a],
        "types": types,
    }


def format_compare_text(report: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """A readable report: the overall answer first, then one line per type, then the odd ones out."""
    name_a, name_b = names
    p = report["top_percent"]
    lines = [
        f"Spearman rank correlation of SNR over {report['n_common']} common modules: "
        f"{_num(report['spearman'])}",
        f"Top {p:g}% selections ({_grouping_words(report['grouping'])}): Jaccard overlap "
        f"{_num(report['top_overlap'])} ({report['n_top_a']} selected in {name_a}, "
        f"{report['n_top_b']} in {name_b})",
        f"Modules with a finite SNR: {name_a} {report['n_a']}, {name_b} {report['n_b']}",
    ]
    empty = report.get("empty_types", [])
    if empty:
        smallest = min(min(report["types"][t]["n_a"], report["types"][t]["n_b"]) for t in empty)
        lines.append(
            f"warning: {len(empty)} of {len(report['types'])} types select nothing on a side: "
            f"{p:g}% of {smallest} modules selects none (overlap n/a where both are empty)"
        )
    types = report["types"]
    if types:
        width = max(len("type"), *(len(t) for t in types))
        lines.append("")
        lines.append(
            f"{'type':<{width}}  {'n_' + name_a:>6} {'n_' + name_b:>6} {'common':>6} "
            f"{'spearman':>8} {'top_jacc':>8} {'entered':>7} {'left':>5}"
        )
        for t, row in types.items():
            lines.append(
                f"{t:<{width}}  {row['n_a']:>6} {row['n_b']:>6} {row['n_common']:>6} "
                f"{_num(row['spearman']):>8} {_num(row['top_overlap']):>8} "
                f"{len(row['entered']):>7} {len(row['left']):>5}"
            )
    for label, keys in (
        (f"only in {name_a}", report["only_in_a"]),
        (f"only in {name_b}", report["only_in_b"]),
        (f"skipped in {name_a} (SNR not a finite number)", report["skipped_a"]),
        (f"skipped in {name_b} (SNR not a finite number)", report["skipped_b"]),
        (f"types only in {name_a}", report["types_only_in_a"]),
        (f"types only in {name_b}", report["types_only_in_b"]),
    ):
        if keys:
            shown = ", ".join(keys[:5]) + (f", ... ({len(keys) - 5} more)" if len(keys) > 5 else "")
            lines.append(f"{label}: {len(keys)}: {shown}")
    return "\n".join(lines) + "\n"


def _grouping_words(grouping: str) -> str:
    return "within each file's types" if grouping == "types" else f"{grouping} grouping"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
