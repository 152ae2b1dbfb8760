"""What users do today: load the whole model in float32 with transformers, then svdvals per module.

Run as a child process by bench_scan.py so its peak RSS is measured on its own.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

from spectrum_stream.kernel.snr import spectrum_stats


def main(folder: str) -> None:
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    loaded = time.perf_counter() - t0
    snr = {}
    for name, param in model.named_parameters():
        if param.dim() == 2:
            with torch.no_grad():
                snr[name.removesuffix(".weight")] = spectrum_stats(param.detach()[None])[0].snr
    print(json.dumps({"modules": len(snr), "load_s": loaded, "snr": snr}))


if __name__ == "__main__":
    main(sys.argv[1])
