"""Host timeline of a ``cuda_graph=True`` call (needs a GPU): where the time before the first
replay goes, at 64x64, batch 4, for RED-Diff and DPS with 1 and 20 steps.

Wraps the parts of a call (input checks, ``A_dagger`` / ``A_adjoint``, the initial state, the
graph's key, the noise refills, the replays) to record ``time.perf_counter`` on entry and exit,
and prints the median over 30 calls of each timestamp, in microseconds from the call's start.
Until the first replay is launched the GPU waits; after it, the host runs ahead of the GPU.

Usage::

    python benchmarks/gpu/graph_call_timeline.py
"""
from __future__ import annotations

import statistics
import time

import torch
from profile_graph_call import problem

from diffinverse.samplers import DPS, REDDiff, base, cuda_graph

marks: list[tuple[str, float]] = []


def _wrap(owner, attr: str) -> None:
    inner = getattr(owner, attr)

    def timed(*args, **kwargs):
        marks.append((attr + ">", time.perf_counter()))
        out = inner(*args, **kwargs)
        marks.append((attr + "<", time.perf_counter()))
        return out
    setattr(owner, attr, timed)


def main() -> None:
    dev = torch.device("cuda")
    prior, physics, y = problem(dev)
    for owner, attr in ((base, "all_finite"), (base, "state_like"), (cuda_graph, "capture_key"),
                        (cuda_graph, "_refill"), (physics, "A_dagger"), (physics, "A_adjoint")):
        _wrap(owner, attr)
    for cls in (REDDiff, DPS):
        for n in (1, 20):
            sampler = cls(prior, num_steps=n, progress=False, cuda_graph=True)
            for attr in ("init_x", "init_state", "finalize"):
                _wrap(sampler, attr)
            for _ in range(3):
                sampler(y, physics, generator=torch.Generator(dev).manual_seed(0))
            (cap,) = sampler._graphs._captures.values()
            _wrap(cap, "replay")
            torch.cuda.synchronize()
            rows = []
            for _ in range(30):
                generator = torch.Generator(dev).manual_seed(0)
                marks.clear()
                marks.append(("start", time.perf_counter()))
                sampler(y, physics, generator=generator)
                torch.cuda.synchronize()
                marks.append(("end", time.perf_counter()))
                rows.append([(name, (t - marks[0][1]) * 1e6) for name, t in marks])
            median = [(rows[0][i][0], statistics.median(r[i][1] for r in rows)) for i in range(len(rows[0]))]
            names = [name for name, _ in median]
            first = names.index("replay<")
            last = len(names) - 1 - names[::-1].index("replay<")
            print(f"== {cls.__name__}, {n} steps: median host timestamps (us from the call's start)")
            before = 0.0
            for i, (name, t) in enumerate(median):
                if first < i < last:
                    continue   # the later refills and replays
                print(f"  {name:<18} {t:9.1f}  (+{t - before:.1f})")
                before = t


if __name__ == "__main__":
    main()
