"""``diffinverse-reconstruct`` on the CPU with its default allocator setting and with ``--release-memory``.

On a CPU the command keeps freed memory for reuse (``diffinverse.memory.keep_freed_memory``)
unless ``--release-memory`` is given. This runs the command both ways, alternating over
``--rounds``, each in its own process, on one file (default: a simulated fastMRI-size file, 2
slices of 320x368 with 15 coils, written with ``diffinverse.datasets.demo.make_demo`` into a
temporary folder; ``--demo`` uses the bundled demo file), and prints per run the file's
reconstruction time, the method's NMSE / PSNR / SSIM line and the process's peak resident memory.

Usage::

    python benchmarks/cli/cli_malloc.py --samplers dps reddiff --rounds 2
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _run(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd``; returns its stdout and its peak resident memory in GB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    return out, usage.ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samplers", nargs="+", default=["dps", "reddiff"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--demo", action="store_true", help="the bundled demo file instead of the 320x368 one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            source = ["--demo"]
        else:
            from diffinverse.datasets.demo import make_demo

            path = make_demo(Path(tmp) / "fastmri_size.h5", num_slices=2, num_coils=15, shape=(320, 368),
                             pixel_mm=0.69)
            source = [str(path)]
        exe = [sys.executable, "-m", "diffinverse.reconstruct"]
        for r in range(args.rounds):
            for flag in (["--release-memory"], []):
                for sampler in args.samplers:
                    with tempfile.TemporaryDirectory() as out_dir:
                        out, gb = _run([*exe, *source, "--output", out_dir, "--sampler", sampler, "--device", "cpu",
                                        *flag])
                    lines = out.splitlines()
                    timing = next(line for line in lines if "sample(s))" in line or f", {sampler}," in line)
                    score = next(line for line in lines if line.split()[:1] in (["reconstruction_rss"], [sampler])
                                 and sampler in line.split())
                    print(f"round {r}  {'--release-memory' if flag else 'default':17s} {sampler:8s} "
                          f"{timing.rsplit(',', 1)[-1].strip():>8s}  {' '.join(score.split()[-4:])}  "
                          f"peak RSS {gb:.2f} GB", flush=True)


if __name__ == "__main__":
    main()
