"""Denoising score matching for a :class:`~diffinverse.priors.base.Prior` (EDM recipe).

Each step draws clean images ``x0`` from a data source, noise levels ``ln sigma ~ N(P_mean,
P_std^2)``, and minimises ``lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2`` with ``lambda(sigma)
= (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (Karras et al. 2022, Eq. 8 and Table 1), keeping
an exponential moving average (EMA) of the weights.

Training is resumable and bit-reproducible on CPU: a checkpoint (``checkpoint.safetensors`` in
``out_dir``, replaced atomically: temporary file, fsync, ``os.replace``) holds the model, EMA and
optimizer tensors and the random-generator state; step and configuration live in its JSON metadata
(no pickles). The final EMA weights are written with :func:`diffinverse.priors.checkpoints.save`
to ``out_dir/final.safetensors``. A loss log is appended to ``out_dir/loss.jsonl``.

Under ``torchrun`` (``WORLD_SIZE > 1``) the network is wrapped in DistributedDataParallel (NCCL on
GPUs, Gloo on CPU); each rank draws its own data and noise (seed ``seed + rank``), ``batch_size``
is per rank, and rank 0 writes the files.

Data sources are objects with ``sample(n, *, generator) -> (n, C, H, W)`` float32 (e.g.
:class:`diffinverse.datasets.images.RandomCrops`, :class:`diffinverse.datasets.brain.BrainSlices`,
:class:`diffinverse.datasets.real_images.RealImageCrops` for real JPEG/DICOM/NIfTI/``.mat`` images); the
command line mixes several by weight (:class:`Mixture`, ``--data SPEC@WEIGHT`` repeated).

References:
    Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based Generative
    Models", NeurIPS 2022 (training: Sec. 5, Table 1). Vincent, "A Connection Between Score
    Matching and Denoising Autoencoders", Neural Computation 2011.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from diffinverse._io import atomic_output
from diffinverse.priors.base import Prior, sigma_like

__all__ = ["DataSource", "edm_loss", "sample_sigma", "ema_update", "save_checkpoint", "load_checkpoint",
           "train", "main"]

CHECKPOINT = "checkpoint.safetensors"
FINAL = "final.safetensors"
LOSS_LOG = "loss.jsonl"


class DataSource(Protocol):
    """Anything with ``sample(n, *, generator) -> (n, C, H, W)`` float32 clean training images."""

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor: ...


def sample_sigma(n: int, *, P_mean: float, P_std: float, generator: torch.Generator) -> torch.Tensor:
    """Log-normal noise levels ``exp(P_mean + P_std * N(0, 1))``, float32 ``(n,)`` on the CPU."""
    return (P_mean + P_std * torch.randn(n, generator=generator)).exp()


def edm_loss(denoiser: nn.Module, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
             sigma_data: float) -> torch.Tensor:
    """EDM-weighted denoising loss ``mean(lambda(sigma) (D(x0 + sigma n, sigma) - x0)^2)``.

    Args:
        denoiser: called as ``denoiser(x, sigma)`` with ``x: (B, C, H, W)``, ``sigma: (B,)``.
        x0: clean images ``(B, C, H, W)``.
        sigma: ``(B,)`` noise levels (data units).
        noise: standard normal ``(B, C, H, W)``.
        sigma_data: data standard deviation in ``lambda``.

    Returns:
        scalar float32 loss (1 per pixel for the identity-plus-skip network at initialisation).
    """
    s = sigma_like(sigma, x0)
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    d = denoiser(x0 + s * noise, sigma)
    return (weight * (d.float() - x0) ** 2).mean()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every parameter; buffers are copied."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    e_params, m_params = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def _flat(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, step: int, config: dict) -> Path:
    """Write a training checkpoint atomically (temp file in the same folder, fsync, ``os.replace``).

    Tensors: ``model.*``, ``ema.*`` (state dicts), ``optim.<param id>.<key>`` (optimizer state),
    ``rng`` (generator state). Metadata (strings): ``step``, ``config`` (JSON), ``optim_groups`` (JSON
    param groups) and ``optim_scalars`` (JSON non-tensor per-parameter state).
    """
    from safetensors.torch import save

    tensors = {**_flat("model", model.state_dict()), **_flat("ema", ema.state_dict())}
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    tensors["rng"] = generator.get_state()
    meta = {"format": "diffinverse-train-checkpoint", "step": str(int(step)), "config": json.dumps(config),
            "optim_groups": json.dumps(opt["param_groups"]), "optim_scalars": json.dumps(scalars)}
    blob = save(tensors, metadata=meta)
    path = Path(path)
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_bytes(blob)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors only, no pickle).

    Returns:
        dict with ``step`` (int), ``config`` (dict), ``model``, ``ema`` (state dicts),
        ``optimizer`` (a state dict for ``Optimizer.load_state_dict``) and ``rng`` (uint8 tensor).

    Raises:
        ValueError: naming the file, if it is not a readable training checkpoint.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({err})") from None
    if meta.get("format") != "diffinverse-train-checkpoint" or "rng" not in tensors:
        raise ValueError(f"{path}: not a diffinverse training checkpoint (metadata {sorted(meta)})")
    state: dict[int, dict] = {}
    for pid, st in json.loads(meta["optim_scalars"]).items():
        state.setdefault(int(pid), {}).update(st)
    out = {"model": {}, "ema": {}}
    for k, v in tensors.items():
        head, _, rest = k.partition(".")
        if head in out:
            out[head][rest] = v
        elif head == "optim":
            pid, _, key = rest.partition(".")
            state.setdefault(int(pid), {})[key] = v
    out.update(step=int(meta["step"]), config=json.loads(meta["config"]), rng=tensors["rng"],
               optimizer={"state": state, "param_groups": json.loads(meta["optim_groups"])})
    return out


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _resolve_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def _prior_config(prior: Prior) -> dict:
    return {"class": type(prior).__name__, "kwargs": getattr(prior, "config", {})}


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (by a run that crashed before its next checkpoint)."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def _out_of_time(t0: float, limit: float | None, dev: torch.device, distributed: bool) -> bool:
    """Whether the time budget is spent; under torchrun rank 0's clock decides for every rank."""
    if limit is None:
        return False
    flag = torch.tensor([float(time.time() - t0 >= limit)], device=dev)
    if distributed:
        torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def train(prior: Prior, data: DataSource, *, steps: int, out_dir: str | os.PathLike, batch_size: int = 16,
          lr: float = 2e-4, warmup: int = 200, ema_decay: float = 0.999, checkpoint_every: int = 1000,
          log_every: int = 50, seed: int = 0, device: str | torch.device | None = None, resume: bool = True,
          P_mean: float | None = None, P_std: float = 1.2, grad_clip: float | None = 1.0,
          amp: bool | None = None, channels_last: bool | None = None, compile: bool = False,
          progress: bool = True, metadata: dict | None = None, time_limit_s: float | None = None,
          save_dtype: torch.dtype | None = None) -> Prior:
    """Train ``prior`` by denoising score matching; return a copy holding the EMA weights.

    Args:
        prior: the prior to train in place (e.g. :class:`~diffinverse.priors.unet.UNet`); it must
            have ``sigma_data`` and a JSON-able ``config``.
        data: source of clean images, ``data.sample(n, generator=g) -> (n, C, H, W)``.
        steps: total optimizer steps (counting those of a resumed run).
        out_dir: folder for ``checkpoint.safetensors``, ``final.safetensors`` and ``loss.jsonl``.
        batch_size: images per step (per rank under torchrun).
        lr: Adam learning rate, reached linearly over ``warmup`` steps.
        ema_decay: EMA decay per step; the effective decay is ``min(ema_decay, (1 + t) / (10 + t))``
            so that early averages are not dominated by the random initialisation.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        log_every: steps between loss-log lines (mean loss over those steps).
        seed: seeds the ``torch.Generator`` of data, noise levels and noise (``seed + rank``).
        device: ``"cpu"``, ``"cuda"``, ... ; ``None`` picks the GPU when present.
        resume: continue from ``out_dir/checkpoint.safetensors`` when it exists.
        P_mean, P_std: log-normal sigma distribution; ``P_mean`` defaults to ``-1.2 +
            ln(sigma_data / 0.5)`` (EDM's value, shifted to the data's scale).
        grad_clip: clip the gradient norm to this value (``None``: no clipping).
        amp: bfloat16 autocast; default on for CUDA.
        channels_last: channels-last memory format; default on for CUDA.
        compile: run the training forward pass through ``torch.compile``.
        progress: show a tqdm progress bar (rank 0).
        metadata: extra string-able entries for the final file's metadata (e.g. the data source).
        time_limit_s: stop after this many seconds of training (checked after each step, agreed
            across ranks), writing the checkpoint and the final file as at the last step; a later
            call with ``resume=True`` continues from there.
        save_dtype: dtype of the floating-point weights in ``final.safetensors`` (e.g.
            ``torch.float16`` for shipped priors); checkpoints always keep float32.

    Returns:
        a copy of ``prior`` in eval mode with the EMA weights (also saved to
        ``out_dir/final.safetensors``).

    Raises:
        ValueError: bad arguments, or a checkpoint whose configuration differs from ``prior``'s.
    """
    if steps < 1 or batch_size < 1 or checkpoint_every < 1 or log_every < 1:
        raise ValueError(f"steps, batch_size, checkpoint_every and log_every must be >= 1, got {steps}, "
                         f"{batch_size}, {checkpoint_every}, {log_every}")
    if not hasattr(prior, "sigma_data"):
        raise TypeError(f"prior must define sigma_data (e.g. a UNet), got {type(prior).__name__}")
    world, rank, local_rank = _dist_info()
    dev = _resolve_device(device, local_rank)
    distributed = world > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    amp = dev.type == "cuda" if amp is None else amp
    channels_last = dev.type == "cuda" if channels_last is None else channels_last
    mem = torch.channels_last if channels_last else torch.contiguous_format
    sigma_data = float(prior.sigma_data)
    P_mean = -1.2 + math.log(sigma_data / 0.5) if P_mean is None else P_mean

    out = Path(out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / CHECKPOINT, out / LOSS_LOG
    config = _prior_config(prior)

    prior.to(dev, memory_format=mem).train()
    ema = copy.deepcopy(prior).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    generator = torch.Generator().manual_seed(seed + rank)
    start = 0
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        if ck["config"] != config:
            raise ValueError(f"{ckpt_path}: checkpoint was written for {ck['config']}, but the prior is {config}")
        prior.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        optimizer.load_state_dict(ck["optimizer"])
        start = ck["step"]
        if rank == 0:
            generator.set_state(ck["rng"])
            _trim_log(log_path, start)
        else:  # only rank 0's generator state is saved; the others reseed deterministically
            generator.manual_seed(seed + rank + 1_000_003 * start)
    elif rank == 0 and log_path.exists():
        log_path.unlink()

    model: nn.Module = prior
    if distributed:
        model = nn.parallel.DistributedDataParallel(prior, device_ids=[dev.index] if dev.type == "cuda" else None)
    forward = torch.compile(model) if compile else model
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr)
    t0, running, count = time.time(), 0.0, 0
    for step in range(start, steps):
        x0 = data.sample(batch_size, generator=generator).to(torch.float32)
        sigma = sample_sigma(batch_size, P_mean=P_mean, P_std=P_std, generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x0, sigma, noise = (t.to(dev, non_blocking=True) for t in (x0, sigma, noise))
        if channels_last:
            x0, noise = x0.contiguous(memory_format=mem), noise.contiguous(memory_format=mem)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(warmup, 1))
        with autocast():
            loss = edm_loss(forward, x0, sigma, noise, sigma_data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(prior.parameters(), grad_clip)
        optimizer.step()
        ema_update(ema, prior, min(ema_decay, (1 + step) / (10 + step)))

        running += loss.item()
        count += 1
        done = step + 1
        if rank == 0 and (done % log_every == 0 or done == steps):
            with log_path.open("a") as f:
                f.write(json.dumps({"step": done, "loss": running / count, "lr": optimizer.param_groups[0]["lr"],
                                    "time_s": round(time.time() - t0, 3)}) + "\n")
            if bar is not None:
                bar.set_postfix(loss=f"{running / count:.4f}")
            running, count = 0.0, 0
        if bar is not None:
            bar.update(1)
        out_of_time = _out_of_time(t0, time_limit_s, dev, distributed)
        if rank == 0 and (done % checkpoint_every == 0 or done == steps or out_of_time):
            save_checkpoint(ckpt_path, model=prior, ema=ema, optimizer=optimizer, generator=generator, step=done,
                            config=config)
        if out_of_time:
            break
    if bar is not None:
        bar.close()

    ema = ema.to(memory_format=torch.contiguous_format)
    if rank == 0:
        from diffinverse.priors import checkpoints

        meta = {"steps": str(done if steps > start else start), "batch_size": str(batch_size * world), "seed": str(seed),
                "train_wall_time_s": f"{time.time() - t0:.1f}"}
        meta.update({k: str(v) for k, v in (metadata or {}).items()})
        checkpoints.save(ema, out / FINAL, metadata=meta, dtype=save_dtype)
    if distributed:
        torch.distributed.barrier()
    return ema


# ----------------------------------------------------------------------------- command line


class _Phantoms:
    """Synthetic CT slices (:mod:`diffinverse.datasets.ct_slices`) generated at ``size`` on
    ``device``, then randomly cropped to ``crop``."""

    def __init__(self, size: int, crop: int | None, device: str = "cpu"):
        self.size, self.crop, self.device = size, crop, torch.device(device)

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        from diffinverse.datasets.images import random_crop
        from diffinverse.datasets.ct_slices import synthetic_ct_slices

        g = generator
        if self.device.type != "cpu":  # a device generator seeded from the CPU one keeps runs reproducible
            g = torch.Generator(self.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        x = synthetic_ct_slices(n, self.size, generator=g)
        return x if self.crop is None or self.crop >= self.size else random_crop(x, self.crop, generator=generator)


class Mixture:
    """Batches drawn from several sources: each item comes from source ``i`` with probability
    ``weights[i]`` (all sources must give the same crop shape); the batch order is shuffled."""

    def __init__(self, sources: Sequence[DataSource], weights: Sequence[float]):
        if len(sources) != len(weights) or not sources or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per source, got {len(sources)} sources, weights {weights}")
        self.sources = list(sources)
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        counts = torch.bincount(torch.multinomial(self.weights, n, replacement=True, generator=generator),
                                minlength=len(self.sources))
        parts = [src.sample(int(k), generator=generator) for src, k in zip(self.sources, counts) if k > 0]
        shapes = {tuple(x.shape[1:]) for x in parts}
        if len(shapes) > 1:
            raise ValueError(f"mixture sources give different item shapes {sorted(shapes)}; use one --crop for all")
        x = torch.cat([x.to(parts[0].device) for x in parts])
        return x[torch.randperm(n, generator=generator).to(x.device)]


def _fastmri_images(path: Path) -> list[torch.Tensor]:
    """Complex ``(2, h, w)`` images of every slice of the fastMRI files under ``path``.

    Multi-coil slices are combined as ``rss * exp(i angle(sum_c x_c))`` (RSS magnitude, phase of
    the coil sum); every slice is centre-cropped to the file's reconstruction size and scaled so
    its magnitude's 99.5th percentile is 1.
    """
    import numpy as np

    from diffinverse.datasets.fastmri import FastMRIFile, center_crop

    files = sorted(path.glob("*.h5")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no .h5 files")
    images = []
    for fp in files:
        with FastMRIFile(fp) as f:
            if f.mask is not None:
                raise ValueError(f"{fp}: undersampled (has a mask); training needs fully sampled k-space")
            for s in range(f.num_slices):
                k = f.read_kspace(s)
                img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
                if f.multicoil:
                    img = np.sqrt((np.abs(img) ** 2).sum(0)) * np.exp(1j * np.angle(img.sum(0)))
                z = torch.from_numpy(np.ascontiguousarray(img)).to(torch.complex64)
                z = center_crop(z, f.recon_size)
                z = z / torch.quantile(z.abs().flatten(), 0.995).clamp_min(1e-12)
                images.append(torch.stack([z.real, z.imag]))
    return images


def _split_weight(spec: str) -> tuple[str, float | None]:
    """``"SPEC@WEIGHT"`` -> ``(SPEC, WEIGHT)``; ``(spec, None)`` when no ``@`` ends in a number."""
    head, sep, tail = spec.rpartition("@")
    if sep:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, None


def _build_data(spec: str, *, crop: int | None, image_size: int, axis: int, device: str,
                brain_template: str | None = None, brain_magnitude: float = 0.0,
                brain_noise: tuple[float, float] = (0.003, 0.06), real: dict | None = None) -> tuple[DataSource, dict]:
    """Parse one ``--data`` spec into a source and the prior settings it implies (channels, data_range).

    ``real``: keyword arguments for :class:`diffinverse.datasets.real_images.RealImages` (``real-mri:`` and
    ``real-ct:`` specs, training split) plus ``noise`` for :class:`~diffinverse.datasets.real_images.RealImageCrops`.
    """
    if spec == "mri-brain":
        from diffinverse.datasets.brain import BrainSlices

        source = BrainSlices("train", size=crop, device=device, template_file=brain_template,
                             magnitude_fraction=brain_magnitude, noise_range=brain_noise)
        return source, {"channels": 2, "data_range": (-1.0, 1.0)}
    if spec == "ct-ellipses":
        return _Phantoms(image_size, crop, device), {"channels": 1, "data_range": (0.0, 1.0)}
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise ValueError("--data must be mri-brain, ct-ellipses, folder:PATH, fastmri:PATH, nifti:PATH, real-mri:PATH "
                         f"or real-ct:PATH (each optionally @WEIGHT), got {spec!r}")
    if kind in ("real-mri", "real-ct"):
        from diffinverse.datasets.real_images import RealImageCrops, RealImages

        opts = dict(real or {})
        noise = opts.pop("noise", 0.0)
        mri = kind == "real-mri"
        images = RealImages(arg, split="train", ct=not mri, axis=axis, modality="MR" if mri else "CT", **opts)
        source = RealImageCrops(images, crop=crop, complex=mri, noise=noise)
        return source, {"channels": 2 if mri else 1, "data_range": (-1.0, 1.0) if mri else (0.0, 1.0)}
    from diffinverse.datasets.images import RandomCrops, load_folder

    if kind == "folder":
        images = load_folder(arg)
    elif kind == "fastmri":
        images = _fastmri_images(Path(arg))
    elif kind == "nifti":
        from diffinverse.datasets.volumes import nifti_slices

        slices = nifti_slices(arg, axis=axis)
        scale = torch.quantile(slices.flatten()[:: max(1, slices.numel() // 10_000_000)], 0.995).clamp_min(1e-12)
        images = list(slices / scale)
    else:
        raise ValueError(f"--data kind must be folder, fastmri, nifti, real-mri or real-ct, got {kind!r}")
    source = RandomCrops(images, crop=crop)
    return source, {"channels": images[0].shape[0], "data_range": None}


def main(argv: list[str] | None = None) -> int:
    """Console script ``diffinverse-train`` (also ``python -m diffinverse.priors.train``)."""
    p = argparse.ArgumentParser(prog="diffinverse-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, action="append",
                   help="mri-brain | ct-ellipses | folder:PATH | fastmri:PATH | nifti:PATH | real-mri:PATH | "
                        "real-ct:PATH, optionally SPEC@WEIGHT; repeat to mix sources by weight (e.g. --data "
                        "real-mri:DIR@0.7 --data mri-brain@0.3). real-*: JPEG/PNG, DICOM, NIfTI and .mat files under "
                        "PATH, training split by patient (diffinverse.datasets.real_images)")
    p.add_argument("--out", required=True, help="output folder (checkpoint, final.safetensors, loss.jsonl)")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--crop", type=int, default=64, help="training crop side (0: whole images)")
    p.add_argument("--image-size", type=int, default=256, help="phantom size before cropping (ct-ellipses)")
    p.add_argument("--axis", type=int, default=2, help="slice axis for nifti:PATH and real-* NIfTI/.mat files")
    p.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="real-*: fraction of patients (numbered JPEGs: of 100-number blocks) held out from training")
    p.add_argument("--mat-key", default=None, help="real-*: .mat variable (default: the only 2-D/3-D numeric one)")
    p.add_argument("--jpeg-scale", type=int, default=2,
                   help="real-*: JPEG/PNG downsampling factor (2: half resolution, against JPEG blocking)")
    p.add_argument("--jpeg-blur", type=float, default=0.0, help="real-*: Gaussian blur of JPEG/PNG images (pixels)")
    p.add_argument("--real-max-side", type=int, default=0,
                   help="real-*: area-average larger images by an integer factor to at most this side (0: keep)")
    p.add_argument("--real-noise", type=float, default=0.0,
                   help="real-*: white noise std drawn uniformly in [0, this] per image (prior units)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--data-device", default="cpu", help="device generating mri-brain / ct-ellipses data (cpu or cuda)")
    p.add_argument("--brain-template", default=None,
                   help="tissue-map file from diffinverse.datasets.brain.save_template (where nilearn is absent)")
    p.add_argument("--brain-magnitude", type=float, default=0.0,
                   help="mri-brain: fraction of slices that are magnitude images (Rician noise, zero phase)")
    p.add_argument("--brain-noise", default="0.003,0.06",
                   help="mri-brain: low,high of the image noise's standard deviation (log-uniform)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--channel-mult", default="1,2,2", help="comma-separated multipliers per level")
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument("--sigma-data", type=float, default=None, help="default: measured on 256 training images")
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--init", default=None,
                   help="start from this prior's weights (shipped name or .safetensors; fine-tuning): its network "
                        "and sigma_data replace --base-channels, --channel-mult, --num-res-blocks, --sigma-*")
    p.add_argument("--mix-natural", type=float, default=0.0,
                   help="fraction of each batch drawn from natural-image crops (datasets.textures; needs --crop)")
    p.add_argument("--p-mean", type=float, default=None,
                   help="mean of ln(sigma) during training (default: -1.2 + ln(sigma_data / 0.5), EDM's)")
    p.add_argument("--p-std", type=float, default=1.2, help="std of ln(sigma) during training")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on GPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward pass")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop after this many seconds (checkpoint and final file written; resumable)")
    p.add_argument("--save-fp16", action="store_true", help="store the final weights in float16 (shipped priors)")
    a = p.parse_args(argv)

    from diffinverse.priors.unet import UNet

    crop = a.crop or None
    try:
        brain_noise = tuple(float(v) for v in a.brain_noise.split(","))
    except ValueError:
        brain_noise = ()
    if len(brain_noise) != 2:
        raise ValueError(f"--brain-noise must be two comma-separated numbers, got {a.brain_noise!r}")
    specs = [_split_weight(s) for s in a.data]
    if len(specs) > 1 and any(w is None for _, w in specs):
        raise ValueError(f"several --data sources need a weight each (SPEC@WEIGHT), got {a.data}")
    real = {"heldout_fraction": a.heldout_fraction, "mat_key": a.mat_key, "jpeg_scale": a.jpeg_scale,
            "jpeg_blur": a.jpeg_blur, "max_side": a.real_max_side, "noise": a.real_noise}
    built = [_build_data(s, crop=crop, image_size=a.image_size, axis=a.axis, device=a.data_device,
                         brain_template=a.brain_template, brain_magnitude=a.brain_magnitude,
                         brain_noise=brain_noise, real=real) for s, _ in specs]
    channels = [implied_["channels"] for _, implied_ in built]
    if len(set(channels)) > 1:
        listing = ", ".join(f"{s}: {c}" for (s, _), c in zip(specs, channels))
        raise ValueError(f"--data sources give different channel counts ({listing})")
    if len(built) == 1:
        data, implied = built[0]
    else:
        if crop is None:
            raise ValueError("mixing --data sources needs --crop > 0 (one item shape for all)")
        data = Mixture([b[0] for b in built], [w for _, w in specs])
        ranges = [b[1]["data_range"] for b in built if b[1]["data_range"] is not None]
        implied = {"channels": built[0][1]["channels"], "data_range": ranges[0] if ranges else None}
    if a.mix_natural:
        if not 0 < a.mix_natural < 1 or crop is None:
            raise ValueError(f"--mix-natural must lie in (0, 1) and needs --crop, got {a.mix_natural}, crop {crop}")
        from diffinverse.datasets.textures import NaturalImageCrops

        natural = NaturalImageCrops(crop, channels=implied["channels"])
        data = Mixture([data, natural], [1 - a.mix_natural, a.mix_natural])
    if a.init:
        from diffinverse.priors.checkpoints import load

        prior = load(a.init)
        if not isinstance(prior, UNet) or prior.channels != implied["channels"]:
            raise ValueError(f"--init {a.init}: need a {implied['channels']}-channel UNet for --data {a.data}, "
                             f"got {type(prior).__name__} with {prior.channels} channels")
    else:
        probe = data.sample(256, generator=torch.Generator().manual_seed(a.seed + 7919)).float()
        sigma_data = a.sigma_data or round(float(probe.std()), 3)
        data_range = implied["data_range"] or (round(float(probe.min()), 3), round(float(probe.max()), 3))
        # Module initialisation draws from the global RNG: fork it so the caller's state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(a.seed)
            prior = UNet(channels=implied["channels"], base_channels=a.base_channels,
                         channel_mult=tuple(int(m) for m in a.channel_mult.split(",")),
                         num_res_blocks=a.num_res_blocks, sigma_data=sigma_data, sigma_max=a.sigma_max,
                         data_range=data_range)
    metadata = {"data": " ".join(a.data), "crop": crop, "mix_natural": a.mix_natural, "init": a.init}
    if any(s.startswith("real-") for s, _ in specs):
        metadata.update(heldout_fraction=a.heldout_fraction, jpeg_scale=a.jpeg_scale, jpeg_blur=a.jpeg_blur,
                        real_max_side=a.real_max_side, real_noise=a.real_noise, axis=a.axis)
    if any(s == "mri-brain" for s, _ in specs):
        metadata.update(brain_magnitude=a.brain_magnitude, brain_noise=list(brain_noise))
    train(prior, data, steps=a.steps, out_dir=a.out, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup,
          ema_decay=a.ema_decay, checkpoint_every=a.checkpoint_every, log_every=a.log_every, seed=a.seed,
          device=a.device, resume=not a.no_resume, amp=False if a.no_amp else None, compile=a.compile,
          progress=not a.no_progress, metadata=metadata, time_limit_s=a.time_limit,
          save_dtype=torch.float16 if a.save_fp16 else None, P_mean=a.p_mean, P_std=a.p_std)
    if int(os.environ.get("RANK", "0")) == 0:
        print(Path(a.out) / FINAL)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
