"""Training a :class:`~diffinverse.priors.latent.ConvLatentPrior`: the autoencoder, then a UNet on its latents.

Two stages on one pool of clean images (``--pool`` whole slices of
:class:`~diffinverse.datasets.brain.BrainSlices` ``("train")``, the data of ``mri-brain``, drawn once
so that the CPU spends its time on the networks rather than on synthesising slices):

1. **Autoencoder**: random crops ``x``, ``z = Enc(x)``, loss ``||Dec(z + s n) - x||^2 + beta ||z||^2``
   (means over elements): a deterministic autoencoder whose decoder is trained to tolerate latent
   perturbations of size ``s`` (``--latent-noise``), with the small penalty ``beta`` keeping the
   latent's scale from growing to make that noise negligible (a fixed-variance VAE, Rombach et al.'s
   KL-regularised autoencoder with the posterior variance fixed). Adam, EMA of the weights.
2. **Latent denoiser**: the EMA encoder maps every pool slice to its latent once; random latent crops
   train a :class:`~diffinverse.priors.unet.UNet` by :func:`diffinverse.priors.train.train` (EDM
   denoising score matching, ``sigma_data`` measured on the latents).

Both stages checkpoint to ``OUT/ae`` and ``OUT/unet`` (safetensors, resumable) and stop at their
step count or time limit; the result, ``OUT/final.safetensors``, is written with
:func:`diffinverse.priors.checkpoints.save` and loads with ``diffinverse.priors.load``.

Example (the shipped ``mri-brain-latent``; see its model card)::

    OMP_NUM_THREADS=1 python -m diffinverse.priors.train_latent --out runs/latent --ae-time 900 \\
        --unet-time 1500 --save-fp16

References:
    Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022.
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

from diffinverse.priors.latent import ConvLatentPrior
from diffinverse.priors.train import ema_update, load_checkpoint, save_checkpoint, train

__all__ = ["PoolCrops", "brain_pool", "encode_pool", "train_autoencoder", "main"]


def brain_pool(n: int, *, seed: int, magnitude_fraction: float = 0.4,
               noise_range: tuple[float, float] = (0.003, 0.1), batch: int = 16) -> torch.Tensor:
    """``(n, 2, 256, 256)`` whole training slices of ``BrainSlices("train")`` (held-out slab excluded)."""
    from tqdm.auto import tqdm

    from diffinverse.datasets.brain import BrainSlices

    data = BrainSlices("train", magnitude_fraction=magnitude_fraction, noise_range=noise_range,
                       generator=torch.Generator().manual_seed(seed))
    parts = [data.sample(min(batch, n - i)) for i in tqdm(range(0, n, batch), desc="pool")]
    return torch.cat(parts)


class PoolCrops:
    """Random square crops (and left-right flips) of a fixed pool ``(N, C, H, W)``: a data source.

    ``align`` snaps crop corners to multiples of it (crops of latents stay on the encoder's grid).
    """

    def __init__(self, pool: torch.Tensor, crop: int, *, flip: bool = True, align: int = 1):
        if pool.ndim != 4 or crop > min(pool.shape[-2:]):
            raise ValueError(f"pool must be (N, C, H, W) with H, W >= crop={crop}, got {tuple(pool.shape)}")
        self.pool, self.crop, self.flip, self.align = pool, int(crop), flip, int(align)

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        N, _, H, W = self.pool.shape
        idx = torch.randint(0, N, (n,), generator=generator)
        top = torch.randint(0, (H - self.crop) // self.align + 1, (n,), generator=generator) * self.align
        left = torch.randint(0, (W - self.crop) // self.align + 1, (n,), generator=generator) * self.align
        flips = torch.rand(n, generator=generator) < 0.5
        out = []
        for i, t, l, f in zip(idx.tolist(), top.tolist(), left.tolist(), flips.tolist()):
            x = self.pool[i, :, t:t + self.crop, l:l + self.crop]
            out.append(x.flip(-1) if self.flip and f else x)
        return torch.stack(out)


def train_autoencoder(prior: ConvLatentPrior, data: PoolCrops, *, steps: int, out_dir: str | Path,
                      batch_size: int = 16, lr: float = 1e-3, latent_noise: float = 0.1, beta: float = 1e-3,
                      ema_decay: float = 0.995, seed: int = 0, time_limit_s: float | None = None,
                      checkpoint_every: int = 200, log_every: int = 50) -> None:
    """Stage 1: train ``prior.encoder`` and ``prior.decoder`` in place; they end holding the EMA
    weights. Resumes from ``out_dir/checkpoint.safetensors``; logs to ``out_dir/loss.jsonl``."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, log = out / "checkpoint.safetensors", out / "loss.jsonl"
    model = nn.ModuleDict({"encoder": prior.encoder, "decoder": prior.decoder}).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    config = {"stage": "autoencoder", "prior": prior.config, "latent_noise": latent_noise, "beta": beta}
    start = 0
    if ckpt.exists():
        ck = load_checkpoint(ckpt)
        if ck["config"] != config:
            raise ValueError(f"{ckpt}: written for {ck['config']}, not {config}")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        g.set_state(ck["rng"])
        start = ck["step"]
    t0, running, count, done = time.time(), 0.0, 0, start
    bar = tqdm(total=steps, initial=start, desc="autoencoder")
    for step in range(start, steps):
        x = data.sample(batch_size, generator=g)
        z = model["encoder"](x)
        noise = torch.randn(z.shape, generator=g)
        rec = model["decoder"](z + latent_noise * noise)
        loss = (rec - x).pow(2).mean() + beta * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
        running, count, done = running + loss.item(), count + 1, step + 1
        bar.update(1)
        if done % log_every == 0:
            with log.open("a") as f:
                f.write(json.dumps({"step": done, "loss": running / count, "time_s": round(time.time() - t0, 1)}) + "\n")
            running, count = 0.0, 0
        late = time_limit_s is not None and time.time() - t0 >= time_limit_s
        if done % checkpoint_every == 0 or done == steps or late:
            save_checkpoint(ckpt, model=model, ema=ema, optimizer=opt, generator=g, step=done, config=config)
        if late:
            break
    bar.close()
    model.load_state_dict(ema.state_dict())
    model.eval().requires_grad_(False)


@torch.no_grad()
def encode_pool(prior: ConvLatentPrior, pool: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Latents of every pool image, ``(N, latent_channels, H / f, W / f)``."""
    return torch.cat([prior.encode(pool[i:i + batch]) for i in range(0, pool.shape[0], batch)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffinverse.priors.train_latent",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--pool", type=int, default=256, help="whole training slices drawn once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ae-base-channels", type=int, default=16)
    p.add_argument("--ae-channel-mult", default="1,2,2", help="levels of the autoencoder; factor 2^(levels-1)")
    p.add_argument("--latent-channels", type=int, default=2)
    p.add_argument("--ae-steps", type=int, default=100_000)
    p.add_argument("--ae-time", type=float, default=900.0, help="seconds")
    p.add_argument("--ae-crop", type=int, default=32)
    p.add_argument("--ae-batch", type=int, default=16)
    p.add_argument("--ae-lr", type=float, default=1e-3)
    p.add_argument("--latent-noise", type=float, default=0.1)
    p.add_argument("--beta", type=float, default=1e-3)
    p.add_argument("--unet-base-channels", type=int, default=32)
    p.add_argument("--unet-channel-mult", default="1,2,2")
    p.add_argument("--unet-steps", type=int, default=100_000)
    p.add_argument("--unet-time", type=float, default=1500.0, help="seconds")
    p.add_argument("--unet-crop", type=int, default=16, help="latent crop side")
    p.add_argument("--unet-batch", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=4e-4)
    p.add_argument("--save-fp16", action="store_true")
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    pool = brain_pool(a.pool, seed=a.seed)
    mult = [int(v) for v in a.ae_channel_mult.split(",")]
    unet_kwargs = {"base_channels": a.unet_base_channels,
                   "channel_mult": [int(v) for v in a.unet_channel_mult.split(",")], "num_res_blocks": 2}
    prior = ConvLatentPrior(channels=2, latent_channels=a.latent_channels, base_channels=a.ae_base_channels,
                            channel_mult=mult, denoiser=unet_kwargs)
    t0 = time.time()
    train_autoencoder(prior, PoolCrops(pool, a.ae_crop), steps=a.ae_steps, out_dir=out / "ae",
                      batch_size=a.ae_batch, lr=a.ae_lr, latent_noise=a.latent_noise, beta=a.beta, seed=a.seed,
                      time_limit_s=a.ae_time)
    t_ae = time.time() - t0
    latents = encode_pool(prior, pool)
    sigma_data = float(latents.std())
    from diffinverse.priors.unet import UNet

    unet = UNet(channels=a.latent_channels, sigma_data=sigma_data, **unet_kwargs)
    ema = train(unet, PoolCrops(latents, a.unet_crop, flip=False), steps=a.unet_steps, out_dir=out / "unet",
                batch_size=a.unet_batch, lr=a.unet_lr, seed=a.seed, device="cpu", time_limit_s=a.unet_time,
                checkpoint_every=200, log_every=50)
    final = ConvLatentPrior(**{**prior.config, "denoiser": ema.config})
    final.encoder.load_state_dict(prior.encoder.state_dict())
    final.decoder.load_state_dict(prior.decoder.state_dict())
    final.latent_denoiser.load_state_dict(ema.state_dict())
    from diffinverse.priors.checkpoints import save

    meta = {"data": "BrainSlices('train'), magnitude_fraction 0.4, noise 0.003-0.1", "pool": a.pool,
            "ae_train_s": round(t_ae, 1), "total_train_s": round(time.time() - t0, 1), "argv": vars(a)}
    save(final.eval(), out / "final.safetensors", metadata=meta, dtype=torch.float16 if a.save_fp16 else None)
    print(f"wrote {out / 'final.safetensors'}: autoencoder {t_ae:.0f} s, total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
