"""End to end with the shipped priors on held-out data: DPS and RED-Diff beat the classical baselines.

For every task, over ``N_IMAGES`` held-out images of ``SIZE`` x ``SIZE`` pixels, the mean PSNR and
the mean SSIM of DPS and of RED-Diff must each exceed those of the task's classical baseline by
the margins in ``CONFIG`` (fastMRI conventions from :mod:`diffinverse.metrics`; complex MRI images
are compared as magnitudes). Baselines: zero-filled (single-coil MRI) and SENSE-CG (multi-coil MRI);
for CT both FBP and TV (the samplers must beat the better of the two, which is TV here); TV for
deblurring, box inpainting and 4x super-resolution.

Data:
  * MRI ("mri-brain"): held-out slices ``BrainSlices("test")`` (a slab of the template never seen in
    training), whole 256 x 256 slices resampled to ``SIZE`` by keeping the central k-space (a
    lower-resolution acquisition of the whole head, so the field of view and the air around the
    head are kept), rescaled to the prior's range (magnitude 99.5th percentile 1). k-space noise
    of std 0.01 on the sampled entries; single-coil and 8 simulated birdcage coils (sigpy), each at
    4x and 8x with random and with equispaced lines; 8 % / 4 % centre lines at 4x / 8x.
    The first four cases were tuned as below; 8-coil 8x equispaced was added later with the 8-coil
    4x settings unchanged (on the tuning images: SENSE 19.21 / 0.443, DPS 21.03 / 0.566, RED-Diff
    20.39 / 0.507), and the other four after that, starting from the settings of the same coil
    count and acceleration, kept where they won clearly on the tuning images and retuned otherwise
    (``benchmarks/tune_end_to_end.py``): at 8x random both samplers gained only ~0.3 dB with them;
    a grid over ``zeta`` x ``sigma_start`` x ``num_steps`` (DPS) and ``lr`` x ``sigma_start`` x
    ``num_steps`` (RED-Diff) gave DPS 16.87 / 0.355 and 17.68 / 0.441 (1 / 8 coils; zero-filled
    16.41 / 0.255, SENSE 17.26 / 0.301) and RED-Diff 16.99 / 0.339 and 17.95 / 0.392, so smaller
    margins there. RED-Diff at 8-coil 4x equispaced was retuned over ``lam`` x ``lr`` x
    ``sigma_start`` x ``num_steps`` (its SSIM gain was 0.011 on the test images): 25.72 / 0.688
    against SENSE 23.17 / 0.622.
  * CT, deblurring, inpainting, super-resolution ("ct-ellipses"): fresh synthetic CT slices in
    [0, 1] (``synthetic_ct_slices``, the prior's training generator, with a seed it never used). CT: parallel beam, 60 and 30 views over 180 degrees, torch backend, Gaussian
    sinogram noise of 1 % of the sinogram's maximum. Deblurring: Gaussian kernel std 2 px,
    reflect padding; inpainting: a missing ``SIZE/4`` square box; super-resolution: bicubic 4x;
    Gaussian noise std 0.01 on all three.

Warm starts (Come-Closer-Diffuse-Faster) are what make both samplers good at ~10-20 network
evaluations: MRI starts from the zero-filled / SENSE image at ``sigma_start`` 0.3-0.5; the other
tasks start from the TV reconstruction at ``sigma_start`` 0.05 (the samplers then refine TV).
DPS guides with the squared residual norm (``squared_norm=True``), whose natural step is
``zeta ~ 1 / ||A||^2`` (one data-consistency step per iteration), hence the tiny CT values
(``||A||^2`` ~ 3700 / 1850 for 60 / 30 views at 64 px, ~ 0.066 for 4x super-resolution).

Hyper-parameters (TV ``lam``; DPS ``zeta``, ``num_steps``, ``sigma_start``; RED-Diff ``lam``,
``lr``, ``num_steps``, ``sigma_start``) were tuned once, by a small grid search on 4 other images
per task (``seed=1000``, not the test seed), then frozen here; the margins are about half the
gains seen while tuning. The tuning ran with the first ``ct-ellipses`` prior on plain ellipse
phantoms; the shipped prior was then retrained on randomised CT slices (its model card), and the
frozen values and margins were kept unchanged for it, except for 4x super-resolution (both
samplers) and RED-Diff box inpainting: these lost to TV in SSIM with the old settings (from
``sigma_start`` 0.05) and were retuned for the shipped prior on the same tuning images, over
``zeta`` x ``sigma_start`` (DPS) and ``lam`` x ``lr`` x ``sigma_start`` x ``num_steps`` (RED-Diff)
grids. Tuning-image results (TV: 25.15 dB / 0.786 for super-resolution, 28.48 / 0.924 for
inpainting): DPS super-resolution 26.03 / 0.838, RED-Diff super-resolution 25.72 / 0.810,
RED-Diff inpainting 30.76 / 0.932. A larger ``sigma_start`` (0.2-0.25) was what they needed: the
prior must be free to move away from TV's piecewise-constant start. RED-Diff at 30 views was retuned
too (below TV in SSIM on the benchmark's images with ``lr`` 0.003 from ``sigma_start`` 0.05; the
tuning images gave 34.29 / 0.951 there, and 34.29 / 0.959 with ``lr`` 0.002 from 0.03, TV 33.11 /
0.939). Both shipped priors were later fine-tuned (``ct-ellipses`` with natural-image texture,
``mri-brain`` with magnitude images and a wider noise range; their model cards); every frozen value
and margin was kept and still held (benchmark images: ``benchmarks/README.md``). On 2026-11-27 the
TV baseline was found unconverged at 300 PDHG iterations (see :func:`tv`); against converged TV
(2000 iterations, also the warm start) every case still won, but two by less than their SSIM
margin, and were retuned on the tuning images: DPS deblurring ``zeta`` 1 -> 0.5 (grid ``zeta`` x
``sigma_start``; 28.22 / 0.904 against TV 27.73 / 0.890; ``zeta`` 1 gave 28.35 / 0.899) and
RED-Diff super-resolution ``lam`` 2 -> 4, ``lr`` 0.003 -> 0.002, ``sigma_start`` 0.2 -> 0.05 (grid
``lam`` x ``lr`` x ``sigma_start``; 26.13 / 0.839 against TV 25.71 / 0.812; the old values gave
25.89 / 0.807, below TV in SSIM). RED-Diff at 60 views, below converged TV in SSIM on the
benchmark's images (34.70 / 0.942 against 33.24 / 0.952), was retuned on the tuning images over
``lam`` x ``lr`` x ``sigma_start``: ``lam`` 3000 -> 1000, ``sigma_start`` 0.05 -> 0.03 (37.07 /
0.969 against TV 34.86 / 0.945; the old values gave 36.70 / 0.963). 2000 iterations were still
0.2 dB off in deblurring and super-resolution; since then TV runs to ``tv_reconstruction``'s
residual tolerance, and every frozen value and margin still held. What the test
does not claim: that the priors (1.5M parameters, minutes of GPU training) are good in absolute
terms, or that these settings are best at other sizes.
"""
from __future__ import annotations

import math

import pytest
import torch
from deepinv.physics import LinearPhysics

from diffinverse.datasets.brain import BrainSlices
from diffinverse.datasets.ct_slices import synthetic_ct_slices
from diffinverse.metrics import psnr, ssim
from diffinverse.operators.blur import Blur, gaussian_kernel
from diffinverse.operators.coils import simulate_coil_maps
from diffinverse.operators.ct import CT
from diffinverse.operators.inpainting import Inpainting, box_mask
from diffinverse.operators.masks import equispaced_lines, random_lines
from diffinverse.operators.mri import MultiCoilMRI, SingleCoilMRI, fft2c, ifft2c, to_channels, to_complex
from diffinverse.operators.superres import SuperResolution
from diffinverse.priors.checkpoints import load
from diffinverse.samplers.baselines import tv_reconstruction
from diffinverse.samplers.dps import DPS
from diffinverse.samplers.reddiff import REDDiff

pytestmark = pytest.mark.slow

SIZE = 64
N_IMAGES = 8
TEST_SEED = 0       # the tuning used seed 1000 (other images, masks and noise)
SAMPLER_SEED = 1

CENTER_FRACTION = {4: 0.08, 8: 0.04}  # fully sampled centre lines per acceleration (fastMRI's)

# Frozen hyper-parameters (see the module docstring for how they were chosen).
# baseline: "adjoint" = zero-filled / SENSE-CG (physics.A_dagger), "tv" = TV with tv_lam
# (CT: FBP is computed and checked too). Margins: (PSNR dB, SSIM) over the best baseline.
# The MRI tasks' tv_lam (best PSNR over 1e-4 ... 0.1 on 8 tuning images) gives the benchmarks a
# TV reference row; it is not asserted: the MRI baselines are zero-filled and SENSE-CG,
# and TV beats the samplers on most MRI tasks (benchmarks/README.md).
CONFIG = {
    "mri_1coil_4x_random": dict(
        baseline="adjoint", init="adjoint", tv_lam=0.01,
        dps=dict(num_steps=40, zeta=0.5, squared_norm=True, sigma_start=0.3),
        reddiff=dict(num_steps=60, lam=0.25, lr=0.05, sigma_start=0.5),
        margin=(0.4, 0.03)),
    "mri_1coil_8x_equispaced": dict(
        baseline="adjoint", init="adjoint", tv_lam=0.01,
        dps=dict(num_steps=40, zeta=0.5, squared_norm=True, sigma_start=0.3),
        reddiff=dict(num_steps=40, lam=0.25, lr=0.02, sigma_start=0.3),
        margin=(0.3, 0.02)),
    "mri_8coil_4x_random": dict(
        baseline="adjoint", init="adjoint", tv_lam=0.001,
        dps=dict(num_steps=40, zeta=0.5, squared_norm=True, sigma_start=0.3),
        reddiff=dict(num_steps=40, lam=0.01, lr=0.02, sigma_start=0.3),
        margin=(0.3, 0.03)),
    "mri_8coil_8x_equispaced": dict(
        baseline="adjoint", init="adjoint", tv_lam=0.001,
        dps=dict(num_steps=40, zeta=0.5, squared_norm=True, sigma_start=0.3),
        reddiff=dict(num_steps=40, lam=0.01, lr=0.02, sigma_start=0.3),
        margin=(0.3, 0.02)),
    "mri_1coil_8x_random": dict(
        baseline="adjoint", init="adjoint", tv_lam=0.0003,
        dps=dict(num_steps=20, zeta=0.5, squared_norm=True, sigma_start=0.5),
        reddiff=dict(num_steps=60, lam=0.25, lr=0.02, sigma_start=0.5),
        margin=(0.2, 0.03)),
    "mri_1coil_4x_equispaced": dict(
        baseline="adjoint", init="adjoint", tv_lam=0.01,
        dps=dict(num_steps=40, zeta=0.5, squared_norm=True, sigma_start=0.3),
        reddiff=dict(num_steps=60, lam=0.25, lr=0.05, sigma_start=0.5),
        margin=(0.3, 0.02)),
    "mri_8coil_8x_random": dict(
        baseline="adjoint", init="adjoint", tv_lam=0.001,
        dps=dict(num_steps=20, zeta=0.5, squared_norm=True, sigma_start=0.5),
        reddiff=dict(num_steps=60, lam=0.01, lr=0.02, sigma_start=0.5),
        margin=(0.2, 0.03)),
    "mri_8coil_4x_equispaced": dict(
        baseline="adjoint", init="adjoint", tv_lam=0.001,
        dps=dict(num_steps=40, zeta=0.5, squared_norm=True, sigma_start=0.3),
        reddiff=dict(num_steps=100, lam=0.01, lr=0.02, sigma_start=0.15),
        margin=(0.3, 0.02)),
    "ct_60_views": dict(
        baseline="tv", tv_lam=1.0, init="tv",
        dps=dict(num_steps=60, zeta=2.7e-4, squared_norm=True, sigma_start=0.05),
        reddiff=dict(num_steps=60, lam=1000.0, lr=0.003, sigma_start=0.03),
        margin=(0.4, 0.005)),
    "ct_30_views": dict(
        baseline="tv", tv_lam=1.0, init="tv",
        dps=dict(num_steps=60, zeta=5.4e-4, squared_norm=True, sigma_start=0.05),
        reddiff=dict(num_steps=60, lam=3000.0, lr=0.002, sigma_start=0.03),
        margin=(0.3, 0.005)),
    "deblur_gaussian": dict(
        baseline="tv", tv_lam=0.001, init="tv",
        dps=dict(num_steps=60, zeta=0.5, squared_norm=True, sigma_start=0.05),
        reddiff=dict(num_steps=60, lam=1.0, lr=0.003, sigma_start=0.05),
        margin=(0.05, 0.005)),
    "inpaint_box": dict(
        baseline="tv", tv_lam=0.01, init="tv",
        dps=dict(num_steps=60, zeta=0.1, squared_norm=True, sigma_start=0.05),
        reddiff=dict(num_steps=200, lam=3.0, lr=0.01, sigma_start=0.2),
        margin=(0.02, 0.001)),
    "superres_4x": dict(
        baseline="tv", tv_lam=0.001, init="tv",
        dps=dict(num_steps=60, zeta=2.5, squared_norm=True, sigma_start=0.25),
        reddiff=dict(num_steps=120, lam=4.0, lr=0.002, sigma_start=0.05),
        margin=(0.2, 0.01)),
}


# -- data ---------------------------------------------------------------------------------------

def brain_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Held-out complex head slices ``(n, 2, size, size)``, whole field of view, prior's scale."""
    x = BrainSlices("test", generator=torch.Generator().manual_seed(seed)).sample(n)
    k = fft2c(to_complex(x))
    c = (x.shape[-1] - size) // 2
    # central k-space of the orthonormal FFT: same image at lower resolution, amplitude * size/256
    z = ifft2c(k[..., c:c + size, c:c + size]) * (size / x.shape[-1])
    x = to_channels(z)
    q = torch.quantile(x.square().sum(1).sqrt().flatten(1), 0.995, dim=1)
    return (x / q[:, None, None, None]).contiguous()


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)``: modulus of 2-channel complex images, the channel itself for 1 channel."""
    return x.square().sum(1).sqrt() if x.shape[1] == 2 else x[:, 0]


def scores(gt: torch.Tensor, pred: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR and mean SSIM over the images of a batch (each image its own volume)."""
    g, p = magnitude(gt), magnitude(pred)
    ps = [psnr(g[i], p[i]) for i in range(len(g))]
    ss = [ssim(g[i], p[i]) for i in range(len(g))]
    return sum(ps) / len(ps), sum(ss) / len(ss)


def make_task(name: str, n: int, size: int, seed: int,
              x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, LinearPhysics, str]:
    """Ground truth ``x``, noisy measurements ``y``, the operator and the prior's name of a task.

    ``x`` replaces the generated ground truth (``(n, 2, size, size)`` on the prior's scale for MRI,
    ``(n, 1, size, size)`` in [0, 1] otherwise), e.g. real images in ``benchmarks/real_end_to_end.py``.
    """
    g = torch.Generator().manual_seed(seed + 7)
    if name.startswith("mri"):
        x = brain_images(n, size, seed) if x is None else x
        shape = (size, size)
        accel = int(name.split("_")[2].rstrip("x"))
        lines = random_lines if name.endswith("_random") else equispaced_lines
        mask = lines(shape, accel, CENTER_FRACTION[accel], generator=g)
        physics = SingleCoilMRI(mask) if "_1coil_" in name else MultiCoilMRI(mask, simulate_coil_maps(8, shape))
        y = physics.A(x)
        y = y + 0.01 * torch.randn(y.shape, generator=g) * physics.mask
        return x, y, physics, "mri-brain"
    if x is None:
        x = synthetic_ct_slices(n, size, generator=torch.Generator().manual_seed(seed))
    if name.startswith("ct"):
        views = int(name.split("_")[1])
        physics = CT(size, torch.arange(views) * math.pi / views, backend="torch")
        y = physics.A(x)
        y = y + 0.01 * y.abs().amax() * torch.randn(y.shape, generator=g)
    elif name == "inpaint_box":
        q = size // 4
        physics = Inpainting(box_mask((size, size), (q + q // 2, q + q // 2, q, q)))
        y = physics.A(x + 0.01 * torch.randn(x.shape, generator=g))
    else:
        physics = Blur(gaussian_kernel(2.0), padding="reflect") if name == "deblur_gaussian" else SuperResolution(4)
        y = physics.A(x)
        y = y + 0.01 * torch.randn(y.shape, generator=g)
    return x, y, physics, "ct-ellipses"


# -- TV baseline ----------------------------------------------------------------------------------

def tv(y: torch.Tensor, physics: LinearPhysics, lam: float) -> torch.Tensor:
    """The TV baseline ``argmin ||A x - y||^2 / 2 + lam TV(x)`` (PDHG, run to its default tolerance).

    A fixed 300 iterations, used until 2026-11-27, had not converged on box inpainting,
    super-resolution and deblurring (test images: 30.58 / 24.60 / 27.05 dB against 34.32 / 25.15 /
    27.19 after 2000), nor, from the then-default start ``A^H y``, on 60-view CT (31.62 against
    34.09 dB). 2000 iterations, used next, were still 0.2 dB off the minimiser in deblurring and
    super-resolution (27.19 / 25.15 against 27.00 / 24.97 dB).
    """
    return tv_reconstruction(y, physics, lam=lam)


# -- the test --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def priors():
    out = {}
    for name in ("mri-brain", "ct-ellipses"):
        prior = load(name).eval()
        for p in prior.parameters():
            p.requires_grad_(False)
        out[name] = prior
    return out


CASES = [(task, name) for task in CONFIG for name in ("dps", "reddiff")]


@pytest.mark.parametrize(("task", "method"), CASES)
def test_sampler_beats_classical_baseline(task, method, priors):
    cfg = CONFIG[task]
    x, y, physics, prior_name = make_task(task, N_IMAGES, SIZE, TEST_SEED)
    prior = priors[prior_name]
    adjoint = physics.A_dagger(y)  # zero-filled / SENSE-CG / FBP
    results = {"A_dagger": scores(x, adjoint)}
    x_tv = None
    if cfg["baseline"] == "tv":
        x_tv = tv(y, physics, cfg["tv_lam"])
        results["tv"] = scores(x, x_tv)
    x_init = x_tv if cfg["init"] == "tv" else adjoint

    kw = dict(cfg[method])
    sigma_start = kw.pop("sigma_start")
    sampler = (DPS if method == "dps" else REDDiff)(prior, progress=False, **kw)
    out = sampler(y, physics, generator=torch.Generator().manual_seed(SAMPLER_SEED),
                  x_init=x_init, sigma_start=sigma_start)
    assert out.shape == x.shape and torch.isfinite(out).all()
    results[method] = scores(x, out)

    best_psnr = max(results[b][0] for b in ("A_dagger", "tv") if b in results)
    best_ssim = max(results[b][1] for b in ("A_dagger", "tv") if b in results)
    dp, ds = cfg["margin"]
    summary = ", ".join(f"{k}: {p:.2f} dB / {s:.4f}" for k, (p, s) in results.items())
    p, s = results[method]
    assert p >= best_psnr + dp, f"{task}: {method} PSNR {p:.2f} < best baseline {best_psnr:.2f} + {dp} ({summary})"
    assert s >= best_ssim + ds, f"{task}: {method} SSIM {s:.4f} < best baseline {best_ssim:.4f} + {ds} ({summary})"
