"""``diffinverse-reconstruct``: reconstruct fastMRI files with a diffusion prior or a baseline.

Usage::

    diffinverse-reconstruct --demo                               # bundled 8-coil brain file
    diffinverse-reconstruct FILE_OR_DIR --output out/            # defaults: DDS, mri-brain-v2 prior, 4x
    diffinverse-reconstruct data/ --sampler sense --mask equispaced --acceleration 8 --output out/
    diffinverse-reconstruct data/ --sampler reddiff --reddiff-lr 0.02 --output out/
    diffinverse-reconstruct data/ --sampler ads --acceleration 8 --output out/  # ADS chooses the lines
    torchrun --nproc_per_node=4 -m diffinverse.reconstruct data/ --output out/   # one file per rank

This module is the command line around :func:`diffinverse.pipelines.reconstruct_kspace` (and,
for ``--sampler ads``, :func:`~diffinverse.pipelines.active.active_reconstruct_kspace`), which
holds the MRI pipeline (readout crop, coil maps, baselines, scaling into the prior's range,
warm start, sampling; see :mod:`diffinverse.pipelines.fastmri`). What the command adds, per file
(read lazily with :class:`~diffinverse.datasets.fastmri.FastMRIFile`, ``--batch-size`` slices at
a time):

1. **Reconstruction size**: the target's shape when the file has one, else the header's
   ``reconSpace`` matrix (default 320 x 320).
2. **Mask.** Files with a ``mask`` (fastMRI test/challenge data) are reconstructed from it.
   Otherwise the mask is ``--mask-file``'s (the ``mask`` dataset of an earlier output or of a
   fastMRI file), or a retrospective mask (``--mask``, ``--acceleration``,
   ``--center-fraction``) drawn once per volume from a generator seeded by ``--seed`` and the
   file name (:func:`_file_seed`: ``(seed * 1000003 + crc32(name)) mod 2**63``), so sharding and
   ``--resume`` do not change it, and the same data under another name get another mask; the
   samplers draw from a second generator seeded likewise (plus one). An acceleration the mask
   cannot reach (its central lines alone sample more) is refused before any work, naming the
   largest achievable; the achieved acceleration (lines over sampled lines) is what is reported.
   ``--sampler ads`` (Active Diffusion Subsampling, :mod:`diffinverse.pipelines.active`) instead
   chooses each slice's lines of a fully sampled file while sampling, one slice at a time: the
   ``max(1, round(W * --center-fraction))`` centre lines first, then, where its particles
   disagree most, more up to ``round(W / --acceleration)`` lines in all. ``--mask`` and
   ``--mask-file`` are refused with it, an acceleration that leaves no line beyond the centre is
   refused before any work, and a file with its own mask fails (ADS needs all lines to choose
   from). Its particles draw from the samplers' generator (seeded as above, plus one).
3. **Options.** ``--sampler`` picks a method of the pipeline; each diffusion sampler's own
   options (its :class:`~diffinverse.samplers.SamplerSpec` ``options``) are offered as
   ``--SAMPLER-OPTION`` (``--dps-zeta``, ``--reddiff-lam``, ``--dds-gamma``, ...), defaults from
   :data:`~diffinverse.pipelines.fastmri.SAMPLER_DEFAULTS`. The former ``--zeta``, ``--lam`` and
   ``--lr`` are still accepted, with a ``FutureWarning`` naming the new option. ``--sampler ads``
   (not one of the pipeline's methods: the command's :data:`CHOICES` add it) takes
   ``--ads-particles``, ``--ads-sampler`` and ``--ads-predict`` (defaults
   :data:`~diffinverse.pipelines.active.ACTIVE_DEFAULTS`), the particle sampler's own options,
   ``--steps``, ``--sigma-start``, ``--prior`` and ``--bf16``; it refuses ``--num-samples > 1``
   (the particles are the samples), ``--warm-start tv`` (the particles start from SENSE of the
   centre lines) and ``--adapt``. ``--second-map-set`` (tv and the samplers) says what becomes of
   the second ESPIRiT map set of a field of view that wraps
   (:func:`~diffinverse.pipelines.fastmri.reconstruct_kspace`'s ``second_map_set``).
4. **Outputs** in ``--output``: ``<name>.h5`` in fastMRI's submission layout (``reconstruction``
   float32 magnitude ``(S, h, w)``, centre-cropped, plus ``std`` with ``--num-samples N > 1``, the
   ``mask`` as fastMRI stores it, and attributes ``options`` (JSON of :func:`run_options`),
   ``diffinverse_version``, ``acceleration``; with ``--sampler ads``: ``std`` of the particles,
   ``mask`` ``(S, W)``, one row of 0/1 lines per reconstructed slice where fastMRI stores one
   ``(W,)`` row per file (attribute ``mask_layout = "slices"``; ``--mask-file`` takes it from a
   one-slice file only),
   ``order`` ``(S, budget)`` int32, each slice's chosen lines in acquisition order, and the
   acceleration attribute the mean over slices), ``<name>.order.png`` with ``--sampler ads``
   whatever ``--format`` (the acquisition order, one row per slice), optionally
   ``<name>.nii.gz`` (and ``<name>_std.nii.gz``, see :func:`save_nifti` for the affine) and
   ``<name>.png`` previews, and ``<name>.metrics.json``, which marks the file complete for
   ``--resume`` (the order PNG is part of a complete output); finally ``metrics.json`` over all
   files. A file's outputs are written into a hidden staging folder in ``--output`` and renamed
   into place together, ``<name>.metrics.json`` last; if anything fails or is interrupted before
   the last rename, the ones already moved are removed, so a file's outputs appear all together
   or not at all. Files are created with the permissions a plain write gives (the umask's). Metrics (NMSE, PSNR, SSIM; fastMRI's conventions, see
   :mod:`diffinverse.metrics`) are computed against ``reconstruction_rss`` /
   ``reconstruction_esc`` when present, for the chosen method and the baselines.

Existing outputs are never replaced without ``--overwrite``. ``--resume`` skips files whose
outputs are complete *and* were made with the same options and package version (compared with
the ``options`` recorded in ``<name>.metrics.json``), redoes incomplete ones (replacing the
partial outputs of an interrupted run), and refuses to start (status 2) when complete outputs
were made with other options, listing what differs: a pipeline never mixes results of two
settings in one folder, nor replaces results without ``--overwrite`` (``--resume --overwrite``
recomputes those and still skips the matching ones).

Exit status: 0 every file reconstructed (or skipped by ``--resume``); 1 some file failed (each
is reported, the others go on); 2 a configuration error found before any reconstruction
(options, prior, output folder that is a file or cannot be written, existing outputs, an
unreachable acceleration, an unusable ``--mask-file``, options ``--sampler ads`` refuses); 130
interrupted (Ctrl-C), after saying which files were finished and which were not. A file whose
whole selected k-space is zero fails; all-zero slices among others give a warning naming the
file and the slices.

Under ``torchrun`` (``WORLD_SIZE``/``RANK`` set), rank ``r`` of ``K`` takes files ``r, r+K, ...``
(``nccl`` with one GPU per rank, ``gloo`` on CPU); rank 0 gathers the results, writes
``metrics.json`` and prints the tables and the summary.

On a CPU under glibc (Linux) the command first has malloc keep freed memory
(:func:`diffinverse.memory.keep_freed_memory`; ``--release-memory`` leaves glibc's default), so
that a UNet's large activations at fastMRI sizes are not mapped afresh at every network call; the
process then keeps its peak memory. ``MALLOC_MMAP_MAX_`` or ``MALLOC_TRIM_THRESHOLD_`` set in the
environment are left as they are (setting either one turns off glibc's adaptive threshold).

On a GPU the samplers run eagerly: the command builds a new operator (new coil maps) for every
batch of slices, so a CUDA-graph capture (the samplers' ``cuda_graph=True``) would be redone every
batch, and at fastMRI sizes it gains little (measurements in ``benchmarks/``).

References:
    Zbontar et al., "fastMRI: An Open Dataset and Benchmarks for Accelerated MRI", 2018.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
import zlib
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from tqdm.auto import tqdm

from diffinverse import __version__
from diffinverse import metrics as M
from diffinverse._io import atomic_output
from diffinverse.datasets.fastmri import FastMRIError, FastMRIFile, read_mask, write_submission
from diffinverse.datasets.volumes import write_nifti
from diffinverse.memory import keep_freed_memory
from diffinverse.pipelines.active import (
    ACTIVE_DEFAULTS,
    PARTICLE_SAMPLERS,
    active_reconstruct_kspace,
    line_budget,
    save_acquisition_order,
)
from diffinverse.pipelines.fastmri import (
    BASELINES,
    MASK_TYPES,
    METHODS,
    SAMPLER_DEFAULTS,
    SECOND_MAP_SETS,
    WARM_STARTS,
    acceleration_of,
    build_sampler,
    reconstruct_kspace,
    resolve_second_map_set,
    resolve_start,
    retrospective_mask,
)
from diffinverse.samplers.adaptation import Adaptation
from diffinverse.samplers.table import SAMPLERS

__all__ = ["main", "build_parser", "reconstruct_file", "run_options", "save_nifti", "save_preview", "format_table",
           "keep_freed_memory", "DEMO_FILE", "EXIT_OK", "EXIT_FAILED", "EXIT_CONFIG", "EXIT_INTERRUPTED"]

DEMO_FILE = "demo_brain.h5"
# the options' former names (before they were namespaced by sampler), accepted until the next
# version with a FutureWarning: old name -> the sampler whose option it is
_DEPRECATED_OPTIONS = {"zeta": "dps", "lr": "reddiff", "lam": "reddiff"}
# retrospective-mask options: their defaults, applied when no --mask-file is given
_MASK_DEFAULTS = {"mask": "random", "acceleration": 4.0, "center_fraction": 0.08}
ACTIVE = "ads"
"""The command's one method that is not the pipeline's (:data:`~diffinverse.pipelines.fastmri.METHODS`):
Active Diffusion Subsampling, which chooses each slice's lines (:mod:`diffinverse.pipelines.active`)."""
CHOICES = (*METHODS, ACTIVE)
"""``--sampler``'s choices."""
_ACTIVE_OPTIONS = ("particles", "sampler", "predict")
"""``--ads-*`` options (their defaults: :data:`~diffinverse.pipelines.active.ACTIVE_DEFAULTS`)."""
_ADAPT_OPTIONS = {"lr": (float, 3e-4), "every": (int, 3), "steps": (int, 1), "rank": (int, 4)}
"""``--adapt-*`` options: type and default (chosen on real training-set head slices,
``benchmarks/samplers/adaptation_results.md``)."""
#: exit statuses: all done; some file failed; configuration error before any work; Ctrl-C
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


class ConfigError(ValueError):
    """A problem with the options or the environment, found before any file is processed."""


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _sampler_options() -> list[tuple[str, str, type]]:
    """``(sampler, option, type)`` of every pipeline sampler's own options, from the sampler table."""
    return [(name, option, kind) for name in SAMPLER_DEFAULTS for option, kind in SAMPLERS[name].options.items()]


def _flag(sampler: str, option: str) -> str:
    return f"--{sampler}-{option.replace('_', '-')}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``diffinverse-reconstruct``."""
    p = argparse.ArgumentParser(
        prog="diffinverse-reconstruct",
        description="Reconstruct fastMRI HDF5 files (single- or multi-coil) with a diffusion prior or a baseline.")
    p.add_argument("inputs", nargs="*", type=Path, help="fastMRI .h5 files or directories of them")
    p.add_argument("--demo", action="store_true", help="reconstruct the bundled 8-coil brain demo file")
    p.add_argument("--sampler", choices=CHOICES, default="dds",
                   help="reconstruction method (default: dds); 'ads' (Active Diffusion Subsampling) chooses each "
                        "slice's lines of a fully sampled file while sampling and saves them")
    p.add_argument("--prior", default=None,
                   help="shipped prior name or .safetensors path, diffusion samplers only (default: mri-brain-v2; "
                        "mri-brain-latent for stsl)")
    p.add_argument("--mask", choices=MASK_TYPES, default=None,
                   help="retrospective mask for fully sampled files (default: random lines), seeded by --seed "
                        "and the file name")
    p.add_argument("--acceleration", type=float, default=None,
                   help="undersampling factor (default: 4); refused when the mask's central lines alone exceed "
                        "it; the achieved factor is reported")
    p.add_argument("--center-fraction", type=float, default=None,
                   help="fraction of fully sampled central lines (default: 0.08)")
    p.add_argument("--mask-file", type=Path, default=None,
                   help="reuse a saved mask: an .h5 with a 'mask' dataset ((W,) lines, as fastMRI and this "
                        "command's outputs store it, or (h, W)); replaces --mask/--acceleration/--center-fraction")
    p.add_argument("--slices", default=None, help="slices to reconstruct, e.g. 10:20 or 5 (default: all)")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps of the full grid (default: per sampler)")
    p.add_argument("--sigma-start", default=None,
                   help="warm-start noise level in scaled units, or 'none' for a cold start from pure noise")
    p.add_argument("--warm-start", choices=WARM_STARTS, default=None,
                   help="baseline the diffusion samplers start from (default: per sampler)")
    p.add_argument("--second-map-set", choices=SECOND_MAP_SETS, default=None,
                   help="multi-coil data whose field of view wraps (ESPIRiT finds a second map set): 'model' "
                        "reconstructs both map sets' images (TV or the prior on each), 'sense' keeps SENSE's "
                        "second image (default: model; sense for stsl, whose latent prior models one image)")
    for sampler, option, kind in _sampler_options():
        default = SAMPLER_DEFAULTS[sampler].options.get(option)
        text = f"{SAMPLERS[sampler].cls.__name__} option {option}" + (f" (default: {default:g})"
                                                                      if isinstance(default, float) else "")
        if kind is bool:
            p.add_argument(_flag(sampler, option), dest=f"{sampler}_{option}", action=argparse.BooleanOptionalAction,
                           default=None, help=text)
        else:
            p.add_argument(_flag(sampler, option), dest=f"{sampler}_{option}", type=kind, default=None,
                           metavar=option.upper(), help=text)
    for option, sampler in _DEPRECATED_OPTIONS.items():
        p.add_argument(f"--{option}", dest=f"deprecated_{option}", type=SAMPLERS[sampler].options[option],
                       default=None, metavar=option.upper(), help=f"deprecated: use {_flag(sampler, option)}")
    p.add_argument("--ads-particles", dest="ads_particles", type=int, default=None, metavar="N",
                   help=f"with --sampler ads: particles (their disagreement chooses the next line; their mean is "
                        f"the reconstruction, their std the std) (default: {ACTIVE_DEFAULTS['num_particles']})")
    p.add_argument("--ads-sampler", dest="ads_sampler", choices=PARTICLE_SAMPLERS, default=None,
                   help=f"with --sampler ads: the sampler that moves the particles; its own options "
                        f"(--dds-gamma, ...) apply (default: {ACTIVE_DEFAULTS['sampler']})")
    p.add_argument("--ads-predict", dest="ads_predict", choices=("consistent", "tweedie"), default=None,
                   help=f"with --sampler ads: what predicts each line's k-space, the particles' estimates made "
                        f"consistent with the lines measured so far or their raw Tweedie estimates (the paper's) "
                        f"(default: {ACTIVE_DEFAULTS['predict']})")
    p.add_argument("--adapt", action="store_true",
                   help="test-time adaptation of the prior: LoRA adapters trained on this file's measurements "
                        "during sampling (diffusion samplers only; the prior's weights are never changed); "
                        "what it gains on real head images: benchmarks/samplers/adaptation_results.md")
    for option, (kind, default) in _ADAPT_OPTIONS.items():
        p.add_argument(f"--adapt-{option}", dest=f"adapt_{option}", type=kind, default=None,
                       metavar=option.upper(), help=f"with --adapt: Adaptation's {option} (default: {default:g})")
    p.add_argument("--bf16", action="store_true",
                   help="run the prior's network in bfloat16 (autocast; diffusion samplers only): faster where "
                        "the hardware has bf16 units (CPUs with AVX512-BF16 or AMX, recent GPUs)")
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
                   help="skip files whose outputs are complete and were made with the same options and version; "
                        "redo incomplete ones; refuse to start (exit 2), listing the differences, when complete "
                        "outputs were made with other options (with --overwrite: recompute those)")
    p.epilog = ("exit status: 0 done; 1 some file failed (the others are done); 2 configuration error, found "
                "before any reconstruction; 130 interrupted (Ctrl-C)")
    return p


def _apply_deprecated_options(args: argparse.Namespace) -> None:
    """Move a former option name's value to its namespaced option, with a ``FutureWarning``."""
    for option, sampler in _DEPRECATED_OPTIONS.items():
        value = getattr(args, f"deprecated_{option}")
        if value is None:
            continue
        new = _flag(sampler, option)
        warnings.warn(f"--{option} is deprecated and will be removed in the next version; use {new}",
                      FutureWarning, stacklevel=2)
        if getattr(args, f"{sampler}_{option}") is not None:
            raise ConfigError(f"give {new} or its deprecated name --{option}, not both")
        setattr(args, f"{sampler}_{option}", value)


def _options_of(args: argparse.Namespace, sampler: str) -> dict:
    """The sampler's own options given on the command line (``{option: value}``)."""
    return {option: getattr(args, f"{sampler}_{option}") for option in SAMPLERS[sampler].options
            if getattr(args, f"{sampler}_{option}") is not None}


def _check_options(args: argparse.Namespace) -> None:
    # every float option, whatever it is: nan and inf pass the range checks below, so refuse them first
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            flag = f"--{name.removeprefix('deprecated_').replace('_', '-')}"
            raise ConfigError(f"{flag} must be a finite number, got {value}")
    _check_active_options(args)
    _resolve_mask_options(args)  # with --mask-file, the three retrospective options stay None
    if args.acceleration is not None and args.acceleration < 1:
        raise ConfigError(f"--acceleration must be >= 1, got {args.acceleration}")
    if args.mask == "equispaced" and args.acceleration != int(args.acceleration):
        raise ConfigError(f"--mask equispaced needs an integer --acceleration, got {args.acceleration:g}")
    if args.center_fraction is not None and not 0 < args.center_fraction <= 1:
        raise ConfigError(f"--center-fraction must be in (0, 1], got {args.center_fraction}")
    for name in ("steps", "num_samples", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for sampler, option, _ in _sampler_options():
        value = getattr(args, f"{sampler}_{option}")
        if value is None:
            continue
        if args.sampler == ACTIVE and _particle_sampler(args) != sampler:
            raise ConfigError(f"{_flag(sampler, option)} applies to --sampler {sampler} (or --sampler {ACTIVE} "
                              f"--ads-sampler {sampler}), not --sampler {ACTIVE} "
                              f"--ads-sampler {_particle_sampler(args)}")
        if args.sampler not in (sampler, ACTIVE):
            raise ConfigError(f"{_flag(sampler, option)} applies to --sampler {sampler}, not {args.sampler}")
        # the ranges are the sampler's own (checked when it is built); finiteness is checked above
    given_adapt = [f"--adapt-{o}" for o in _ADAPT_OPTIONS if getattr(args, f"adapt_{o}") is not None]
    if given_adapt and not args.adapt:
        raise ConfigError(f"{', '.join(given_adapt)} need(s) --adapt")
    if args.second_map_set is not None and args.sampler == ACTIVE:
        raise ConfigError(f"--second-map-set does not apply to --sampler {ACTIVE}: its particles are both map "
                          f"sets' images wherever the second set is not empty (the fixed masks' 'model')")
    if args.second_map_set is not None and args.sampler not in (*SAMPLER_DEFAULTS, "tv"):
        raise ConfigError(f"--second-map-set applies to tv and the diffusion samplers "
                          f"({', '.join(SAMPLER_DEFAULTS)}), not {args.sampler}")
    for option in ("prior", "warm_start", "bf16", "adapt"):
        if getattr(args, option) and args.sampler not in (*SAMPLER_DEFAULTS, ACTIVE):
            raise ConfigError(f"--{option.replace('_', '-')} applies to the diffusion samplers "
                              f"({', '.join(SAMPLER_DEFAULTS)}), not {args.sampler}")
    if args.sampler in (*SAMPLER_DEFAULTS, ACTIVE) and args.prior is None:
        args.prior = SAMPLER_DEFAULTS[_particle_sampler(args) if args.sampler == ACTIVE else args.sampler].prior
    if args.slices is not None:
        _parse_slices(args.slices, 10**9)
    if args.sigma_start is not None and args.sigma_start.lower() != "none":
        try:
            value = float(args.sigma_start)
        except ValueError:
            raise ConfigError(f"--sigma-start must be a number or 'none', got {args.sigma_start!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--sigma-start must be a finite positive number, got {value}")


def _particle_sampler(args: argparse.Namespace) -> str:
    """``--sampler ads``'s particle sampler: ``--ads-sampler`` or :data:`ACTIVE_DEFAULTS`'s."""
    return args.ads_sampler or ACTIVE_DEFAULTS["sampler"]


def _check_active_options(args: argparse.Namespace) -> None:
    """``--ads-*`` only with ``--sampler ads``, and with it none of the options ADS replaces or
    does not support: ADS chooses the mask (no ``--mask``, ``--mask-file``), its particles are
    the samples (no ``--num-samples``), it warm-starts from SENSE of the centre lines (no
    ``--warm-start tv``), and it runs without test-time adaptation (no ``--adapt``)."""
    given = [f"--ads-{o}" for o in _ACTIVE_OPTIONS if getattr(args, f"ads_{o}") is not None]
    if args.sampler != ACTIVE:
        if given:
            raise ConfigError(f"{', '.join(given)} appl(ies) to --sampler {ACTIVE}, not {args.sampler}")
        return
    if args.mask is not None or args.mask_file is not None:
        flag = "--mask" if args.mask is not None else "--mask-file"
        raise ConfigError(f"--sampler {ACTIVE} chooses each slice's lines; {flag} cannot be used with it "
                          f"(give --acceleration and --center-fraction)")
    if args.num_samples > 1:
        raise ConfigError(f"--num-samples cannot be used with --sampler {ACTIVE}: its particles are the samples "
                          f"(--ads-particles; their std is written as 'std')")
    if args.warm_start not in (None, "sense"):
        raise ConfigError(f"--warm-start {args.warm_start} cannot be used with --sampler {ACTIVE}: its particles "
                          f"start from SENSE of the centre lines (or from noise with --sigma-start none)")
    if args.adapt:
        raise ConfigError(f"--adapt cannot be used with --sampler {ACTIVE}")
    if args.ads_particles is not None and args.ads_particles < 2:
        raise ConfigError(f"--ads-particles must be >= 2 (their disagreement chooses the lines), "
                          f"got {args.ads_particles}")
    if args.acceleration is not None and args.acceleration <= 1:
        raise ConfigError(f"--sampler {ACTIVE} needs --acceleration > 1 (lines left to choose), "
                          f"got {args.acceleration:g}")
    if args.center_fraction is not None and not 0 < args.center_fraction < 1:
        raise ConfigError(f"--center-fraction must be in (0, 1) with --sampler {ACTIVE}, got {args.center_fraction}")


def _resolve_mask_options(args: argparse.Namespace) -> None:
    """Fill the retrospective-mask defaults, or read ``--mask-file`` (then those options are refused).
    ``--sampler ads`` takes only the acceleration and centre fraction (its mask type stays None)."""
    args.mask_array = None
    if args.mask_file is None:
        for name, default in _MASK_DEFAULTS.items():
            if getattr(args, name) is None and not (name == "mask" and args.sampler == ACTIVE):
                setattr(args, name, default)
        return
    given = [f"--{name.replace('_', '-')}" for name in _MASK_DEFAULTS if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"--mask-file gives the mask; {', '.join(given)} cannot be used with it")
    try:
        args.mask_array = read_mask(args.mask_file)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--mask-file: {err}") from None


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


def _output_paths(out_dir: Path, stem: str, formats: list[str], with_std: bool, *,
                  order: bool = False) -> dict[str, Path]:
    paths = {}
    if order:  # --sampler ads: the acquisition order, whatever the formats
        paths["order_png"] = out_dir / f"{stem}.order.png"
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


def _run_paths(args: argparse.Namespace, out_dir: Path, stem: str) -> dict[str, Path]:
    """A file's outputs under this run's options (``std`` with several samples or ADS's particles;
    ADS's acquisition-order PNG)."""
    return _output_paths(out_dir, stem, args.format, args.num_samples > 1 or args.sampler == ACTIVE,
                         order=args.sampler == ACTIVE)


def _check_output_dir(out: Path) -> None:
    """Create ``--output`` if needed and check that files can be written in it (``ConfigError`` if not)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file, not a directory")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--output {out}: {parent} is a file, so the directory cannot be created")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"--output {out}: cannot write there ({type(err).__name__}: {err.strerror or err})") from None


def _preflight(files: list[Path], args: argparse.Namespace) -> list[str]:
    """Problems that must stop the run before anything is written (existing outputs, collisions,
    masks that cannot be made for a file). Files that cannot be opened are left to fail in turn."""
    problems = []
    for f in files:
        paths = _run_paths(args, args.output, f.stem)
        for p in paths.values():
            if p.exists() and p.resolve() == f.resolve():
                problems.append(f"{f}: the output {p} would replace the input file; choose another --output")
        try:
            with FastMRIFile(f) as fm:
                if args.sampler == ACTIVE:
                    if fm.mask is None:  # a file with its own mask fails in its turn (ADS needs all lines)
                        _active_budget(fm, args)
                else:
                    _make_mask(fm, (_recon_crop(fm)[0], fm.shape[1]), args)
        except _MaskError as err:
            problems.append(str(err))
        except (ValueError, OSError):
            pass  # a file that cannot be read fails in its turn; the others go on
        if args.overwrite or args.resume:
            continue
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing:
            problems.append(f"{f}: outputs already exist ({', '.join(existing)}); pass --overwrite to replace "
                            f"them or --resume to skip complete files")
    return problems


def _is_complete(paths: dict[str, Path]) -> bool:
    return all(p.exists() for p in paths.values())


def run_options(args: argparse.Namespace, method: _Method) -> dict:
    """What determines a run's outputs, as recorded in them and compared by ``--resume``.

    The method with its resolved settings (steps, start, the sampler's options merged with
    :data:`~diffinverse.pipelines.fastmri.SAMPLER_DEFAULTS`, prior, samples, bf16), the mask
    (retrospective type, requested acceleration and centre fraction, or ``--mask-file`` with the
    SHA-256 of its mask), seed, slices, batch size and the package version. Not the device or
    the output formats. ``--sampler ads``: mask type ``"ads"``, the particle sampler's settings
    and ``ads`` (particle sampler, particles, entropy kernel and width, acquisition window,
    predictions), no
    batch size (it runs slice by slice, so the batch size changes nothing).
    """
    if args.mask_file is not None:
        digest = hashlib.sha256(np.ascontiguousarray(args.mask_array, dtype=np.float32).tobytes()).hexdigest()
        mask = {"file": str(args.mask_file), "sha256": digest}
    else:
        mask = {"type": ACTIVE if method.name == ACTIVE else args.mask, "acceleration": args.acceleration,
                "center_fraction": args.center_fraction}
    options = {"version": __version__, "sampler": method.name, "mask": mask, "seed": args.seed,
               "slices": args.slices}
    if method.name != ACTIVE:
        options["batch_size"] = args.batch_size
    if method.sampler_name in SAMPLER_DEFAULTS:
        warm_start, sigma_start = method.used_start
        options.update(prior=args.prior, steps=method.used_steps, warm_start=warm_start, sigma_start=sigma_start,
                       sampler_options={**SAMPLER_DEFAULTS[method.sampler_name].options, **method.options},
                       bf16=bool(method.bf16))
    if method.name in SAMPLER_DEFAULTS:
        options.update(num_samples=method.num_samples,
                       adapt=None if method.adapt is None else dataclasses.asdict(method.adapt))
    if method.name in (*SAMPLER_DEFAULTS, "tv"):
        options["second_map_set"] = method.second_map_set
    elif method.name == ACTIVE:
        options["ads"] = {**method.active, "sampler": method.sampler_name}
    return json.loads(json.dumps(options))  # as read back from a record


def _differences(old, new, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf of two (nested) option dicts that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key, "(not set)"), new.get(key, "(not set)"), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]} {old!r} (outputs) vs {new!r} (this run)"]


def _recorded_differences(paths: dict[str, Path], options: dict) -> list[str]:
    """How the options recorded in a file's complete outputs differ from ``options`` (``[]``: same)."""
    try:
        old = json.loads(paths["metrics"].read_text()).get("options")
    except (OSError, ValueError, AttributeError) as err:
        return [f"{paths['metrics']} cannot be read ({err})"]
    return ["no options recorded (made by an older version)"] if old is None else _differences(old, options)


def _resume_conflicts(files: list[Path], args: argparse.Namespace, options: dict) -> list[str]:
    """With ``--resume`` (without ``--overwrite``): complete outputs made with other options."""
    problems = []
    for f in files:
        paths = _run_paths(args, args.output, f.stem)
        diff = _recorded_differences(paths, options) if _is_complete(paths) else []
        if diff:
            problems.append(f"{f}: --resume found complete outputs made with other options: {'; '.join(diff)}. "
                            f"Pass --overwrite to recompute them, or choose another --output")
    return problems


# --------------------------------------------------------------------------------------------
# one file
# --------------------------------------------------------------------------------------------
def _file_seed(seed: int, name: str) -> int:
    """The seed of a file's retrospective mask: ``(seed * 1000003 + crc32(file name)) mod 2**63``.

    Per file name (not per content), as fastMRI seeds per file: the same data under another
    name get another mask; ``--mask-file`` reuses a saved one. The sampler's seed is this plus one.
    """
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


class _MaskError(FastMRIError):
    """A mask the options cannot give for a file (unreachable acceleration, a ``--mask-file`` that
    does not fit); found by the preflight, before any work (exit 2)."""


def _recon_crop(f: FastMRIFile) -> tuple[int, int]:
    """The evaluated matrix: the target's shape when the file has one, else the header's."""
    if not f.targets:
        return f.recon_size
    th, tw = f.target_shapes[f.targets[0]]
    if th > f.shape[0] or tw > f.shape[1]:
        raise FastMRIError(f"{f.path}: '{f.targets[0]}' slices ({th}, {tw}) are larger than the k-space {f.shape}")
    return th, tw


def _make_mask(f: FastMRIFile, shape: tuple[int, int], args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    """The ``(W,)`` or ``(h, W)`` mask of a file, and a description with the achieved acceleration:
    the file's own mask, ``--mask-file``'s, or a retrospective one."""
    if f.mask is not None:
        if args.mask_file is not None:
            raise _MaskError(f"{f.path}: the file has its own mask (undersampled data); --mask-file applies to "
                               f"fully sampled files")
        return torch.from_numpy(f.mask), f"file mask, {acceleration_of(f.mask):.2f}x"
    if args.mask_file is not None:
        m = args.mask_array
        if m.shape[-1] != shape[1] or (m.ndim == 2 and m.shape[0] != shape[0]):
            want = f"({shape[1]},) or {tuple(shape)}"
            raise _MaskError(f"{f.path}: --mask-file {args.mask_file} holds a mask of shape {m.shape}; this file "
                               f"needs {want} ({shape[1]} phase-encode lines)")
        return torch.from_numpy(m), f"mask from {args.mask_file.name}, {acceleration_of(m):.2f}x"
    g = torch.Generator().manual_seed(_file_seed(args.seed, f.path.name))
    try:
        m = retrospective_mask(shape, acceleration=args.acceleration, mask_type=args.mask,
                               center_fraction=args.center_fraction, generator=g)
    except ValueError as err:
        raise _MaskError(f"{f.path}: --acceleration {args.acceleration:g}: {err}") from None
    return m, f"{args.mask} {args.acceleration:g}x requested, {acceleration_of(m):.2f}x achieved"


def _active_budget(f: FastMRIFile, args: argparse.Namespace) -> tuple[int, int]:
    """``--sampler ads``: the centre lines and the lines in all of a file's slices
    (:func:`~diffinverse.pipelines.active.line_budget`); ``_MaskError`` when nothing is left to choose."""
    try:
        return line_budget(f.shape[1], acceleration=args.acceleration, center_fraction=args.center_fraction)
    except ValueError as err:
        raise _MaskError(f"{f.path}: --acceleration {args.acceleration:g} with --center-fraction "
                         f"{args.center_fraction:g}: {err}") from None


def _mask_columns(mask: torch.Tensor) -> np.ndarray:
    """A mask as fastMRI stores it: ``(W,)`` lines for a line mask (constant along rows), else 2-D."""
    m = mask.cpu().numpy()
    if m.ndim == 2 and (m == m[:1]).all():
        return m[0]
    return m


class _Method:
    """The chosen reconstruction method, checked once per run (prior, options, start) before any file."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.name = args.sampler
        # the diffusion sampler that runs: the method itself, or ADS's particle sampler
        self.sampler_name = _particle_sampler(args) if self.name == ACTIVE else self.name
        self.num_samples = args.num_samples
        self.device = device
        self.prior = None
        self.options: dict = {}
        self.cold_start = args.sigma_start is not None and args.sigma_start.lower() == "none"
        self.sigma_start = None if args.sigma_start is None or self.cold_start else float(args.sigma_start)
        self.warm_start = args.warm_start
        self.steps = args.steps
        self.bf16 = args.bf16
        self.second_map_set = resolve_second_map_set(None, args.second_map_set)   # TV; samplers: below
        self.adapt = None
        if args.adapt:
            try:
                self.adapt = Adaptation(**{o: (d if getattr(args, f"adapt_{o}") is None else getattr(args, f"adapt_{o}"))
                                           for o, (_, d) in _ADAPT_OPTIONS.items()})
            except (ValueError, TypeError) as err:
                raise ConfigError(f"--adapt: {err}") from None
        if self.name == ACTIVE:
            # ADS's settings: ACTIVE_DEFAULTS with --ads-particles; the particles start from SENSE of the centre
            self.active = {"num_particles": args.ads_particles or ACTIVE_DEFAULTS["num_particles"],
                           "predict": args.ads_predict or ACTIVE_DEFAULTS["predict"],
                           **{k: ACTIVE_DEFAULTS[k] for k in ("kernel", "s", "window")}}
            self.acceleration, self.center_fraction = args.acceleration, args.center_fraction
            self.warm_start = None if self.cold_start else "sense"
        if self.sampler_name in SAMPLER_DEFAULTS:
            self.prior = _load_prior(args.prior, device)
            try:
                self.second_map_set = resolve_second_map_set(self.prior, args.second_map_set)
            except ValueError as err:
                raise ConfigError(f"--second-map-set {args.second_map_set}: {err}") from None
            self.options = _options_of(args, self.sampler_name)
            try:
                sampler = build_sampler(self.sampler_name, self.prior, num_steps=self.steps,
                                        sampler_options=self.options, autocast=self.bf16, adapt=self.adapt)
                # what the run will use, for the record; reconstruct_kspace (active_reconstruct_kspace)
                # resolves the same
                self.used_steps = self.steps or SAMPLER_DEFAULTS[self.sampler_name].num_steps
                self.used_start = resolve_start(sampler, method=self.sampler_name, warm_start=self.warm_start,
                                                sigma_start=self.sigma_start, cold_start=self.cold_start)
            except ValueError as err:
                which = f" --ads-sampler {self.sampler_name}" if self.name == ACTIVE else ""
                raise ConfigError(f"--sampler {self.name}{which}: {err}") from None
        elif args.num_samples > 1:
            raise ConfigError(f"--num-samples > 1 needs a diffusion sampler ({', '.join(SAMPLER_DEFAULTS)}), "
                              f"not {self.name}")

    def reconstruct(self, k: torch.Tensor, mask: torch.Tensor, recon_size: tuple[int, int],
                    generator: torch.Generator):
        """:func:`~diffinverse.pipelines.reconstruct_kspace` of one batch with the run's settings."""
        settings = {"second_map_set": self.second_map_set} if self.name in (*SAMPLER_DEFAULTS, "tv") else {}
        if self.name in SAMPLER_DEFAULTS:
            settings |= {"prior": self.prior, "num_steps": self.steps, "warm_start": self.warm_start,
                        "sigma_start": self.sigma_start, "cold_start": self.cold_start,
                        "sampler_options": self.options, "num_samples": self.num_samples, "autocast": self.bf16,
                        "generator": generator, "adapt": self.adapt}
        return reconstruct_kspace(k, mask, method=self.name, recon_size=recon_size, device=self.device, **settings)

    def reconstruct_active(self, k: torch.Tensor, recon_size: tuple[int, int], generator: torch.Generator):
        """``--sampler ads``: :func:`~diffinverse.pipelines.active.active_reconstruct_kspace` of one
        fully sampled slice with the run's settings; it chooses the slice's lines."""
        return active_reconstruct_kspace(
            k, acceleration=self.acceleration, center_fraction=self.center_fraction, prior=self.prior,
            recon_size=recon_size, sampler=self.sampler_name, num_steps=self.steps, sigma_start=self.sigma_start,
            cold_start=self.cold_start, sampler_options=self.options, autocast=self.bf16, generator=generator,
            device=self.device, **self.active)

    def describe(self) -> str:
        if self.sampler_name not in SAMPLER_DEFAULTS:
            return self.name
        warm_start, sigma_start = self.used_start
        start = "cold start" if sigma_start is None else f"warm start from {warm_start} at sigma {sigma_start:g}"
        network = ", network in bf16" if self.bf16 else ""
        if self.name == ACTIVE:
            return (f"{ACTIVE} ({self.active['num_particles']} {self.sampler_name} particles, {self.used_steps} "
                    f"steps, {start}{network})")
        adapted = f", adapted (LoRA rank {self.adapt.rank}, lr {self.adapt.lr:g})" if self.adapt else ""
        return f"{self.name} ({self.used_steps} steps, {start}, {self.num_samples} sample(s){network}{adapted})"


def _load_prior(name: str, device: torch.device):
    from diffinverse.priors.checkpoints import load

    try:
        prior = load(name, device=device)
    except (ValueError, FileNotFoundError, KeyError, OSError, TypeError) as err:
        raise ConfigError(f"cannot load prior {name!r}: {err}") from None
    return prior.eval()


def reconstruct_file(path: Path, args: argparse.Namespace, method: _Method, *, options: dict | None = None) -> dict:
    """Reconstruct one fastMRI file and write its outputs; returns its record (see ``metrics.json``).

    ``options`` is what the outputs record as their settings (default :func:`run_options`).
    ``--sampler ads`` chooses each slice's lines (one slice at a time, whatever ``--batch-size``)
    and needs a fully sampled file.
    """
    t0 = time.perf_counter()
    options = run_options(args, method) if options is None else options
    warned = []
    active = method.name == ACTIVE
    with FastMRIFile(path) as f:
        sl = _parse_slices(args.slices, f.num_slices)
        if sl.stop <= sl.start:
            raise FastMRIError(f"{path}: --slices {args.slices} selects no slice of its {f.num_slices}")
        crop = _recon_crop(f)  # the reference defines the evaluated matrix
        if active:
            if f.mask is not None:
                raise FastMRIError(f"{path}: the file has its own mask (undersampled k-space); --sampler {ACTIVE} "
                                   f"chooses the lines of fully sampled k-space, so it needs a fully sampled file")
            _active_budget(f, args)
        else:
            mask, mask_text = _make_mask(f, (crop[0], f.shape[1]), args)
        zero = f.zero_slices(sl)
        if len(zero) == sl.stop - sl.start:
            raise FastMRIError(f"{path}: the k-space of slices {sl.start}:{sl.stop} is all zero; nothing to reconstruct")
        if zero:
            warned.append(f"{path}: the k-space of slice(s) {', '.join(map(str, zero))} is all zero; "
                          f"their reconstructions are meaningless")
            warnings.warn(warned[-1], UserWarning, stacklevel=2)
        g = torch.Generator(device=method.device).manual_seed(_file_seed(args.seed, path.name) + 1)
        recs: dict[str, list] = {}
        stds: list = []
        chosen: list = []  # --sampler ads: each slice's result, its images dropped (kept in recs, stds)
        nfe = 0

        def keep(name: str, rec) -> None:
            for key, image in {**rec.baselines, name: rec.image}.items():
                recs.setdefault(key, []).append(image.float().cpu())
            if rec.std is not None:
                stds.append(rec.std.float().cpu())

        if active:
            for i in range(sl.start, sl.stop):
                rec = method.reconstruct_active(torch.from_numpy(f.read_kspace(slice(i, i + 1))), crop, g)
                keep(method.name, rec)
                nfe += rec.nfe
                empty = torch.empty(0)
                chosen.append(dataclasses.replace(rec, image=empty, std=empty, complex_image=empty,
                                                  baselines=MappingProxyType({}), mask=rec.mask.cpu(),
                                                  entropies=rec.entropies.cpu()))
        else:
            for start in range(sl.start, sl.stop, args.batch_size):
                idx = slice(start, min(start + args.batch_size, sl.stop))
                rec = method.reconstruct(torch.from_numpy(f.read_kspace(idx)), mask, crop, g)
                keep(rec.method, rec)
                nfe += rec.nfe
        volumes = {name: torch.cat(v).numpy() for name, v in recs.items()}
        std = torch.cat(stds).numpy() if stds else None
        targets = {key: f.read_target(key, sl) for key in f.targets}
        info = {"coils": f.num_coils if f.multicoil else 1, "voxel_size_mm": f.voxel_size_mm,
                "acquisition": f.attrs.get("acquisition")}

    rows = [method.name] + [b for b in BASELINES if b != method.name and b in volumes]
    scores = {key: {name: {"nmse": M.nmse(reference=t, estimate=volumes[name]),
                           "psnr": M.psnr(reference=t, estimate=volumes[name]),
                           "ssim": M.ssim(reference=t, estimate=volumes[name])} for name in rows}
              for key, t in targets.items()}
    requested = options["mask"].get("acceleration") if f.mask is None else None
    if active:  # one mask per slice: (S, W), and the lines in the order they were acquired: (S, budget)
        per_slice = [r.acceleration for r in chosen]
        achieved = {"achieved": float(np.mean(per_slice)), "per_slice": per_slice}
        mask_array = np.stack([r.mask.numpy() for r in chosen])
        mask_text = (f"{ACTIVE} {args.acceleration:g}x requested, {achieved['achieved']:.2f}x achieved (mean over "
                     f"slices; lines chosen per slice)")
    else:
        achieved, mask_array = {"achieved": acceleration_of(mask)}, _mask_columns(mask)
    record = {"input": str(path), "name": path.stem, "slices": [sl.start, sl.stop], "coils": info["coils"],
              "shape": list(volumes[method.name].shape), "mask": mask_text,
              "acceleration": {"requested": requested, **achieved},
              "method": method.describe(), "nfe": nfe, "metrics": scores, "warnings": warned, "options": options}
    record["seconds"] = round(time.perf_counter() - t0, 2)
    _write_outputs(path.stem, volumes[method.name], std, mask_array, targets, record, info, args,
                   active=chosen if active else None)
    return record


def _write_outputs(stem: str, rec: np.ndarray, std: np.ndarray | None, mask: np.ndarray, targets: dict,
                   record: dict, info: dict, args: argparse.Namespace, *, active: list | None = None) -> None:
    """Write one file's outputs into a staging folder in ``--output``, then move them into place
    together (:func:`_commit`), ``<stem>.metrics.json`` (the completion marker) last.

    ``active``: ``--sampler ads``'s per-slice results; then ``mask`` is ``(S, W)`` (the ``.h5``
    says so in its ``mask_layout`` attribute), the ``.h5`` gets ``order`` and
    ``<stem>.order.png`` is written (:func:`~diffinverse.pipelines.active.save_acquisition_order`)."""
    final = _output_paths(args.output, stem, args.format, std is not None, order=active is not None)
    stage = Path(tempfile.mkdtemp(dir=args.output, prefix=f".{stem}.partial-"))
    try:
        paths = _output_paths(stage, stem, args.format, std is not None, order=active is not None)
        if "h5" in paths:
            attrs = {"method": record["method"], "mask": record["mask"], "slices": record["slices"],
                     "source": record["input"], "acquisition": info["acquisition"] or "",
                     "acceleration": record["acceleration"]["achieved"], "diffinverse_version": __version__,
                     "options": json.dumps(record["options"], sort_keys=True)}
            extra = None
            if active is not None:
                attrs["mask_layout"] = "slices"
                extra = {"order": np.array([r.order for r in active], dtype=np.int32)}
            write_submission(paths["h5"], rec, std=std, mask=mask, attrs=attrs, extra=extra)
        if "order_png" in paths:
            save_acquisition_order(paths["order_png"], active, first_slice=record["slices"][0])
        if "nifti" in paths:
            save_nifti(paths["nifti"], rec, info["voxel_size_mm"])
            if std is not None:
                save_nifti(paths["nifti_std"], std, info["voxel_size_mm"])
        if "png" in paths:
            with atomic_output(paths["png"]) as tmp:
                save_preview(tmp, rec, targets, std, title=f"{stem}: {record['method']}, {record['mask']}")
        with atomic_output(paths["metrics"]) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        # --resume may redo a file whose earlier run stopped part-way: its partial outputs are replaced
        _commit(paths, final, overwrite=args.overwrite or args.resume)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _commit(staged: dict[str, Path], final: dict[str, Path], *, overwrite: bool) -> None:
    """Rename staged outputs to their places, the ``"metrics"`` marker last; all or none.

    An existing marker is removed first (the old set is then incomplete for ``--resume``); if a
    rename fails or is interrupted, the outputs already moved are removed again.
    """
    existing = [str(p) for p in final.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"outputs appeared while writing, not overwritten: {', '.join(existing)}")
    final["metrics"].unlink(missing_ok=True)
    placed: list[Path] = []
    try:
        for key in [k for k in final if k != "metrics"] + ["metrics"]:
            os.replace(staged[key], final[key])
            placed.append(final[key])
    except BaseException:
        for p in placed:
            p.unlink(missing_ok=True)
        raise


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


def _write_summary(out_dir: Path, done: list[dict], failed: dict[str, str], options: dict, *,
                   interrupted: list[str] | None = None) -> None:
    """``metrics.json``: the run's options, each file's record, the failures, the means, the
    achieved accelerations and, after Ctrl-C, the files not finished."""
    summary = {"options": options, "files": {r["name"]: r for r in done}, "failed": failed,
               "acceleration": {r["name"]: r.get("acceleration", {}).get("achieved") for r in done},
               "mean": _mean_metrics(done)}
    if interrupted is not None:
        summary["interrupted"] = interrupted
    with atomic_output(out_dir / "metrics.json", overwrite=True) as tmp:
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


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (:data:`EXIT_OK` 0, :data:`EXIT_FAILED` 1 some
    file failed, :data:`EXIT_CONFIG` 2 bad options, :data:`EXIT_INTERRUPTED` 130 Ctrl-C)."""
    args = build_parser().parse_args(argv)
    rank, world = _distributed()
    try:
        _apply_deprecated_options(args)
        _check_options(args)
        files = _input_files(args)
        device = _device(args.device)
        if args.output is None:
            if not args.demo:
                raise ConfigError("--output DIR is required")
            args.output = Path(tempfile.mkdtemp(prefix="diffinverse-demo-")) if rank == 0 else None
        if args.output is not None:
            _check_output_dir(args.output)
    except ConfigError as err:
        print(f"diffinverse-reconstruct: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
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
    except KeyboardInterrupt:  # outside a file's reconstruction (loading the prior, writing the summary)
        print(f"\ndiffinverse-reconstruct: interrupted (Ctrl-C); the files whose <name>.metrics.json is in "
              f"{args.output} are complete; rerun with --resume to finish", file=sys.stderr)
        return EXIT_INTERRUPTED
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
    method, options = None, None
    if not problems:
        try:
            method = _Method(args, device)
            options = run_options(args, method)
        except ConfigError as err:
            problems.append(str(err))
    if not problems and args.resume and not args.overwrite:
        problems += _resume_conflicts(files, args, options)
    problems = sorted({p for ps in _gather(problems, world) for p in ps})
    if problems:
        if rank == 0:
            for p in problems:
                print(f"diffinverse-reconstruct: error: {p}", file=sys.stderr)
        return EXIT_CONFIG

    done, skipped, failed = [], [], {}
    interrupted = None
    say = tqdm.write if world == 1 else (lambda s: None)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(files), desc="files", unit="file", disable=rank != 0 or None))
        for path in files:
            paths = _run_paths(args, args.output, path.stem)
            try:
                # --resume --overwrite: outputs made with other options are recomputed, not refused
                if args.resume and _is_complete(paths) and not _recorded_differences(paths, options):
                    record = json.loads(paths["metrics"].read_text())
                    skipped.append(path.stem)
                else:
                    record = reconstruct_file(path, args, method, options=options)
                    say(format_table(record))
                done.append(record)
            except KeyboardInterrupt:  # caught once: report, keep what is finished, exit 130
                interrupted = path
                break
            except Exception as err:  # noqa: BLE001 - any failure of one file is reported, the run goes on
                failed[path.stem] = f"{type(err).__name__}: {err}"
                say(f"FAILED {path}: {err}")
            bar.update(1)

    if interrupted is not None:
        left = files[files.index(interrupted) + 1:]
        print(f"\ndiffinverse-reconstruct: interrupted (Ctrl-C) during {interrupted.name}, whose outputs were not "
              f"written. Finished: {', '.join(r['name'] for r in done) or 'none'}"
              f"{f'; failed: {len(failed)}' if failed else ''}. Not started: "
              f"{', '.join(p.name for p in left) or 'none'}. Outputs in {args.output}; rerun with --resume to "
              f"finish.", file=sys.stderr)
        if world == 1:
            _write_summary(args.output, sorted(done, key=lambda r: r["name"]), failed, options,
                           interrupted=[interrupted.stem] + [p.stem for p in left])
        return EXIT_INTERRUPTED

    gathered = _gather((done, skipped, failed), world)
    if rank != 0:
        return EXIT_FAILED if any(g[2] for g in gathered) else EXIT_OK
    done = sorted((r for g in gathered for r in g[0]), key=lambda r: r["name"])
    skipped = [s for g in gathered for s in g[1]]
    failed = {k: v for g in gathered for k, v in g[2].items()}
    if world > 1:
        for r in done:
            print(format_table(r))
        for name, msg in failed.items():
            print(f"FAILED {name}: {msg}")
    _write_summary(args.output, done, failed, options)
    print(f"\n{len(done) - len(skipped)} reconstructed, {len(skipped)} skipped (complete, --resume), "
          f"{len(failed)} failed; outputs in {args.output}")
    for name, msg in failed.items():
        print(f"  failed: {name}: {msg}")
    for r in done:
        for w in r.get("warnings", []):
            print(f"  warning: {w}")
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
