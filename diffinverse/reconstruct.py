"""``diffinverse-reconstruct``: reconstruct fastMRI files with a diffusion prior or a baseline.

Usage::

    diffinverse-reconstruct --demo                               # bundled 8-coil brain file
    diffinverse-reconstruct FILE_OR_DIR --output out/            # defaults: DPS, mri-brain prior, 4x
    diffinverse-reconstruct data/ --sampler sense --mask equispaced --acceleration 8 --output out/
    torchrun --nproc_per_node=4 -m diffinverse.reconstruct data/ --output out/   # one file per rank

What it does, per file (read lazily, a batch of slices at a time):

1. **Readout crop.** fastMRI k-space is oversampled along the readout (rows, e.g. ``H = 640``
   for a 320-row reconstruction). The rows are inverse-transformed, centre-cropped to the
   reconstruction height and transformed back, so every method works on a ``(h, W)`` grid whose
   image equals the centre rows of the full image exactly. The reconstruction size is the
   target's shape when the file has one, else the header's ``reconSpace`` matrix (default
   320 x 320).
2. **Mask.** Files with a ``mask`` (fastMRI test/challenge data) are reconstructed from it.
   Otherwise a retrospective mask (``--mask``, ``--acceleration``, ``--center-fraction``) is
   drawn once per volume from a generator seeded by ``--seed`` and the file name, so sharding
   and ``--resume`` do not change it.
3. **Coil maps** (multi-coil): ESPIRiT from the fully sampled centre, two map sets (soft-SENSE,
   which copes with a field of view that wraps). The SENSE baseline uses both sets. A diffusion
   prior models one complex image, so TV and the diffusion samplers reconstruct the first
   (dominant) set's image from the measurements less the k-space of SENSE's second-set image
   (non-zero only where the field of view wraps), which is added back in the magnitude. On a
   real wrapping 8-coil brain at 4x this took DPS from 25.5 to 29.1 dB (random lines, seed 0;
   ``benchmarks/real_brain_cli.py``); on data that does not wrap the second set is zero.
4. **Baselines**: zero-filled (root-sum-of-squares of the coil images) and SENSE (multi-coil):
   Tikhonov-regularised least squares ``(A^H A + 0.01 I) x = A^H y`` by at most 30 conjugate-
   gradient iterations (plain least squares amplifies noise as CG converges). Single-coil
   ``sense`` is the zero-filled image. ``--sampler tv``: TV-regularised least squares (PDHG,
   weight 0.002 on the scaled data of step 5, run to convergence) on the first map set's image,
   slice by slice, so that each slice stops at its own tolerance and its image does not depend on
   ``--batch-size``.
5. **Intensity scaling.** The shipped ``mri-brain`` prior was trained on complex images scaled so
   that the magnitude's 99.5th percentile is 1. Each slice's measurements are divided by the
   99.5th percentile of the magnitude of SENSE's first-set image (single-coil: zero-filled)
   before sampling, and the result is multiplied back, so outputs are in the file's units (the
   units of ``reconstruction_rss``).
6. **Sampling**: the diffusion sampler warm-starts from that image (``--warm-start tv``: from the
   TV reconstruction) plus noise at ``--sigma-start`` (Come-Closer-Diffuse-Faster) and runs
   ``--steps`` steps (``--bf16``: its network in bfloat16, the rest in float32); with
   ``--num-samples N > 1`` the reconstruction is the magnitude of the posterior mean and ``std``
   the per-pixel standard deviation of the samples' magnitudes.
7. **Outputs** in ``--output``, each written atomically (temporary file in the same directory,
   then rename): ``<name>.h5`` in fastMRI's submission layout (``reconstruction`` float32
   magnitude ``(S, h, w)``, centre-cropped, plus ``std``), optionally ``<name>.nii.gz`` (and
   ``<name>_std.nii.gz``, see :func:`save_nifti` for the affine) and ``<name>.png`` previews, then
   ``<name>.metrics.json`` last, which marks the file complete for ``--resume``; finally
   ``metrics.json`` over all files. Metrics (NMSE, PSNR, SSIM; fastMRI's conventions, see
   :mod:`diffinverse.metrics`) are computed against ``reconstruction_rss`` /
   ``reconstruction_esc`` when present, for the chosen method and the baselines.

Existing outputs are never replaced without ``--overwrite``; ``--resume`` skips files whose
outputs are complete and redoes the others (replacing the partial outputs of an interrupted run).
A file that fails is reported and skipped; the exit status is then 1. Configuration errors
(unknown prior, wrong channel count, unusable options, existing outputs) exit with status 2
before any reconstruction starts.

Under ``torchrun`` (``WORLD_SIZE``/``RANK`` set), rank ``r`` of ``K`` takes files ``r, r+K, ...``
(``nccl`` with one GPU per rank, ``gloo`` on CPU); rank 0 gathers the results, writes
``metrics.json`` and prints the tables and the summary.

On a CPU under glibc (Linux) the command first has malloc serve large blocks from its heap and
keep freed memory (:func:`keep_freed_memory`; ``--release-memory`` leaves glibc's default): at
fastMRI sizes a UNet's activations are blocks that glibc would otherwise map afresh, and the
kernel zero-fill, at every network call. The process then keeps its peak memory, which is
somewhat higher. Measured figures are in ``benchmarks/README.md`` ("Large batches on the CPU").
``MALLOC_MMAP_MAX_`` or ``MALLOC_TRIM_THRESHOLD_`` set in the environment are left as they are
(note that setting either one turns off glibc's adaptive threshold).

On a GPU the samplers run eagerly; their ``cuda_graph=True`` option is deliberately not offered
here. It pays on small images (64x64, batch 4: 3.6-5.5x faster on an H200 across runs), but at
fastMRI sizes (256x256, batch 4) it made a call only about 1.05x faster, and this command builds a
new operator for every batch of slices (new coil maps), so every batch would be captured anew, at
the cost of about four eager steps, against the 14 network evaluations of a batch at the default
warm start.

References:
    Zbontar et al., "fastMRI: An Open Dataset and Benchmarks for Accelerated MRI", 2018.
    Uecker et al., "ESPIRiT", MRM 71 (2014). Chung, Sim & Ye, "Come-Closer-Diffuse-Faster", CVPR 2022.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import sys
import tempfile
import time
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffinverse import metrics as M
from diffinverse._io import atomic_output
from diffinverse.datasets.fastmri import FastMRIError, FastMRIFile, center_crop, write_submission
from diffinverse.datasets.volumes import write_nifti
from diffinverse.operators.coils import estimate_coil_maps
from diffinverse.operators.masks import equispaced_lines, random_lines, variable_density_2d
from diffinverse.operators.mri import MultiCoilMRI, SingleCoilMRI, ifft2c, to_channels
from diffinverse.samplers.dps import DPS
from diffinverse.samplers.baselines import tv_reconstruction
from diffinverse.samplers.reddiff import REDDiff

__all__ = ["main", "build_parser", "reconstruct_file", "save_nifti", "save_preview", "format_table", "keep_freed_memory",
           "DEMO_FILE"]

DEMO_FILE = "demo_brain.h5"
BASELINES = ("zero-filled", "sense")
# TV-regularised least squares (PDHG, run to its default tolerance) on the scaled data (99.5th
# percentile of |x| = 1). lam 0.0005 / 0.001 / 0.002 / 0.005 / 0.01 / 0.02 gave 24.86 / 25.74 /
# 26.19 / 25.75 / 25.00 / 24.19 dB on the demo file at 4x (random lines, seed 0), with the 4 slices
# run as one batch until the slowest converged; slice by slice (now) 0.002 gives 26.20 dB.
TV_LAMBDA = 0.002
# Defaults per diffusion sampler: steps of the full grid, the warm-start level (in the units of
# the scaled data, where the magnitude's 99.5th percentile is 1) and the step sizes, chosen for PSNR
# on the demo file at 4x (random lines, seed 0) by
#   python benchmarks/tune_cli.py demo --sampler dps --grid zeta=0.5,1,2,4 sigma-start=0.2,0.3
#   python benchmarks/tune_cli.py demo --sampler dps --grid zeta=8,16,32 sigma-start=0.2
#   python benchmarks/tune_cli.py demo --sampler reddiff --grid lam=0.01,0.05,0.25 \
#       lr=0.005,0.01,0.02,0.05 sigma-start=0.1,0.2,0.3
#   python benchmarks/tune_cli.py demo --sampler reddiff --grid lam=0.002,0.005,0.01 lr=0.05,0.1 \
#       sigma-start=0.2
# DPS at sigma-start 0.2: zeta 1 / 2 / 4 / 8 / 16 gave 25.87 / 26.85 / 27.54 / 27.28 / 24.74 dB
# (0.3 with zeta 4: 27.72 dB, two more network evaluations). RED-Diff with the official lam 0.25
# and lr 0.25 gave 9.7 dB (the data term here averages over the unmeasured zeros too, see
# samplers/reddiff.py); lam 0.01 with lr 0.05 gave 27.42 dB (at sigma-start 0.3: 27.45 dB).
DIFFUSION = {
    "dps": {"cls": DPS, "steps": 50, "warm_start": "sense", "sigma_start": 0.2, "kwargs": {"zeta": 4.0}},
    "reddiff": {"cls": REDDiff, "steps": 50, "warm_start": "sense", "sigma_start": 0.2,
                "kwargs": {"lam": 0.01, "lr": 0.05}},
}
# command-line options that override a sampler's kwargs, and the sampler each belongs to
SAMPLER_OPTIONS = {"zeta": "dps", "lr": "reddiff", "lam": "reddiff"}
SCALE_QUANTILE = 0.995
MAX_CALIB = 24
# SENSE: Tikhonov weight (relative to A^H A, whose eigenvalues are <= 1 for ESPIRiT maps) and CG
# iterations. Unregularised CG semi-converges: on the demo at 4x it peaked at 24.0 dB after
# 10 iterations and fell to 19.5 dB after 40; with lambda = 0.01 it settles at 24.2 dB.
SENSE_LAMBDA = 0.01
SENSE_ITERS = 30


class ConfigError(ValueError):
    """A problem with the options or the environment, found before any file is processed."""


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``diffinverse-reconstruct``."""
    p = argparse.ArgumentParser(
        prog="diffinverse-reconstruct",
        description="Reconstruct fastMRI HDF5 files (single- or multi-coil) with a diffusion prior or a baseline.")
    p.add_argument("inputs", nargs="*", type=Path, help="fastMRI .h5 files or directories of them")
    p.add_argument("--demo", action="store_true", help="reconstruct the bundled 8-coil brain demo file")
    p.add_argument("--sampler", choices=[*DIFFUSION, *BASELINES, "tv"], default="dps",
                   help="reconstruction method (default: dps)")
    p.add_argument("--prior", default="mri-brain", help="shipped prior name or .safetensors path (default: mri-brain)")
    p.add_argument("--mask", choices=["random", "equispaced", "poisson"], default="random",
                   help="retrospective mask for fully sampled files (default: random lines)")
    p.add_argument("--acceleration", type=float, default=4.0, help="undersampling factor (default: 4)")
    p.add_argument("--center-fraction", type=float, default=0.08,
                   help="fraction of fully sampled central lines (default: 0.08)")
    p.add_argument("--slices", default=None, help="slices to reconstruct, e.g. 10:20 or 5 (default: all)")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps of the full grid (default: per sampler)")
    p.add_argument("--sigma-start", default=None,
                   help="warm-start noise level in scaled units, or 'none' for a cold start from pure noise")
    p.add_argument("--warm-start", choices=["sense", "tv"], default=None,
                   help="baseline the diffusion samplers start from (default: per sampler)")
    p.add_argument("--zeta", type=float, default=None,
                   help=f"DPS guidance step size (default: {DIFFUSION['dps']['kwargs']['zeta']:g})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"RED-Diff Adam step in scaled units (default: {DIFFUSION['reddiff']['kwargs']['lr']:g})")
    p.add_argument("--lam", type=float, default=None,
                   help=f"RED-Diff prior weight lambda (default: {DIFFUSION['reddiff']['kwargs']['lam']:g})")
    p.add_argument("--bf16", action="store_true",
                   help="run the prior's network in bfloat16 (autocast; diffusion samplers only): faster where "
                        "the hardware has bf16 units (CPUs with AVX512-BF16 or AMX, recent GPUs); PSNR within "
                        "0.012 dB of float32 in the benchmarks")
    p.add_argument("--num-samples", type=int, default=1, help="posterior samples per slice; >1 also writes std")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks and the samplers (default: 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--release-memory", action="store_true",
                   help="on a CPU, leave glibc's malloc at its default, which returns freed memory to the "
                        "system: lower memory, but slower network calls at fastMRI sizes (by default the "
                        "command keeps freed memory for reuse)")
    p.add_argument("--batch-size", type=int, default=4, help="slices per batch (default: 4)")
    p.add_argument("--output", type=Path, default=None,
                   help="output directory (required, except with --demo: a new temporary directory)")
    p.add_argument("--format", nargs="+", choices=["h5", "nifti", "png"], default=["h5"],
                   help="output formats (several allowed; default: h5)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--resume", action="store_true",
                   help="skip files whose outputs are complete; redo the others, replacing their partial outputs")
    return p


def _check_options(args: argparse.Namespace) -> None:
    if args.acceleration < 1:
        raise ConfigError(f"--acceleration must be >= 1, got {args.acceleration}")
    if args.mask == "equispaced" and args.acceleration != int(args.acceleration):
        raise ConfigError(f"--mask equispaced needs an integer --acceleration, got {args.acceleration:g}")
    if not 0 < args.center_fraction <= 1:
        raise ConfigError(f"--center-fraction must be in (0, 1], got {args.center_fraction}")
    for name in ("steps", "num_samples", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for option, sampler in SAMPLER_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if args.sampler != sampler:
            raise ConfigError(f"--{option} applies to --sampler {sampler}, not {args.sampler}")
        # lambda = 0 is allowed (no prior, data consistency alone); step sizes must be positive
        in_range = value >= 0 if option == "lam" else value > 0
        if not (math.isfinite(value) and in_range):
            raise ConfigError(f"--{option} must be {'>= 0' if option == 'lam' else 'positive'}, got {value}")
    for option in ("warm_start", "bf16"):
        if getattr(args, option) and args.sampler not in DIFFUSION:
            raise ConfigError(f"--{option.replace('_', '-')} applies to the diffusion samplers "
                              f"({', '.join(DIFFUSION)}), not {args.sampler}")
    if args.slices is not None:
        _parse_slices(args.slices, 10**9)
    if args.sigma_start is not None and args.sigma_start.lower() != "none":
        try:
            value = float(args.sigma_start)
        except ValueError:
            raise ConfigError(f"--sigma-start must be a number or 'none', got {args.sigma_start!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--sigma-start must be positive, got {value}")


def _parse_slices(spec: str | None, n: int) -> slice:
    """``'10:20'``, ``'5'``, ``':3'`` -> a slice of ``range(n)`` (Python semantics, no step)."""
    if spec is None:
        return slice(0, n)
    try:
        if ":" in spec:
            a, b = spec.split(":")
            start = int(a) if a.strip() else None
            stop = int(b) if b.strip() else None
        else:
            start = int(spec)
            stop = start + 1 if start != -1 else None
    except ValueError:
        raise ConfigError(f"--slices must look like 10:20 or 5, got {spec!r}") from None
    start, stop, _ = slice(start, stop).indices(n)
    return slice(start, max(start, stop))


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def _input_files(args: argparse.Namespace) -> list[Path]:
    if args.demo:
        if args.inputs:
            raise ConfigError("--demo takes no input files")
        return [Path(str(resources.files("diffinverse.datasets") / "data" / DEMO_FILE))]
    if not args.inputs:
        raise ConfigError("give a fastMRI .h5 file or directory (or --demo)")
    files: list[Path] = []
    for p in args.inputs:
        if p.is_dir():
            found = sorted(q for q in p.glob("*.h5") if q.is_file())
            if not found:
                raise ConfigError(f"{p}: directory holds no .h5 files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"{p}: no such file or directory")
    names = [f.stem for f in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"several inputs share the output name(s) {dup}; reconstruct them into separate --output directories")
    return files


def _output_paths(out_dir: Path, stem: str, formats: list[str], with_std: bool) -> dict[str, Path]:
    paths = {}
    if "png" in formats:
        paths["png"] = out_dir / f"{stem}.png"
    if "nifti" in formats:
        paths["nifti"] = out_dir / f"{stem}.nii.gz"
        if with_std:
            paths["nifti_std"] = out_dir / f"{stem}_std.nii.gz"
    if "h5" in formats:
        paths["h5"] = out_dir / f"{stem}.h5"
    paths["metrics"] = out_dir / f"{stem}.metrics.json"  # written last: marks the file complete
    return paths


def _preflight(files: list[Path], args: argparse.Namespace) -> list[str]:
    """Problems that must stop the run before anything is written (existing outputs, collisions)."""
    problems = []
    with_std = args.num_samples > 1
    for f in files:
        paths = _output_paths(args.output, f.stem, args.format, with_std)
        for p in paths.values():
            if p.exists() and p.resolve() == f.resolve():
                problems.append(f"{f}: the output {p} would replace the input file; choose another --output")
        if args.overwrite or args.resume:
            continue
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing:
            problems.append(f"{f}: outputs already exist ({', '.join(existing)}); pass --overwrite to replace "
                            f"them or --resume to skip complete files")
    return problems


def _is_complete(paths: dict[str, Path]) -> bool:
    return all(p.exists() for p in paths.values())


# --------------------------------------------------------------------------------------------
# one file
# --------------------------------------------------------------------------------------------
def _file_seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _crop_readout(k: torch.Tensor, h: int) -> torch.Tensor:
    """Remove readout oversampling: k-space ``(..., H, W)`` -> ``(..., h, W)``.

    The rows are inverse-transformed (centred, orthonormal), the central ``h`` image rows kept,
    and transformed back, so that ``ifft2c`` of the result equals the central rows of
    ``ifft2c(k)`` exactly.
    """
    H = k.shape[-2]
    if h == H:
        return k
    img = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(k, dim=-2), dim=-2, norm="ortho"), dim=-2)
    top = (H - h) // 2
    img = img[..., top:top + h, :]
    return torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(img, dim=-2), dim=-2, norm="ortho"), dim=-2)


def _make_mask(f: FastMRIFile, shape: tuple[int, int], args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    """The ``(h, W)`` float32 mask and a description of it."""
    if f.mask is not None:
        m = torch.from_numpy(f.mask).expand(shape).contiguous()
        return m, f"file mask ({f.mask.shape[0] / f.mask.sum():.1f}x)"
    g = torch.Generator().manual_seed(_file_seed(args.seed, f.path.name))
    if args.mask == "poisson":
        m = variable_density_2d(shape, args.acceleration, kind="poisson", generator=g)
    else:
        fn = random_lines if args.mask == "random" else equispaced_lines
        m = fn(shape, args.acceleration, args.center_fraction, generator=g)
    return m.to(torch.float32), f"{args.mask} {args.acceleration:g}x"


def _calib_width(mask: torch.Tensor) -> int:
    """Side of the fully sampled central square (capped at :data:`MAX_CALIB`), for ESPIRiT."""
    h, w = mask.shape
    row, col = mask[h // 2] > 0, mask[:, w // 2] > 0

    def run(v: torch.Tensor) -> int:
        c, n = v.shape[0] // 2, 0
        while c - n - 1 >= 0 and c + n + 1 < v.shape[0] and v[c - n - 1] and v[c + n + 1]:
            n += 1
        return 2 * n + 1 if v[c] else 0

    return min(MAX_CALIB, run(row), run(col))


def _magnitude(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, [M,] H, W)`` -> ``(B, H, W)``: root-sum-of-squares over channels and map sets."""
    return x.pow(2).flatten(1, -3).sum(1).sqrt()


class _Method:
    """The chosen reconstruction method, built once per run."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.name = args.sampler
        self.num_samples = args.num_samples
        self.device = device
        self.sampler = None
        self.sigma_start = None
        self.warm_start = None
        if self.name in DIFFUSION:
            spec = DIFFUSION[self.name]
            self.prior = _load_prior(args.prior, device)
            self.steps = args.steps or spec["steps"]
            kwargs = {**spec["kwargs"], **{k: getattr(args, k) for k, sampler in SAMPLER_OPTIONS.items()
                                           if sampler == self.name and getattr(args, k) is not None}}
            self.sampler = spec["cls"](self.prior, num_steps=self.steps, progress=False, autocast=args.bf16, **kwargs)
            self.warm_start = args.warm_start or spec["warm_start"]
            start = spec["sigma_start"] if args.sigma_start is None else args.sigma_start
            self.sigma_start = None if str(start).lower() == "none" else float(start)
            if self.sigma_start is not None and self.sigma_start > float(self.sampler.sigmas[0]):
                raise ConfigError(f"--sigma-start {self.sigma_start} exceeds the prior's largest noise level "
                                  f"{float(self.sampler.sigmas[0]):g}")
        elif args.num_samples > 1:
            raise ConfigError(f"--num-samples > 1 needs a diffusion sampler ({', '.join(DIFFUSION)}), not {self.name}")

    def describe(self) -> str:
        if self.sampler is None:
            return self.name
        start = ("cold start" if self.sigma_start is None
                 else f"warm start from {self.warm_start} at sigma {self.sigma_start:g}")
        network = ", network in bf16" if self.sampler.autocast else ""
        return f"{self.name} ({self.steps} steps, {start}, {self.num_samples} sample(s){network})"


def _load_prior(name: str, device: torch.device):
    from diffinverse.priors.checkpoints import load

    try:
        prior = load(name, device=device)
    except (ValueError, FileNotFoundError, KeyError, OSError, TypeError) as err:
        raise ConfigError(f"cannot load prior {name!r}: {err}") from None
    if getattr(prior, "channels", None) != 2:
        raise ConfigError(f"prior {name!r} has {getattr(prior, 'channels', '?')} channel(s); MRI reconstruction "
                          f"needs a 2-channel (complex: real, imaginary) prior such as 'mri-brain'")
    return prior.eval()


def _reconstruct_batch(k: torch.Tensor, mask: torch.Tensor, calib: int, method: _Method,
                       generator: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Reconstruct one batch of slices.

    Args:
        k: complex k-space ``(B, C, h, W)`` (readout already cropped; ``C = 1`` for single-coil
            files, which use the single-coil operator).
        mask: ``(h, W)`` 0/1.

    Returns:
        ``{method: (magnitude (B, h, W), std (B, h, W) or None)}`` for the chosen method and
        the baselines.
    """
    y_c = k * mask
    zero_filled = ifft2c(y_c).abs().pow(2).sum(1).sqrt()
    out = {"zero-filled": (zero_filled, None)}
    if k.shape[1] > 1:
        if calib < 3:
            raise ValueError(f"the mask's fully sampled centre ({calib} lines) is too small to estimate coil maps; "
                             "use a larger --center-fraction")
        maps = estimate_coil_maps(y_c, num_maps=2, calib_width=calib, kernel_width=min(6, max(2, calib // 2)))
        maps = maps.to(device=k.device, dtype=torch.complex64)
        y = to_channels(y_c)                                  # (B, 2, C, h, W)
        cg = {"cg_iters": SENSE_ITERS, "cg_lambda": SENSE_LAMBDA}
        x_sense = MultiCoilMRI(mask, maps, **cg).A_dagger(y)  # (B, 2, 2, h, W): two map sets
        out["sense"] = (_magnitude(x_sense), None)
        # the prior knows one image per slice: it reconstructs the first map set's image, and the
        # second's (non-zero only where the field of view wraps) is kept from SENSE and its
        # k-space subtracted from y
        second = x_sense[:, :, 1]
        physics = MultiCoilMRI(mask, maps[:, :1], **cg)
        y = y - MultiCoilMRI(mask, maps[:, 1:]).A(second)
        x0 = x_sense[:, :, 0]
    else:
        y = to_channels(y_c[:, 0])                            # (B, 2, h, W)
        out["sense"] = out["zero-filled"]
        physics = SingleCoilMRI(mask)
        second = None
        x0 = physics.A_dagger(y)
    if method.name in BASELINES:
        return out

    # scale into the prior's range: 99.5th percentile of the baseline's magnitude -> 1
    scale = torch.quantile(_magnitude(x0).flatten(1), SCALE_QUANTILE, dim=1).clamp_min(1e-12)
    s = scale.reshape(-1, 1, 1, 1)
    y_s = y / scale.reshape(-1, *([1] * (y.ndim - 1)))

    def magnitude(x_scaled: torch.Tensor) -> torch.Tensor:
        """Magnitude in the data's units, with the second map set's image where there is one."""
        x = x_scaled.detach() * s
        return _magnitude(x if second is None else torch.stack([x, second], dim=2))

    x_init = x0 / s
    if method.name == "tv" or method.warm_start == "tv":
        # slice by slice: in a batch every slice would iterate until the slowest converged, so a
        # slice's result would depend on --batch-size (and 8 slices of 256x256 took 1.75x as long)
        def slice_physics(i: int):
            return physics if k.shape[1] == 1 else MultiCoilMRI(mask, maps[i:i + 1, :1], **cg)

        x_init = torch.cat([tv_reconstruction(y_s[i:i + 1], slice_physics(i), lam=TV_LAMBDA, x_init=x_init[i:i + 1])
                            for i in range(len(y_s))])
    if method.name == "tv":
        out["tv"] = (magnitude(x_init), None)
    elif method.num_samples > 1:
        post = method.sampler.posterior(
            y_s, physics, num_samples=method.num_samples, generator=generator, x_init=x_init,
            sigma_start=method.sigma_start,
            physics_for_batch=lambda p, n: p if isinstance(p, SingleCoilMRI)
            else MultiCoilMRI(mask, p.coil_maps.repeat(n, 1, 1, 1, 1), cg_iters=p.cg_iters, cg_lambda=p.cg_lambda))
        mags = torch.stack([magnitude(x) for x in post.samples])   # (N, B, h, W)
        out[method.name] = (magnitude(post.mean), mags.std(0))
    else:
        x = method.sampler(y_s, physics, generator=generator, x_init=x_init, sigma_start=method.sigma_start)
        out[method.name] = (magnitude(x), None)
    return out


def reconstruct_file(path: Path, args: argparse.Namespace, method: _Method) -> dict:
    """Reconstruct one fastMRI file and write its outputs; returns its record (see ``metrics.json``)."""
    t0 = time.perf_counter()
    with FastMRIFile(path) as f:
        sl = _parse_slices(args.slices, f.num_slices)
        if sl.stop <= sl.start:
            raise FastMRIError(f"{path}: --slices {args.slices} selects no slice of its {f.num_slices}")
        crop = f.recon_size
        if f.targets:  # the reference defines the evaluated matrix
            th, tw = f.target_shapes[f.targets[0]]
            if th > f.shape[0] or tw > f.shape[1]:
                raise FastMRIError(f"{path}: '{f.targets[0]}' slices ({th}, {tw}) are larger than the k-space {f.shape}")
            crop = (th, tw)
        grid = (crop[0], f.shape[1])
        mask, mask_text = _make_mask(f, grid, args)
        mask = mask.to(method.device)
        calib = _calib_width(mask)
        g = torch.Generator(device=method.device).manual_seed(_file_seed(args.seed, path.name) + 1)
        recs: dict[str, list] = {}
        stds: list = []
        nfe = 0
        for start in range(sl.start, sl.stop, args.batch_size):
            idx = slice(start, min(start + args.batch_size, sl.stop))
            k = torch.from_numpy(f.read_kspace(idx)).to(method.device)
            if not f.multicoil:
                k = k[:, None]
            k = _crop_readout(k, crop[0])
            for name, (mag, std) in _reconstruct_batch(k, mask, calib, method, g).items():
                recs.setdefault(name, []).append(center_crop(mag, crop).float().cpu())
                if name == method.name and std is not None:
                    stds.append(center_crop(std, crop).float().cpu())
            nfe += method.sampler.last_nfe if method.sampler is not None else 0
        volumes = {name: torch.cat(v).numpy() for name, v in recs.items()}
        std = torch.cat(stds).numpy() if stds else None
        targets = {key: f.read_target(key, sl) for key in f.targets}
        info = {"coils": f.num_coils if f.multicoil else 1, "voxel_size_mm": f.voxel_size_mm,
                "acquisition": f.attrs.get("acquisition")}

    rows = [method.name] + [b for b in BASELINES if b != method.name and (b != "sense" or info["coils"] > 1)]
    scores = {key: {name: {"nmse": M.nmse(t, volumes[name]), "psnr": M.psnr(t, volumes[name]),
                           "ssim": M.ssim(t, volumes[name])} for name in rows}
              for key, t in targets.items()}
    record = {"input": str(path), "name": path.stem, "slices": [sl.start, sl.stop], "coils": info["coils"],
              "shape": list(volumes[method.name].shape), "mask": mask_text, "method": method.describe(),
              "nfe": nfe, "metrics": scores}
    _write_outputs(path.stem, volumes[method.name], std, targets, record, info, args)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    with atomic_output(args.output / f"{path.stem}.metrics.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return record


def _write_outputs(stem: str, rec: np.ndarray, std: np.ndarray | None, targets: dict, record: dict,
                   info: dict, args: argparse.Namespace) -> None:
    paths = _output_paths(args.output, stem, args.format, std is not None)
    # --resume may redo a file whose earlier run stopped part-way: its partial outputs are replaced
    ow = args.overwrite or args.resume
    if "png" in paths:
        with atomic_output(paths["png"], overwrite=ow) as tmp:
            save_preview(tmp, rec, targets, std, title=f"{stem}: {record['method']}, {record['mask']}")
    if "nifti" in paths:
        save_nifti(paths["nifti"], rec, info["voxel_size_mm"], overwrite=ow)
        if std is not None:
            save_nifti(paths["nifti_std"], std, info["voxel_size_mm"], overwrite=ow)
    if "h5" in paths:
        attrs = {"method": record["method"], "mask": record["mask"], "slices": record["slices"],
                 "source": record["input"], "acquisition": info["acquisition"] or ""}
        write_submission(paths["h5"], rec, std=std, attrs=attrs, overwrite=ow)


def save_nifti(path: Path, volume: np.ndarray, voxel_size_mm: tuple[float, float, float] | None, *,
               overwrite: bool = True) -> None:
    """Write a ``(S, h, w)`` magnitude volume as NIfTI.

    The array is stored as ``(h, w, S)``: voxel axis ``i`` = image rows (readout), ``j`` = image
    columns (phase encode), ``k`` = slices. The affine is ``diag(dx, dy, dz, 1)`` with the voxel
    sizes from the header's ``reconSpace`` field of view over its matrix size (``dz`` = slice
    thickness), or 1 mm where the header does not state them. fastMRI headers carry no patient
    position or orientation, so the axes are the acquisition's, not scanner RAS. Written atomically
    (:func:`~diffinverse.datasets.volumes.write_nifti`); ``overwrite=False`` refuses an existing file.
    """
    vox = voxel_size_mm or (1.0, 1.0, 1.0)
    affine = np.diag([float(vox[0]), float(vox[1]), float(vox[2]), 1.0])
    write_nifti(path, np.transpose(volume, (1, 2, 0)), affine, overwrite=overwrite)


def save_preview(path: Path, rec: np.ndarray, targets: dict, std: np.ndarray | None, *, title: str) -> None:
    """PNG of the middle slice: reconstruction, reference and absolute error (when the file has a
    target), and the posterior standard deviation (when there are several samples)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = rec.shape[0] // 2
    panels = [("reconstruction", rec[s], "gray", None)]
    if targets:
        key, ref = next(iter(targets.items()))
        vmax = float(ref.max())
        panels[0] = ("reconstruction", rec[s], "gray", vmax)
        panels += [(f"reference ({key})", ref[s], "gray", vmax),
                   ("|error| (x5)", 5 * np.abs(rec[s] - ref[s]), "magma", vmax)]
    if std is not None:
        panels.append(("posterior std", std[s], "viridis", None))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, img, cmap, vmax) in zip(axes[0], panels):
        ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title} (slice {s} of the selection)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------
def format_table(record: dict) -> str:
    """The metrics table of one file's record."""
    head = (f"{record['name']}: {record['coils']}-coil, slices {record['slices'][0]}:{record['slices'][1]}, "
            f"{record['mask']}, {record['method']}, {record.get('seconds', 0):.1f} s")
    if not record["metrics"]:
        return head + "\n  (no reconstruction_rss/esc in the file: no metrics)"
    lines = [head, f"  {'reference':<20}{'method':<13}{'NMSE':>9}{'PSNR':>8}{'SSIM':>8}"]
    for key, rows in record["metrics"].items():
        for i, (name, m) in enumerate(rows.items()):
            lines.append(f"  {key if i == 0 else '':<20}{name:<13}{m['nmse']:>9.4f}{m['psnr']:>8.2f}{m['ssim']:>8.4f}")
    return "\n".join(lines)


def _mean_metrics(records: list[dict]) -> dict:
    acc: dict = {}
    for r in records:
        for key, rows in r["metrics"].items():
            for name, m in rows.items():
                for k, v in m.items():
                    acc.setdefault(key, {}).setdefault(name, {}).setdefault(k, []).append(v)
    return {key: {name: {k: float(np.mean(v)) for k, v in m.items()} | {"files": len(m["nmse"])}
                  for name, m in rows.items()} for key, rows in acc.items()}


def _write_summary(out_dir: Path, done: list[dict], failed: dict[str, str], overwrite: bool) -> None:
    summary = {"files": {r["name"]: r for r in done}, "failed": failed, "mean": _mean_metrics(done)}
    with atomic_output(out_dir / "metrics.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc serve every block from its heap and keep what is freed (CPU runs).

    glibc maps each block above a threshold (at most 32 MiB) afresh and unmaps it when it is
    freed, so the kernel zero-fills its pages again at every use. A UNet's widest activations at
    fastMRI sizes are such blocks (96 channels x 320 x 368 x 4 bytes = 45 MB per image), and at
    every network call they page-faulted tens of thousands of times (``benchmarks/README.md``,
    "Large batches on the CPU"). This sets what ``MALLOC_MMAP_MAX_=0`` and a large
    ``MALLOC_TRIM_THRESHOLD_`` would at start-up; the process then keeps its peak memory. The
    command calls it for its own process; the package never calls it on import (call it in your
    own process if you want the same).

    Returns:
        Whether it was applied: not on other C libraries, and not when the environment already
        sets ``MALLOC_MMAP_MAX_`` or ``MALLOC_TRIM_THRESHOLD_`` (the caller's choice stands).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt takes a C int: 2 GiB - 1 is the largest trim threshold it can be given
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some file failed, 2 bad options)."""
    args = build_parser().parse_args(argv)
    rank, world = _distributed()
    try:
        _check_options(args)
        files = _input_files(args)
        device = _device(args.device)
        if args.output is None:
            if not args.demo:
                raise ConfigError("--output DIR is required")
            args.output = Path(tempfile.mkdtemp(prefix="diffinverse-demo-")) if rank == 0 else None
    except ConfigError as err:
        print(f"diffinverse-reconstruct: error: {err}", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.release_memory:
        keep_freed_memory()

    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        args.output = _gather(args.output, world)[0]  # every rank writes where rank 0 does
    try:
        return _run(args, files, device, rank, world)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(args: argparse.Namespace, all_files: list[Path], device: torch.device, rank: int, world: int) -> int:
    files = all_files[rank::world]
    problems = _preflight(files, args)
    summary_path = args.output / "metrics.json"
    if rank == 0 and summary_path.exists() and not (args.overwrite or args.resume):
        problems.append(f"{summary_path}: already exists; pass --overwrite (or --resume)")
    method = None
    if not problems:
        try:
            method = _Method(args, device)
        except ConfigError as err:
            problems.append(str(err))
    problems = sorted({p for ps in _gather(problems, world) for p in ps})
    if problems:
        if rank == 0:
            for p in problems:
                print(f"diffinverse-reconstruct: error: {p}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)

    done, skipped, failed = [], [], {}
    say = tqdm.write if world == 1 else (lambda s: None)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(files), desc="files", unit="file", disable=rank != 0 or None))
        for path in files:
            paths = _output_paths(args.output, path.stem, args.format, args.num_samples > 1)
            try:
                if args.resume and _is_complete(paths):
                    record = json.loads(paths["metrics"].read_text())
                    skipped.append(path.stem)
                else:
                    record = reconstruct_file(path, args, method)
                    say(format_table(record))
                done.append(record)
            except Exception as err:  # noqa: BLE001 - any failure of one file is reported, the run goes on
                failed[path.stem] = f"{type(err).__name__}: {err}"
                say(f"FAILED {path}: {err}")
            bar.update(1)

    gathered = _gather((done, skipped, failed), world)
    if rank != 0:
        return 1 if any(g[2] for g in gathered) else 0
    done = sorted((r for g in gathered for r in g[0]), key=lambda r: r["name"])
    skipped = [s for g in gathered for s in g[1]]
    failed = {k: v for g in gathered for k, v in g[2].items()}
    if world > 1:
        for r in done:
            print(format_table(r))
        for name, msg in failed.items():
            print(f"FAILED {name}: {msg}")
    _write_summary(args.output, done, failed, overwrite=True)
    print(f"\n{len(done) - len(skipped)} reconstructed, {len(skipped)} skipped (complete, --resume), "
          f"{len(failed)} failed; outputs in {args.output}")
    for name, msg in failed.items():
        print(f"  failed: {name}: {msg}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
