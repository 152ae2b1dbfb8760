"""What a spectrum-stream scan of a checkpoint costs, from its headers: matrices, bytes, disk, GPU
memory of the largest matrix, and time from stated device throughputs (or a measured one).

Time is m*n*k (k = min(m, n)) summed over the matrices, divided by a rate in m*n*k per second.
Assumptions: docs/planner.md, "Scan cost".
"""

from __future__ import annotations

from ..kernel import memory
from ..layout.jobs import plan_jobs
from ..source.checkpoint import Checkpoint

# m*n*k per second, one matrix at a time, by device and --method.
# cpu: measured on a 2-core AMD EPYC at Qwen1.5-110B's shapes (bench/RESULTS.md section 2: an
#   8192x49152 exact svdvals took ~194 s; gram with two workers did a layer in half exact's time).
# h100/h200: ASSUMED, not measured (no GPU figure in bench/RESULTS.md yet). gram's figure is the
#   project's target (a 110B-shaped scan, ~9e14 m*n*k, in 15 minutes); exact (cuSOLVER gesvdj,
#   one matrix after another) is assumed ten times slower. H200 is the same chip as H100 with
#   faster memory: the same figures. Pass a measured rate for a real estimate.
RATES = {
    "cpu": {"exact": 1.7e10, "gram": 3.4e10},
    "h100": {"exact": 1.0e11, "gram": 1.0e12},
    "h200": {"exact": 1.0e11, "gram": 1.0e12},
}


def matrix_gpu_bytes(m: int, n: int, raw: int) -> dict[str, int]:
    """Device bytes to decompose one [m, n] matrix stored in `raw` bytes, held whole: the scan's
    own accounting (kernel/memory.py: what it reads, copies and allocates, by route)."""
    itemsize = max(1, raw // max(1, m * n))
    load = memory.load_bytes((m, n), raw_itemsize=itemsize)
    # decoding holds the stored tensor beside its float32 copy; the route then holds the copy
    return {method: max(load, memory.whole_bytes((m, n), method)) for method in ("exact", "gram")}


def scan_cost(ckpt: Checkpoint, measured: dict[str, float] | None = None) -> dict:
    """The scan's cost (see the module doc). `measured`: {method: m*n*k per second} measured on
    the device the scan will use (kernel/calibrate.py's svd_rate)."""
    jobs = plan_jobs(ckpt)
    sizes = sorted((h.size for h in ckpt.shards.values()), reverse=True)
    flops = 0.0
    biggest = (0, (0, 0), 0)  # m*n, shape, raw bytes
    for job in jobs:
        raw_per_matrix = job.nbytes // max(1, len(job.matrices))
        for spec in job.matrices:
            m, n = spec.shape
            flops += float(m) * n * min(m, n)
            if m * n > biggest[0]:
                biggest = (m * n, (m, n), raw_per_matrix)
    _, (m, n), raw = biggest
    seconds = {dev: {meth: flops / r for meth, r in rates.items()} for dev, rates in RATES.items()}
    if measured:
        seconds["measured"] = {meth: flops / r for meth, r in measured.items()}
    return {
        "matrices": sum(len(j.matrices) for j in jobs),
        "weight_bytes": sum(j.nbytes for j in jobs),
        "shards": len(sizes),
        "shard_bytes": sum(sizes),
        "disk_bytes_delete_shards": sum(sizes[:2]),
        "largest_matrix": [m, n],
        "gpu_bytes_largest_matrix": matrix_gpu_bytes(m, n, raw),
        "mnk": flops,
        "seconds": seconds,
    }
