"""The plan as text: first how many GPUs each method needs, then the per-GPU breakdown, then the
scan. Reads only the document build_plan returns."""

from __future__ import annotations

from ..units import human_seconds

GB = 1e9


def _gb(n: float) -> str:
    return f"{n / GB:,.0f} GB" if abs(n) >= 10 * GB else f"{n / GB:.1f} GB"


def _gb1(n: float) -> str:
    """One decimal always: a fit's margin is often a few GB of a large total."""
    return f"{n / GB:,.1f} GB"


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def _label(method: str, s: dict) -> str:
    return {
        "full": "Full fine-tuning",
        "spectrum": f"Spectrum-{s['top_percent']:g}%",
        "lora": f"LoRA r{s['lora_rank']}",
        "qlora": f"QLoRA r{s['lora_rank']}",
    }[method]


def _verdict(m: dict, mem: float) -> str:
    f = m["fits"][str(m["gpus"])]
    if f["fits"]:
        return f"{m['gpus']} x {_gb(mem)} (fits with {_gb(f['margin'])} to spare each)"
    more = (
        f"; {m['fewest_gpus']} x {_gb(mem)} would fit"
        if m.get("fewest_gpus")
        else "; no GPU count up to 1024 fits"
    )
    return (
        f"does not fit on {m['gpus']} x {_gb(mem)} (needs {_gb(f['need'])} each, "
        f"{_gb(-f['margin'])} short{more})"
    )


def _fit_lines(plan: dict) -> list[str]:
    """`--fit`'s answer, first: the largest Spectrum-P that fits, or the smallest shortfall."""
    s = plan["settings"]
    fit, short = plan["fit"], plan.get("fit_shortfall")
    stand_in = s["results"] == "synthetic"
    label = " (stand-in selection: no results file)" if stand_in else ""
    if fit is None:
        assert short is not None, "a plan without a fit has a shortfall"
        return [
            f"Largest Spectrum selection on {short['gpus']} x {_gb(s['gpu_mem'])}{label}: none "
            f"fits; Spectrum-{short['top_percent']}% needs {_gb1(short['per_gpu_bytes'])} per "
            f"GPU, {_gb1(short['shortfall_bytes'])} short",
            "",
        ]
    after = fit["next"]
    beyond = (
        "every module fits"
        if after is None
        else f"Spectrum-{after['top_percent']}% would need {_gb1(after['per_gpu_bytes'])}"
    )
    how = "with your results file" if not stand_in else "once you have a results file"
    return [
        f"Largest Spectrum selection on {fit['gpus']} x {_gb(s['gpu_mem'])}{label}: "
        f"Spectrum-{fit['top_percent']}%, {_count(fit['trainable_params'])} trainable "
        f"parameters, needs {_gb1(fit['per_gpu_bytes'])} per GPU ({_gb1(fit['margin_bytes'])} "
        f"to spare; {beyond})",
        f"  select it {how}: {fit['select_command']}",
        "",
    ]


def format_plan_text(plan: dict) -> str:
    s, methods = plan["settings"], plan["methods"]
    mem = s["gpu_mem"]
    lines = _fit_lines(plan) if "fit" in plan else []
    lines += [f"{_label(k, s)}: {_verdict(m, mem)}" for k, m in methods.items()]
    lines += [
        "",
        f"{plan['model']}: {_count(plan['params_total'])} parameters; ZeRO-3/FSDP sharding, "
        f"{s['optimizer']}, seq {s['seq_len']} x micro-batch {s['micro_batch']}, "
        f"Spectrum from {s['results']} results.",
        "Per GPU (GB) at the GPU count shown; 'need' adds the fixed overhead:",
    ]
    cols = ("weights", "grads", "optimizer", "master", "activations", "total")
    head = (
        f"{'method':<18}{'GPUs':>5}{'trainable':>11}"
        + "".join(f"{c:>12}" for c in cols)
        + f"{'need':>9}"
    )
    lines.append(head)
    for k, m in methods.items():
        b = m["bytes_per_gpu"]
        need = m["fits"][str(m["gpus"])]["need"]
        lines.append(
            f"{_label(k, s):<18}{m['gpus']:>5}{_count(m['trainable_params']):>11}"
            + "".join(f"{b[c] / GB:>12.1f}" for c in cols)
            + f"{need / GB:>9.1f}"
        )
    lines.append("Fits per GPU count (margin per GPU, GB):")
    for k, m in methods.items():
        cells = [
            f"{n}: {'yes' if f['fits'] else 'no'} {f['margin'] / GB:+.0f}"
            for n, f in m["fits"].items()
        ]
        lines.append(f"  {_label(k, s):<18}" + "   ".join(cells))
    sc = plan["scan"]
    measured = {"cpu": "2-core CPU, measured", "measured": "measured here"}
    times = "; ".join(
        f"{dev} ({measured.get(dev, 'assumed, not measured')}) "
        + ", ".join(f"{meth} {human_seconds(t)}" for meth, t in per.items())
        for dev, per in sc["seconds"].items()
    )
    g = sc["gpu_bytes_largest_matrix"]
    lines += [
        "",
        f"Scan: {sc['matrices']:,} matrices, {_gb(sc['weight_bytes'])} of weights in "
        f"{sc['shards']} shards ({_gb(sc['shard_bytes'])}); with --delete-shards about "
        f"{_gb(sc['disk_bytes_delete_shards'])} of disk",
        f"  largest matrix {sc['largest_matrix'][0]} x {sc['largest_matrix'][1]}: "
        f"{_gb(g['exact'])} on the device (exact), {_gb(g['gram'])} (gram)",
        f"  time (m*n*k {sc['mnk']:.2e}): {times}",
    ]
    lines += [f"Note: {n}" for n in plan["notes"]]
    return "\n".join(lines) + "\n"
