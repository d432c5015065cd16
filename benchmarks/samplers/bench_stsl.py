"""STSL on the shipped latent prior: the prior's own limits, then the samplers side by side.

Two commands:

``prior``: the ``mri-brain-latent`` model card's numbers. Autoencoder reconstruction PSNR
``Dec(Enc(x))`` on held-out template slices (``BrainSlices("test")``, whole 256 x 256) and on
held-out real MR images (``diffinverse.datasets.real_images.RealImages(split="heldout")`` of the
MR folders of ``../shared/data/train``, magnitudes as real images with zero phase, cropped to a
multiple of 4), and held-out denoising PSNR in image space, ``Dec(D(Enc(x) + s n, s))`` against
``x``, next to ``Dec(Enc(x) + s n)`` (no denoiser). PSNR on magnitudes, the reference's peak as
data range (:func:`diffinverse.metrics.psnr`).

``samplers``: one task of :mod:`diffinverse.tasks` (its held-out images, operator and noise), rows
TV, ``A_dagger``, pixel DPS and RED-Diff with the task's frozen settings on the pixel prior, and
STSL / first-order latent variants on the latent prior (or, with ``--pixel``, on the task's pixel
prior through the identity form). PSNR / SSIM (:func:`diffinverse.tasks.image_scores`), network
forward and backward passes, wall time (this machine, one thread). Writes JSON.

``gmm``: the exact-posterior check of ``tests/test_stsl.py`` (linear decoder, mixture prior on the
latent) over several seeds, for the margins that test asserts.

Examples::

    OMP_NUM_THREADS=1 python benchmarks/samplers/bench_stsl.py prior --prior mri-brain-latent \\
        --out benchmarks/results/stsl_prior_eval.json
    OMP_NUM_THREADS=1 python benchmarks/samplers/bench_stsl.py samplers --task mri_1coil_4x_random \\
        --n 3 --out benchmarks/results/stsl_mri_1coil_4x_random.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffinverse._io import atomic_output
from diffinverse.imaging import magnitude
from diffinverse.metrics import psnr
from diffinverse.priors import load
from diffinverse.samplers import STSL
from diffinverse.tasks import frozen_prior, get_task, image_scores

REAL_MR = ("mri_brain_figshare_cheng2017_jpg", "mri_brain_ixi_small_2mm", "mri_brain_tcga_lgg_FG-6692")


def _psnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return psnr(reference=magnitude(x), estimate=magnitude(x_hat))


def _crop4(x: torch.Tensor, f: int) -> torch.Tensor:
    h, w = x.shape[-2] // f * f, x.shape[-1] // f * f
    return x[..., :h, :w]


def held_out_real(root: Path, per_folder: int) -> list[torch.Tensor]:
    """Up to ``per_folder`` held-out images per MR folder, as ``(1, 2, H, W)`` complex channels
    (a folder whose patients all fall in the training split is skipped, with a note)."""
    from diffinverse.datasets.real_images import RealImages

    out = []
    for name in REAL_MR:
        try:
            images = RealImages(root / name, split="heldout", modality="MR")
        except FileNotFoundError as e:
            print(f"skipped: {e}")
            continue
        step = max(1, len(images) // per_folder)
        for i in range(0, len(images), step)[:per_folder]:
            x = images[i]
            if x.shape[0] == 1:
                x = torch.cat([x, torch.zeros_like(x)])
            out.append(x[None])
    return out


@torch.no_grad()
def eval_prior(args) -> dict:
    prior = load(args.prior)
    f = prior.factor
    g = torch.Generator().manual_seed(1)
    from diffinverse.datasets.brain import BrainSlices

    template = BrainSlices("test", generator=torch.Generator().manual_seed(1)).sample(args.n)
    real = [_crop4(x, f) for x in held_out_real(Path(args.data), args.per_folder)]
    res = {"prior": str(args.prior), "n_template": args.n, "n_real": len(real), "autoencoder": {}, "denoising": {}}
    res["autoencoder"]["template"] = _psnr(template, prior.decode(prior.encode(template)))
    res["autoencoder"]["real"] = sum(_psnr(x, prior.decode(prior.encode(x))) for x in real) / len(real)
    res["autoencoder"]["real_each"] = [_psnr(x, prior.decode(prior.encode(x))) for x in real]
    z = prior.encode(template)
    res["latent_std"] = float(z.std())
    for s in args.sigmas:
        noisy = z + s * torch.randn(z.shape, generator=g)
        res["denoising"][str(s)] = {"denoised": _psnr(template, prior.decode(prior(noisy, s))),
                                    "noisy_decoded": _psnr(template, prior.decode(noisy))}
    return res


STSL_ROWS = {
    "first-order K=1, 200 steps": dict(second_order=False, inner_steps=1, num_steps=200),
    "STSL K=5 eta=0.02, 50 steps": dict(inner_steps=5, eta=0.02, num_steps=50),
    "STSL K=5 eta=0, 50 steps": dict(inner_steps=5, eta=0.0, num_steps=50),
    "STSL K=1 eta=0.02, 50 steps": dict(inner_steps=1, eta=0.02, num_steps=50),
    "STSL K=3 eta=0.02, 50 steps": dict(inner_steps=3, eta=0.02, num_steps=50),
    "first-order K=1, 50 steps": dict(second_order=False, inner_steps=1, num_steps=50),
}


def _row(x, x_hat, t0, forward, backward) -> dict:
    sc = image_scores(x, x_hat)
    return {"psnr": sum(p for p, _ in sc) / len(sc), "ssim": sum(s for _, s in sc) / len(sc),
            "psnr_each": [p for p, _ in sc], "forward": forward, "backward": backward,
            "wall_s": round(time.time() - t0, 2)}


def bench_samplers(args) -> dict:
    task = get_task(args.task)
    x = None
    if args.native_crops:
        # the central 64 x 64 of held-out slices at their native 1 mm pixels (the autoencoder's
        # training resolution), instead of the task's whole head resampled to 64 x 64
        from diffinverse.datasets.brain import BrainSlices

        c = (256 - args.size) // 2
        x = BrainSlices("test", generator=torch.Generator().manual_seed(args.seed)).sample(args.n)
        x = x[..., c:c + args.size, c:c + args.size].contiguous()
    p = task.problem(n=args.n, size=args.size, seed=args.seed, x=x)
    x, y, physics = p.x, p.y, p.physics
    rows = {}
    t0 = time.time()
    rows["TV"] = _row(x, task.tv(y, physics), t0, 0, 0)
    t0 = time.time()
    rows[f"A_dagger ({task.adjoint_name})"] = _row(x, physics.A_dagger(y), t0, 0, 0)
    x_init = task.warm_start(y, physics)
    pixel = frozen_prior(task.prior)
    for method in ("dps", "reddiff"):
        if method in task.settings and not args.skip_pixel:
            t0 = time.time()
            out, nfe = task.run(method, pixel, y, physics, x_init)
            rows[f"pixel {method} (task settings)"] = _row(x, out, t0, nfe, nfe if method == "dps" else 0)
    prior = pixel if args.pixel else load(args.prior)
    with torch.no_grad():
        if not args.pixel:
            rows["autoencoder cap Dec(Enc(x))"] = _row(x, prior.decode(prior.encode(x)), time.time(), 0, 0)
    for name, kw in STSL_ROWS.items():
        if args.rows and name not in args.rows:
            continue
        kw = {**kw, "zeta": args.zeta, "probe": args.probe, "squared_norm": args.squared_norm}
        sampler = STSL(prior, sigma_max=args.sigma_start, progress=False, **kw)
        t0 = time.time()
        out = sampler(y, physics, generator=torch.Generator().manual_seed(1), x_init=x_init,
                      sigma_start=float(sampler.sigmas[0]))   # the whole grid, from the warm start
        rows[name] = _row(x, out, t0, sampler.last_forward, sampler.last_backward)
        print(name, {k: v for k, v in rows[name].items() if k != "psnr_each"}, flush=True)
    return {"task": args.task, "n": args.n, "seed": args.seed, "size": args.size, "native_crops": args.native_crops, "prior": "pixel " + task.prior if args.pixel else
            str(args.prior), "zeta": args.zeta, "sigma_start": args.sigma_start, "probe": args.probe,
            "squared_norm": args.squared_norm, "rows": rows}


def gmm_margins(args) -> dict:
    """The exact-posterior check of ``tests/test_stsl.py`` over several seeds: the test's own
    problem and distances (imported from it, so the numbers are for exactly what it asserts)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from test_stsl import _linear_latent, _posterior_distances

    prior, zp = _linear_latent()
    kw = dict(zeta=0.1, inner_steps=5, num_steps=args.steps, squared_norm=True, progress=False)
    rows = []
    for seed in args.seeds:
        first = _posterior_distances(prior, zp, STSL(prior, second_order=False, **kw), seed=seed)
        paper = _posterior_distances(prior, zp, STSL(prior, eta=0.02, **kw), seed=seed)
        rows.append({"seed": seed, "first_order": first, "stsl_eta_0.02": paper})
        print(rows[-1], flush=True)
    return {"steps": args.steps, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prior")
    a.add_argument("--prior", default="mri-brain-latent")
    a.add_argument("--n", type=int, default=8)
    a.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data" / "train"))
    a.add_argument("--per-folder", type=int, default=4)
    a.add_argument("--sigmas", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    a.add_argument("--out", required=True)
    b = sub.add_parser("samplers")
    b.add_argument("--task", default="mri_1coil_4x_random")
    b.add_argument("--prior", default="mri-brain-latent")
    b.add_argument("--pixel", action="store_true", help="STSL on the task's pixel prior (identity form)")
    b.add_argument("--n", type=int, default=3)
    b.add_argument("--size", type=int, default=64)
    b.add_argument("--native-crops", action="store_true",
                   help="MRI: central crops of held-out slices at 1 mm instead of the task's resampled heads")
    b.add_argument("--seed", type=int, default=0, help="task seed (tasks.TUNING_SEED = 1000 for tuning)")
    b.add_argument("--zeta", type=float, default=1.0)
    b.add_argument("--sigma-start", type=float, default=0.5, help="warm-start level and top of the grid")
    b.add_argument("--probe", default="paper")
    b.add_argument("--squared-norm", action="store_true")
    b.add_argument("--skip-pixel", action="store_true")
    b.add_argument("--rows", nargs="*", default=None)
    b.add_argument("--out", required=True)
    c = sub.add_parser("gmm")
    c.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    c.add_argument("--steps", type=int, default=15)
    c.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    res = {"prior": eval_prior, "samplers": bench_samplers, "gmm": gmm_margins}[args.cmd](args)
    res["command"] = "python benchmarks/samplers/bench_stsl.py " + " ".join(argv if argv is not None else
                                                                              __import__("sys").argv[1:])
    with atomic_output(Path(args.out), overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
