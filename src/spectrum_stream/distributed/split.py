"""Splitting a plan between ranks by estimated cost, keeping shards whole where balance allows.

The cost of a job is layout/cost.job_cost (m*n*k flops a matrix), the measure the progress bar
uses too. Work moves in islands: the shards tied together by jobs that read from several (an FP8 scale in another shard), so a whole island is
read (or downloaded) by one rank. Islands go largest first to the least loaded rank; then, if the
heaviest rank is still more than `tolerance` above the mean and splitting is allowed, a run of
jobs at the end of one of its islands moves to the lightest rank, one island at a time. Only the
split islands' shards are opened by two ranks (each reading only its own tensors' bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..layout.cost import job_cost
from ..layout.specs import TensorJob

TOLERANCE = 0.02


@dataclass
class Share:
    """What one rank does: job indices into the plan, in file order, and their totals."""

    rank: int
    jobs: list[int] = field(default_factory=list)
    cost: float = 0.0
    nbytes: int = 0
    shards: set[str] = field(default_factory=set)


def _islands(jobs: list[TensorJob], todo: list[int]) -> list[list[int]]:
    """Groups of job indices whose shards are tied together, each in file order."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in todo:
        first, *rest = jobs[i].shards
        for other in rest:
            parent[find(other)] = find(first)
    groups: dict[str, list[int]] = {}
    for i in todo:
        groups.setdefault(find(jobs[i].shards[0]), []).append(i)
    return list(groups.values())


def split(
    jobs: list[TensorJob],
    world: int,
    finished: set[str] | frozenset[str] = frozenset(),
    *,
    allow_split: bool = True,
    tolerance: float = TOLERANCE,
) -> list[Share]:
    """Each rank's share of the jobs with work left; the same answer on every rank."""
    cost = [job_cost(j, finished) for j in jobs]
    todo = [
        i
        for i, c in enumerate(cost)
        if c > 0 or any(s.key not in finished for s in jobs[i].matrices)
    ]
    pieces = sorted(_islands(jobs, todo), key=lambda p: (-sum(cost[i] for i in p), p[0]))
    owned: list[list[list[int]]] = [[] for _ in range(world)]
    load = [0.0] * world
    for piece in pieces:
        r = min(range(world), key=lambda k: (load[k], k))
        owned[r].append(piece)
        load[r] += sum(cost[i] for i in piece)
    total = sum(load)
    target = total / world if world else 0.0
    for _ in range(len(todo)):  # each round splits one island; a bound, never reached in practice
        if not allow_split or total == 0:
            break
        h = max(range(world), key=lambda k: (load[k], -k))
        low = min(range(world), key=lambda k: (load[k], k))
        if load[h] <= target * (1 + tolerance):
            break
        best = None  # (resulting max load, piece index, cut)
        for p_index, piece in enumerate(owned[h]):
            moved = 0.0
            for cut in range(len(piece) - 1, 0, -1):  # move piece[cut:] (never the whole piece)
                moved += cost[piece[cut]]
                if moved >= load[h] - load[low]:
                    break
                after = max(load[h] - moved, load[low] + moved)
                if best is None or after < best[0]:
                    best = (after, p_index, cut)
        if best is None or best[0] >= load[h] * (1 - 1e-9):
            break
        _, p_index, cut = best
        piece = owned[h][p_index]
        tail = piece[cut:]
        owned[h][p_index] = piece[:cut]
        owned[low].append(tail)
        moved = sum(cost[i] for i in tail)
        load[h] -= moved
        load[low] += moved
    shares = []
    for r in range(world):
        share = Share(r, sorted(i for piece in owned[r] for i in piece))
        share.cost = sum(cost[i] for i in share.jobs)
        share.nbytes = sum(jobs[i].nbytes for i in share.jobs)
        share.shards = {s for i in share.jobs for s in jobs[i].shards}
        shares.append(share)
    return shares


def imbalance(shares: list[Share]) -> float:
    """How far the heaviest rank is above the mean, as a fraction (0.05: 5% above)."""
    mean = sum(s.cost for s in shares) / len(shares) if shares else 0.0
    return max(s.cost for s in shares) / mean - 1 if mean else 0.0


def shared_shards(shares: list[Share]) -> set[str]:
    """Shards that more than one rank opens."""
    seen: dict[str, int] = {}
    for s in shares:
        for shard in s.shards:
            seen[shard] = seen.get(shard, 0) + 1
    return {shard for shard, n in seen.items() if n > 1}


def share_lines(shares: list[Share], human_bytes) -> list[str]:
    """What rank 0 prints: each rank's share and the imbalance."""
    total = sum(s.cost for s in shares) or 1.0
    shared = shared_shards(shares)
    lines = [
        f"rank {s.rank}: {len(s.jobs)} tensors in {len(s.shards)} shards"
        f"{f' ({len(s.shards & shared)} shared)' if s.shards & shared else ''}, "
        f"{human_bytes(s.nbytes)}, {s.cost:.3g} flops ({100 * s.cost / total:.1f}%)"
        for s in shares
    ]
    lines.append(
        f"split: heaviest rank {100 * imbalance(shares):.1f}% above the mean; "
        f"{len(shared)} shard{'s' if len(shared) != 1 else ''} opened by two ranks"
    )
    return lines
