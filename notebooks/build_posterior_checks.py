"""Build and execute ``posterior_checks.ipynb``: the samplers against an exact posterior, their
uncertainty on MRI, and what the warm start buys.

Usage: ``python notebooks/build_posterior_checks.py`` (needs ``nbclient`` and ``ipykernel``, in the
``test`` extra). The notebook's first code cell holds its size parameters; they are set small so that
``tests/test_notebooks.py`` runs it in CI on two CPU cores.
"""
from _build import build

PARAMETERS = (
    "# Parameters, small so that CI runs this notebook on 2 CPU cores in a few minutes.\n"
    "# On a GPU (or with time to spare) raise them: NUM_DRAWS = 1000, NUM_SLICES = 4,\n"
    "# NUM_SAMPLES = 16, GRIDS = [25, 50, 100, 200].\n"
    "NUM_DRAWS = 300       # section 1: draws per method (RED-Diff: a tenth of them, 300 steps each)\n"
    "NUM_SLICES = 2        # sections 2 and 3: held-out 64x64 MRI slices\n"
    "NUM_SAMPLES = 8       # section 2: DPS posterior samples per slice\n"
    "GRIDS = [10, 25]      # section 3: step counts of the Karras grid"
)

CELLS = [
    ("md", "# Checking the samplers: an exact posterior, uncertainty in MRI, warm starts\n\n"
           "1. On a Gaussian-mixture prior the posterior is known in closed form: compare DPS and RED-Diff "
           "with it.\n"
           "2. With the shipped `mri-brain` prior: does the spread of DPS's samples point at its errors?\n"
           "3. Warm start (Come-Closer-Diffuse-Faster): quality against network evaluations, from noise and "
           "from the zero-filled image."),
    ("code", PARAMETERS),
    ("code", "import math, scipy.stats, torch, deepinv as dinv, matplotlib.pyplot as plt\n"
             "from diffinverse.datasets.brain import BrainSlices\n"
             "from diffinverse.imaging import to_prior_range\n"
             "from diffinverse.metrics import psnr\n"
             "from diffinverse.operators import SingleCoilMRI, random_lines, fft2c, ifft2c, to_channels, to_complex\n"
             "from diffinverse.priors import GaussianMixturePrior, load\n"
             "from diffinverse.samplers import DPS, REDDiff"),
    ("md", "## 1. An exact posterior\n"
           "4x4 images from a mixture of two Gaussians whose means differ only in rows 1 and 3 (`+v` and `-v`); "
           "the operator observes rows 0 and 2 with noise 0.1. The measurement cannot tell the two components "
           "apart, so the exact posterior has two modes of weight 1/2 each. `GaussianMixturePrior.posterior` "
           "gives it in closed form (this is the oracle of `tests/test_samplers_gmm.py`)."),
    ("code", "mask = torch.zeros(1, 4, 4); mask[:, ::2, :] = 1                  # rows 0 and 2 observed\n"
             "physics = dinv.physics.Inpainting(img_size=(1, 4, 4), mask=mask)\n"
             "rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing='ij')\n"
             "pos = torch.stack([rows.flatten(), cols.flatten()], 1).double()\n"
             "cov = 0.25 * torch.exp(-torch.cdist(pos, pos) ** 2 / 4.5) + 0.01 * torch.eye(16, dtype=torch.float64)\n"
             "v = 0.6 * (1 - mask).flatten().double()                          # the components' means: +v and -v\n"
             "prior = GaussianMixturePrior(torch.tensor([0.5, 0.5]), torch.stack([v, -v]), torch.stack([cov, cov]),\n"
             "                             shape=(1, 4, 4), sigma_max=20.0)\n"
             "g = torch.Generator().manual_seed(0)\n"
             "x0 = prior.sample(1, generator=g)\n"
             "y = physics.A(x0) + 0.1 * torch.randn(x0.shape, generator=g) * mask\n"
             "exact = prior.posterior(y.double(), physics, noise_sigma=0.1)\n"
             "n = NUM_DRAWS\n"
             "draws = {\n"
             "    'prior': prior.sample(n, generator=g),\n"
             "    'exact posterior': exact.sample(n, generator=g),\n"
             "    'DPS (50 steps)': DPS(prior, num_steps=50, zeta=0.3, squared_norm=False, sigma_start=None, progress=False)\n"
             "                      .posterior(y, physics, num_samples=n, generator=g).samples[:, 0],\n"
             "    'RED-Diff (300 steps)': REDDiff(prior, num_steps=300, lr=0.05, sigma_start=None, progress=False)\n"
             "                           .posterior(y, physics, num_samples=max(n // 10, 2), generator=g).samples[:, 0],\n"
             "}\n"
             "print('draws per method:', {k: len(s) for k, s in draws.items()})\n"
             "print(f\"{'':22s} {'|mean - exact|':>15s} {'|cov - exact|':>14s} {'share at +v':>12s}\")\n"
             "for name, s in draws.items():\n"
             "    s = s.reshape(len(s), -1).double()\n"
             "    print(f'{name:22s} {(s.mean(0) - exact.mean()).norm():15.3f} {(torch.cov(s.T) - exact.cov()).norm():14.3f} '\n"
             "          f'{(s @ v > 0).double().mean():12.2f}')"),
    ("code", "fig, ax = plt.subplots(1, 4, figsize=(16, 4), sharex=True, sharey=True)\n"
             "for a, (name, s) in zip(ax, draws.items()):\n"
             "    s = s.reshape(len(s), -1)\n"
             "    a.scatter(s[:, 5], s[:, 14], s=4, alpha=0.4)                    # pixels (1, 1) and (3, 2), both unobserved\n"
             "    a.set_title(name); a.set_xlabel('pixel (1, 1)')\n"
             "ax[0].set_ylabel('pixel (3, 2)')\n"
             "plt.tight_layout()"),
    ("md", "DPS should find both modes in about the right proportion, with a mean and covariance far closer to "
           "the exact ones than the prior's (the table above; `tests/test_samplers_gmm.py` asserts this). "
           "RED-Diff is not a sampler: it fits a point estimate near a posterior mode, and its noise decides "
           "which mode. With 300 small steps (`lr` 0.05, the setting of `tests/test_samplers_gmm.py`) its runs "
           "sit in tight clusters at the two modes, with little of the posterior's spread; with few steps at a "
           "large `lr` they do not settle. Point estimates near a mode are what the method promises, and what "
           "the tests assert of it."),
    ("md", "## 2. Uncertainty in MRI\n"
           "Held-out brain slices at 64x64 (central k-space of the 256x256 slices, scaled like the "
           "end-to-end benchmark's), single-coil 4x random lines, k-space noise 0.01; DPS with the end-to-end "
           "test's frozen settings for this task (40-step grid, warm start from the zero-filled image at "
           "sigma 0.3), `NUM_SAMPLES` samples per slice in one batch."),
    ("code", "size = 64\n"
             "slices = BrainSlices('test', generator=torch.Generator().manual_seed(3)).sample(NUM_SLICES)   # (S, 2, 256, 256)\n"
             "c = (256 - size) // 2\n"
             "x = to_channels(ifft2c(fft2c(to_complex(slices))[..., c:c + size, c:c + size]) * (size / 256))\n"
             "x, _ = to_prior_range(x)                                              # magnitude's 99.5th percentile at 1\n"
             "gm = torch.Generator().manual_seed(1)\n"
             "mri = SingleCoilMRI(random_lines((size, size), 4, 0.08, generator=gm))\n"
             "y = mri.A(x)\n"
             "y = y + 0.01 * torch.randn(y.shape, generator=gm) * mri.mask\n"
             "mri_prior = load('mri-brain')\n"
             "dps = DPS(mri_prior, num_steps=40, zeta=0.5, squared_norm=True, sigma_start=0.3, progress=False)\n"
             "post = dps.posterior(y, mri, num_samples=NUM_SAMPLES, generator=torch.Generator().manual_seed(2))\n"
             "mag = lambda z: z.square().sum(-3).sqrt()                            # complex magnitude, any leading dims\n"
             "truth, samples = mag(x), mag(post.samples)                           # (S, 64, 64), (N, S, 64, 64)\n"
             "mean, std = samples.mean(0), samples.std(0)\n"
             "err = (truth - mean).abs()\n"
             "print(f'PSNR: zero-filled {psnr(reference=truth, estimate=mag(mri.A_adjoint(y))):.2f}, '\n"
             "      f'one sample {psnr(reference=truth, estimate=samples[0]):.2f}, '\n"
             "      f'mean of {NUM_SAMPLES} {psnr(reference=truth, estimate=mean):.2f} dB ({dps.last_nfe} network calls for all samples)')\n"
             "print(f'pixels within mean +- 1.96 std: {(err <= 1.96 * std).double().mean():.2f} (0.95 if calibrated)')\n"
             "print(f'Spearman rank correlation of std and |error|: '\n"
             "      f'{scipy.stats.spearmanr(std.flatten(), err.flatten()).statistic:.2f}')"),
    ("code", "fig, ax = plt.subplots(1, 5, figsize=(20, 4))\n"
             "panels = [(truth[0], 'reference', 'gray'), (mean[0], f'DPS mean of {NUM_SAMPLES}', 'gray'),\n"
             "          (std[0], 'DPS std', 'magma'), (err[0], '|error| of the mean', 'magma')]\n"
             "for a, (im, title, cmap) in zip(ax, panels):\n"
             "    a.imshow(im, cmap=cmap); a.set_title(title); a.axis('off')\n"
             "# reliability: mean |error| in bins of std; a calibrated Gaussian posterior gives sqrt(2/pi) * std\n"
             "edges = torch.quantile(std.flatten(), torch.linspace(0, 1, 11))\n"
             "which = torch.bucketize(std.flatten(), edges[1:-1])\n"
             "binned = [(std.flatten()[which == b].mean(), err.flatten()[which == b].mean()) for b in range(10)]\n"
             "ax[4].plot(*zip(*binned), 'o-', label='DPS, 10 bins of std')\n"
             "top = float(max(e for _, e in binned))\n"
             "ax[4].plot([0, top], [0, top * math.sqrt(2 / math.pi)], 'k--', label='calibrated: sqrt(2/pi) std')\n"
             "ax[4].set_xlabel('posterior std'); ax[4].set_ylabel('mean |error|'); ax[4].legend()\n"
             "plt.tight_layout()"),
    ("md", "Measured on all end-to-end tasks (`benchmarks/posterior_calibration.py`, section \"Posterior spread "
           "and posterior mean\" of `benchmarks/README.md`), the spread points at the errors (a rank correlation "
           "well above 0) but is too small: far fewer than 95 % of pixels lie within 1.96 standard deviations of "
           "the mean, and the binned errors lie above the calibrated line. Read the std map as *where* the "
           "reconstruction is uncertain, not as an error bar. With the small parameters above the estimate of "
           "the std is itself noisy."),
    ("md", "## 3. Warm start\n"
           "DPS from pure noise (the full grid from sigma 80) against DPS from its default warm start (Tikhonov: "
           "here the zero-filled image divided by 1.01) at sigma 0.3 "
           "(only the grid's steps below 0.3 run), on the same slices. The cold start gets the best of three "
           "`zeta` values for each step count, chosen on these very slices, which flatters it; the warm start "
           "keeps the frozen setting above."),
    ("code", "def dps_psnr(steps, **kw):\n"
             "    d = DPS(mri_prior, num_steps=steps, progress=False, **kw)\n"
             "    out = d(y, mri, generator=torch.Generator().manual_seed(4))\n"
             "    return d.last_nfe, float(psnr(reference=truth, estimate=mag(out)))\n"
             "cold = [max((dps_psnr(s, zeta=z, squared_norm=False, sigma_start=None) for z in (1.0, 3.0, 6.0)),\n"
             "            key=lambda r: r[1]) for s in GRIDS]\n"
             "warm = [dps_psnr(s, zeta=0.5, squared_norm=True, sigma_start=0.3) for s in GRIDS]\n"
             "for s, (nc, pc), (nw, pw) in zip(GRIDS, cold, warm):\n"
             "    print(f'{s:4d}-step grid: cold {pc:.2f} dB with {nc:3d} network calls, warm {pw:.2f} dB with {nw:3d}')\n"
             "plt.figure(figsize=(6, 4))\n"
             "plt.plot(*zip(*cold), 'o-', label='from noise (best zeta of 3)')\n"
             "plt.plot(*zip(*warm), 's-', label='warm start at sigma 0.3')\n"
             "plt.axhline(float(psnr(reference=truth, estimate=mag(mri.A_adjoint(y)))), color='gray', ls=':', label='zero-filled')\n"
             "plt.xscale('log'); plt.xlabel('network evaluations (forward + backward)'); plt.ylabel('PSNR (dB)')\n"
             "plt.legend(); plt.tight_layout()"),
    ("md", "The warm start needs a fraction of the cold start's network evaluations for the same quality: its "
           "25-step grid runs only the steps below sigma 0.3. With hundreds of evaluations (the larger `GRIDS` of "
           "the first cell) and `zeta` picked on the slices themselves, the cold start can go a little further. "
           "The warm start's `zeta` was frozen for a "
           "40-step grid; on finer grids the guidance acts more often, so retune `zeta` with the step count. "
           "The end-to-end tests and the command line (`--sigma-start`, `--warm-start`) start every diffusion "
           "sampler warm; `benchmarks/README.md` (\"Samplers end to end\", PSNR against wall time) has the "
           "measured trade-off."),
]


def main() -> None:
    build(CELLS, "posterior_checks.ipynb")


if __name__ == "__main__":
    main()
