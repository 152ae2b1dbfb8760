"""What a matrix costs in device memory on each route, and where it therefore goes.

Pure arithmetic on shapes, so the GPU decision is tested on a CPU. `--max-gpu-mem` (else the
free memory) is a cap: a matrix whose route does not fit is streamed (gram) or decomposed on
the CPU (exact), never left to an out-of-memory error. The counts follow what the kernels
allocate (kernel/snr.py, kernel/gram.py, read/staging.py); tests/test_cuda.py checks them against
`torch.cuda.max_memory_allocated` on a real GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from .gram import GRAM_BLOCK_BYTES
from .snr import GESVD_MIN_K, QR_MIN_RATIO

STREAM_BLOCKS_IN_FLIGHT = 3  # staged blocks on the device at once: consumed, queued, being copied
FREE_MEMORY_SHARE = 0.9  # of the free device memory, when no --max-gpu-mem is given
# bytes per decoded value while a tensor is being decoded on the device (raw + float32 + temporaries)
LOAD_BYTES_PER_VALUE = {"fp8_block": 9, "mxfp4": 12}


@dataclass(frozen=True)
class Placement:
    """Where one tensor's matrices go: whole on the device, streamed in blocks, or to the CPU."""

    where: str  # whole | stream | cpu
    need: int  # device bytes the chosen route takes (0 for cpu)
    block_bytes: int = GRAM_BLOCK_BYTES  # float64 bytes of one streamed block


def _tall(shape: tuple[int, int]) -> tuple[int, int]:
    m, n = shape
    return max(m, n), min(m, n)


def exact_bytes(shape: tuple[int, int], batch: int = 1, driver: str | None = None) -> int:
    """Device bytes of one batched exact call on `batch` [m, n] float32 matrices.

    Counted: the float32 inputs, the stacked batch (a copy when batch > 1), the column-major copy
    the solver works on, for a tall matrix the QR's R factor (and its own column-major copy), the
    driver's U (gesvdj, torch's default, allocates it even for values only; gesvd does not) and
    a workspace of k x k floats.
    """
    big, k = _tall(shape)
    mn = big * k
    total = 4 * mn * batch * (2 if batch > 1 else 1)  # inputs, stacked copy
    total += 4 * mn * batch  # column-major copy (geqrf's or the SVD's)
    if big >= QR_MIN_RATIO * k:
        total += 2 * 4 * k * k * batch  # R, and R's column-major copy
        rows = k
    else:
        rows = big
    if driver == "gesvdj" or (driver is None and k < GESVD_MIN_K):
        total += 4 * (rows * k + k * k) * batch  # U and V
    total += 4 * k * k + 4 * (rows + k) * 64  # workspace
    return total


def gram_bytes(shape: tuple[int, int], batch: int = 1, block_bytes: int = GRAM_BLOCK_BYTES) -> int:
    """Device bytes of the gram route on `batch` whole [m, n] float32 matrices: the inputs, one
    float64 block, each k x k float64 Gram matrix and their stacked copy, eigvalsh's copy and
    workspace."""
    big, k = _tall(shape)
    block = min(block_bytes, 8 * big * k)
    return 4 * big * k * batch + block + 2 * 8 * k * k * batch + 2 * 8 * k * k


def streamed_gram_bytes(shape: tuple[int, int], block_bytes: int, raw_itemsize: int = 2) -> int:
    """Device bytes of the gram route on one matrix read in blocks: the staged raw blocks in
    flight, one float64 block, the Gram matrix, eigvalsh's copy and workspace."""
    big, k = _tall(shape)
    values = max(k, block_bytes // 8)  # a block holds at least one row or column
    return STREAM_BLOCKS_IN_FLIGHT * raw_itemsize * values + 8 * values + 3 * 8 * k * k


def load_bytes(
    shape: tuple[int, int], count: int = 1, decode: str = "plain", raw_itemsize: int = 2
) -> int:
    """Device bytes a tensor of `count` [m, n] matrices takes while it is decoded there (what a
    prefetched tensor holds beside the one being decomposed)."""
    per_value = LOAD_BYTES_PER_VALUE.get(decode, raw_itemsize + 4)
    return per_value * shape[0] * shape[1] * count


def whole_bytes(
    shape: tuple[int, int], method: str, batch: int = 1, driver: str | None = None
) -> int:
    return exact_bytes(shape, batch, driver) if method == "exact" else gram_bytes(shape, batch)


def place(
    shape: tuple[int, int],
    method: str,
    budget: int,
    *,
    batch: int = 1,
    driver: str | None = None,
    reserve: int = 0,
    can_stream: bool = True,
    raw_itemsize: int = 2,
) -> Placement:
    """Whole on the device if the route fits `budget` beside `reserve` (a prefetched tensor);
    else gram streams (`can_stream`: a plain single matrix) with the biggest block that fits;
    else the CPU."""
    room = budget - reserve
    need = whole_bytes(shape, method, batch, driver)
    if need <= room:
        return Placement("whole", need)
    if method == "gram" and can_stream:
        k = min(shape)
        per_byte = (STREAM_BLOCKS_IN_FLIGHT * raw_itemsize + 8) / 8  # device bytes per f64 byte
        block = min(GRAM_BLOCK_BYTES, int((room - 3 * 8 * k * k) / per_byte))
        block = max(block, 8 * min(shape))
        need = streamed_gram_bytes(shape, block, raw_itemsize)
        if need <= room:
            return Placement("stream", need, block)
    return Placement("cpu", 0)


def device_budget(max_gpu_mem: int | None, free_bytes: int) -> int:
    """The cap a scan keeps to: --max-gpu-mem, never more than a share of what is free."""
    free = int(free_bytes * FREE_MEMORY_SHARE)
    return min(max_gpu_mem, free) if max_gpu_mem else free


def prefetch_reserve(tensors: list[tuple[int, int]], budget: int) -> int:
    """Room to keep free for the tensor read ahead, given each tensor's (whole need, load bytes).

    Only tensors that go to the device whole are read ahead onto it; the reserve is the biggest
    of their loads, and a tensor goes whole only if it fits beside the reserve. The set shrinks
    until every tensor in it fits beside the biggest load among them.
    """
    placed = [t for t in tensors if t[0] <= budget]
    while True:
        reserve = max((load for _, load in placed), default=0)
        kept = [t for t in placed if t[0] + reserve <= budget]
        if len(kept) == len(placed):
            return reserve
        placed = kept
