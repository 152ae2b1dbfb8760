"""Benchmark 3: the decomposition routes per matrix shape, on one device.

Each route gets the same float32 matrices; the table gives seconds per matrix and the ratio
against the naive exact call (`svdvals` on the matrix as stored), measured in the same run.
On CPU: svdvals as stored, svdvals on the tall orientation, the Gram route through torch and
through numpy (what `--method gram` uses on CPU). On CUDA: the scan's exact route (the R factor
of a QR for tall matrices, gesvd from k = 512), the float64 Gram route, gesvd and gesvdj with and
without the QR, and torch's default call last (the ratio column is against the first row there);
this is how `--svd-driver`'s default is chosen (kernel/snr.py, GESVD_MIN_K). gesvda is not
timed: it is approximate, and the scan refuses it.

    python3 bench/bench_kernels.py [--device cpu] [--shapes 1024x2816,2816x1024,1024x1024]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, table

from spectrum_stream.kernel.gram import gram_matrix, singular_values_from_gram
from spectrum_stream.kernel.snr import exact_singular_values


def timed(fn, w, device, repeat: int) -> float:
    fn(w)  # warm-up (cuSOLVER handles, MKL threads)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(w)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def torch_gram(w):
    x = w.double()
    g = x @ x.mT if w.shape[0] <= w.shape[1] else x.mT @ x
    return torch.linalg.eigvalsh(g)


def routes(device: torch.device) -> dict:
    tall = lambda w: w if w.shape[0] >= w.shape[1] else w.mT
    if device.type == "cpu":
        return {
            "svdvals as stored (baseline)": torch.linalg.svdvals,
            "svdvals, tall orientation (exact)": lambda w: torch.linalg.svdvals(tall(w)),
            "Gram f64, torch": torch_gram,
            "Gram f64, numpy syrk + eigvalsh (gram)": lambda w: singular_values_from_gram(
                gram_matrix(w)[None]
            ),
        }
    # the scan's own routes first, the slow baseline last, so that a step killed on its timeout
    # still has the rows that choose --svd-driver's default (bench/gpu_check.sh)
    out = {
        "exact route (QR if tall, default driver)": lambda w: exact_singular_values(w[None]),
        "Gram f64, torch (gram)": lambda w: singular_values_from_gram(gram_matrix(w)[None]),
    }
    for driver in ("gesvd", "gesvdj"):
        out[f"QR if tall, driver {driver}"] = lambda w, d=driver: exact_singular_values(
            w[None], driver=d
        )
        out[f"svdvals tall, no QR, driver {driver}"] = lambda w, d=driver: torch.linalg.svdvals(
            tall(w), driver=d
        )
    out["svdvals as stored (torch default, the original tool)"] = torch.linalg.svdvals
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--shapes",
        default="1024x2816,2816x1024,1024x1024,256x1024,32000x1024",
        help="comma-separated MxN; put the shape you most want first",
    )
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for text in args.shapes.split(","):
        m, n = map(int, text.split("x"))
        w = (torch.randn(m, n, generator=gen) * 0.02).to(device)
        base = None
        print(f"# {m}x{n} on {device}: timing {len(routes(device))} routes", flush=True)
        for name, fn in routes(device).items():
            s = timed(fn, w, device, args.repeat)
            base = base or s
            rows.append(
                {
                    "shape": f"{m}x{n}",
                    "route": name,
                    "s": f"{s:.4f}",
                    "ratio": f"{base / s:.2f}x",
                    "gflops": f"{4 * m * n * min(m, n) / s / 1e9:.0f}",
                }
            )
            print("# done: " + " | ".join(rows[-1].values()), flush=True)  # kept on a timeout
    print(f"Machine: {machine()}; device {device}; numpy {np.__version__}\n")
    print(
        table(
            rows,
            [
                ("shape", "shape"),
                ("route", "route"),
                ("s", "s per matrix"),
                ("ratio", "speed-up vs first row"),
                ("gflops", "4mnk/s GFLOP/s"),
            ],
        )
    )


if __name__ == "__main__":
    main()
