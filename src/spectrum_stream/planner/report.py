"""The plan: from a checkpoint's headers, what a scan costs and what each way of fine-tuning needs
per GPU. `build_plan` returns the JSON document `spectrum-stream plan --format json` prints; its
fields are documented in docs/planner.md, "The plan document"."""

from __future__ import annotations

import random

from ..errors import SpectrumError
from ..layout.jobs import plan_jobs
from ..results.files import compat_results
from ..results.names import DEFAULT_GROUPING
from ..results.select import unfrozen_parameters
from ..source.checkpoint import Checkpoint
from .activations import activation_terms, model_dims
from .fit import FIT_RANGE, fit_document, largest_fitting, spectrum_at
from .memory import GPU_COUNTS, METHODS, Footprint, fewest_gpus, fits, footprint, per_gpu
from .params import View, trainer_view
from .scan_cost import scan_cost
from .text import format_plan_text  # noqa: F401  (part of this module's interface)
from .trainable import everything, totals, trained

SYNTHETIC_SEED = 0


def synthetic_results(ckpt: Checkpoint, names: str = "trainer") -> dict[str, dict]:
    """Stand-in results when there is no scan yet: what a scan would write (keys under `names`,
    the default expert grouping), with a seeded random SNR. Selecting from them keeps
    floor(count * P / 100) matrices of each type, as a real selection does; which layers and
    experts are drawn is chance."""
    rng = random.Random(SYNTHETIC_SEED)
    records = [
        {
            "key": spec.key,
            "trainer_key": spec.trainer_key or spec.key,
            "type": spec.type,
            "status": "ok",
            "snr": rng.random(),
        }
        for job in plan_jobs(ckpt)
        for spec in job.matrices
    ]
    return compat_results(records, names, DEFAULT_GROUPING)


def _method_entry(fp, gpus: int | None, gpu_mem: float, grad_params: int) -> dict:
    counts = tuple(sorted(set(GPU_COUNTS) | ({gpus} if gpus else set())))
    fit = fits(fp, int(gpu_mem), counts)
    n = gpus or fewest_gpus(fit) or max(GPU_COUNTS)
    more = fewest_gpus(fits(fp, int(gpu_mem), tuple(2**i for i in range(11))))
    return {
        "trainable_params": fp.trainable,
        "grad_params": grad_params,
        "gpus": n,
        "fewest_gpus": more,
        "bytes_per_gpu": per_gpu(fp, n),
        "fits": fit,
    }


def build_plan(
    ckpt: Checkpoint,
    results: dict[str, dict] | None = None,
    top_percent: float = 25,
    gpus: int | None = None,
    gpu_mem: float = 80e9,
    seq_len: int = 2048,
    micro_batch: int = 1,
    optimizer: str = "adamw",
    lora_rank: int = 16,
    view: View = trainer_view,
    grouping: str | None = None,
    rate: float | None = None,
    rate_method: str = "exact",
    rates: dict[str, float] | None = None,
    fit: bool = False,
    results_path: str | None = None,
) -> dict:
    """Everything from headers alone; no weight bytes are read.

    `results`: a results file's content ({key: {"snr", "type"}}), keys named as `view` names its
    parameters; without it Spectrum's selection is drawn from synthetic_results. The selection
    is `unfrozen_parameters(results, top_percent, grouping)` (grouping None: the results' own
    types, as axolotl and freeze() rank). `gpus`: the GPU count `bytes_per_gpu` is given for
    (default: the fewest of 1, 2, 4, 8 that fits, else 8). `view`: trainer_view (what
    transformers 5 loads) or stored_view (the tensors as stored). `rate` / `rates`: measured
    m*n*k per second of `rate_method` / of each method, for the scan time. `fit`: search the
    largest whole P whose Spectrum-P fits `gpus` GPUs of `gpu_mem` (planner/fit.py) and plan at
    it (at 1 when none fits), ignoring `top_percent`; `results_path` names the results file in the
    select command it gives.
    """
    params = view(ckpt)
    names = getattr(view, "names", "checkpoint")
    notes = []
    synthetic = results is None
    selection = synthetic_results(ckpt, names) if results is None else results
    dims = model_dims(ckpt.config, params)
    act_terms = activation_terms(dims, seq_len, micro_batch)
    act = sum(act_terms.values())

    def spectrum_footprint(percent: float) -> Footprint:
        """Spectrum-P's bytes: the one function both the plan and --fit use."""
        chosen = trained(params, unfrozen_parameters(selection, percent, grouping))[0]
        return footprint(params, "spectrum", chosen, optimizer, lora_rank, act)

    fitted = fit_shortfall = None
    if fit:
        if gpus is None:
            raise SpectrumError("--fit needs --gpus N: the GPU count to fit the selection on")
        n = gpus
        best, after = largest_fitting(
            lambda p: spectrum_at(spectrum_footprint(p), p, n, int(gpu_mem))
        )
        fitted, fit_shortfall = fit_document(best, after, gpus, results_path, grouping)
        top_percent = best.top_percent if best else FIT_RANGE[0]
    if synthetic:
        notes.append(
            f"no results file: Spectrum-{top_percent:g}% is estimated by keeping floor(count * "
            f"{top_percent:g} / 100) matrices of each type, drawn at random (seed {SYNTHETIC_SEED}); "
            "for fused or row-ranged experts, which tensors receive gradients depends on the draw"
            + ("; --fit searched this stand-in selection" if fit else "")
        )
    patterns = unfrozen_parameters(selection, top_percent, grouping)
    chosen, unmatched = trained(params, patterns)
    if unmatched:
        notes.append(
            f"{len(unmatched)} of {len(patterns)} patterns match no parameter of this "
            f"view, e.g. {unmatched[0]!r}"
        )

    full = everything(params)
    methods = {}
    for method in METHODS:
        sel = full if method == "full" else chosen
        if method == "spectrum":
            fp = spectrum_footprint(top_percent)
        else:
            fp = footprint(params, method, sel, optimizer, lora_rank, act)
        grad = totals(sel)[1] if method in ("full", "spectrum") else fp.grads // 2
        methods[method] = _method_entry(fp, gpus, gpu_mem, grad)
    notes.append("activations are an estimate (gradient checkpointing; docs/planner.md)")
    doc = {
        "model": ckpt.name,
        "params_total": sum(p.numel for p in params if p.is_float),
        "settings": {
            "top_percent": top_percent,
            "gpus": gpus,
            "gpu_mem": int(gpu_mem),
            "seq_len": seq_len,
            "micro_batch": micro_batch,
            "optimizer": optimizer,
            "lora_rank": lora_rank,
            "grouping": grouping,
            "view": getattr(view, "__name__", str(view)),
            "names": names,
            "results": "synthetic" if synthetic else "given",
        },
        "activations": act_terms,
        "scan": scan_cost(ckpt, {**({rate_method: rate} if rate else {}), **(rates or {})}),
        "methods": methods,
        "notes": notes,
    }
    if fit:
        doc["fit"] = fitted
        if fit_shortfall is not None:
            doc["fit_shortfall"] = fit_shortfall
    return doc
