"""Grid search of ``diffinverse-reconstruct``'s sampler options on one file (not a test).

Runs the command line once per combination of the given option values and prints the mean PSNR /
SSIM against the file's ``reconstruction_rss`` over its slices, with those of the baselines. This is
how the command line's defaults (``SAMPLER_DEFAULTS`` in ``diffinverse/pipelines/fastmri.py``) are chosen, on the
bundled demo file; check them on other data (``benchmarks/cli/real_brain_cli.py``) rather than tuning
on it.

Usage:
    python benchmarks/cli/tune_cli.py demo --sampler reddiff --grid reddiff-lr=0.01,0.02,0.05 reddiff-lam=0.01,0.25 \\
        sigma-start=0.1,0.2 [--mask random] [--acceleration 4] [--seed 0]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import tempfile
from pathlib import Path

from diffinverse.reconstruct import main as reconstruct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", help="a fastMRI file with reconstruction_rss, or 'demo' for the bundled demo")
    ap.add_argument("--sampler", required=True)
    ap.add_argument("--grid", nargs="+", required=True, metavar="OPTION=V1,V2",
                    help="command-line options (without --) and the values to try")
    ap.add_argument("--mask", default="random")
    ap.add_argument("--acceleration", default="4")
    ap.add_argument("--seed", default="0")
    args = ap.parse_args()
    names, values = zip(*((g.split("=", 1)[0], g.split("=", 1)[1].split(",")) for g in args.grid))
    source = ["--demo"] if args.file == "demo" else [args.file]
    with tempfile.TemporaryDirectory() as tmp:
        for i, combo in enumerate(itertools.product(*values)):
            out = Path(tmp) / str(i)
            options = [x for name, v in zip(names, combo) for x in (f"--{name}", v)]
            with contextlib.redirect_stdout(io.StringIO()):
                status = reconstruct([*source, "--output", str(out), "--sampler", args.sampler, "--mask", args.mask,
                                      "--acceleration", args.acceleration, "--seed", args.seed, "--device", "cpu",
                                      *options])
            if status != 0:
                raise SystemExit(f"diffinverse-reconstruct failed ({status}) with {options}")
            summary = json.loads((out / "metrics.json").read_text())
            (record,) = summary["files"].values()
            scores = record["metrics"]["reconstruction_rss"]
            row = {"options": " ".join(options), "nfe": record["nfe"], "seconds": record["seconds"],
                   **{name: f"{s['psnr']:.2f} / {s['ssim']:.4f}" for name, s in scores.items()}}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
