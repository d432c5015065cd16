"""Build and execute ``active_subsampling.ipynb``: Active Diffusion Subsampling choosing k-space lines,
against fixed random and equispaced masks with the same budget and the same particle sampler.

Usage: ``python notebooks/build_active_subsampling.py`` (needs ``nbclient`` and ``ipykernel``, in the
``test`` extra). The notebook's first code cell holds its size parameters; they are set small so that
``tests/test_notebooks.py`` runs it in CI on one CPU core.
"""
from _build import build

PARAMETERS = (
    "# Parameters, small so that CI runs this notebook on one CPU core in well under a minute.\n"
    "# With time to spare raise them: SIZE = 64, PARTICLES = 16, STEPS = 50.\n"
    "SIZE = 32            # held-out brain slice, SIZE x SIZE, single-coil k-space\n"
    "ACCELERATION = 4     # SIZE / ACCELERATION lines in all, the centre's 8 % measured first\n"
    "PARTICLES = 4        # ADS particles; the fixed masks get as many posterior samples\n"
    "STEPS = 20           # DDS's full grid (the warm start runs its part below sigma 0.3)\n"
    "SEED = 0"
)

CELLS = [
    ("md", "# Active Diffusion Subsampling: which k-space lines to measure\n\n"
           "ADS (Nolan et al., TMLR 2025) runs a few particles through the reverse diffusion and, at evenly "
           "spread steps, measures the phase-encode line whose predicted k-space the particles disagree on "
           "most (the largest estimated entropy). Here it runs retrospectively on a fully sampled held-out "
           "brain slice through `diffinverse.pipelines.active.active_reconstruct_kspace`, and its mask is "
           "compared with fastMRI's random and equispaced masks of the same number of lines, each "
           "reconstructed by the same particle sampler (DDS, the posterior mean of as many samples as ADS "
           "has particles)."),
    ("code", PARAMETERS),
    ("code", "import math, tempfile, torch, matplotlib.pyplot as plt\n"
             "from IPython.display import Image, display\n"
             "from diffinverse.metrics import psnr, ssim\n"
             "from diffinverse.operators import fft2c, to_complex\n"
             "from diffinverse.pipelines import reconstruct_kspace\n"
             "from diffinverse.pipelines.active import active_reconstruct_kspace, save_acquisition_order\n"
             "from diffinverse.tasks import brain_images, frozen_prior\n"
             "torch.set_num_threads(1)\n"
             "prior = frozen_prior('mri-brain')\n"
             "x = to_complex(brain_images(1, SIZE, torch.Generator().manual_seed(SEED)))[0]    # (SIZE, SIZE) complex\n"
             "kspace = fft2c(x)                                                                 # fully sampled\n"
             "truth = x.abs()"),
    ("md", "## ADS and the fixed masks\n"
           "ADS measures the centre first and chooses the rest; the fixed masks have the same centre and as "
           "many lines in all: the others spread evenly (equispaced) or drawn uniformly (random)."),
    ("code", "ads = active_reconstruct_kspace(kspace, acceleration=ACCELERATION, prior=prior, num_steps=STEPS,\n"
             "                                num_particles=PARTICLES, generator=torch.Generator().manual_seed(SEED))\n"
             "lines = int(ads.mask.sum())\n"
             "print(f'ADS: centre {ads.initial_lines}, then {ads.order} ({lines} of {SIZE} lines, {ads.nfe} network passes)')\n"
             "recs = {'ADS': ads.image[0]}\n"
             "masks = {'ADS': ads.mask}\n"
             "centre = torch.zeros(SIZE); centre[list(ads.initial_lines)] = 1\n"
             "others = (centre == 0).nonzero().flatten()                  # the lines a mask may add\n"
             "more = lines - len(ads.initial_lines)\n"
             "pick = {'equispaced': others[torch.linspace(0, len(others) - 1, more).round().long()],\n"
             "        'random': others[torch.randperm(len(others), generator=torch.Generator().manual_seed(SEED))[:more]]}\n"
             "for kind, cols in pick.items():\n"
             "    m = centre.clone(); m[cols] = 1\n"
             "    rec = reconstruct_kspace(kspace[None], m, method='dds', prior=prior, num_steps=STEPS,\n"
             "                             num_samples=PARTICLES, generator=torch.Generator().manual_seed(SEED))\n"
             "    recs[kind], masks[kind] = rec.image[0], m\n"
             "    print(f'{kind}: {int(m.sum())} lines, {rec.nfe} network passes')\n"
             "scores = {k: (psnr(reference=truth, estimate=v), ssim(reference=truth[None], estimate=v[None]))\n"
             "          for k, v in recs.items()}\n"
             "for k, (p, s) in scores.items():\n"
             "    print(f'{k:11s} PSNR {p:5.2f} dB  SSIM {s:.3f}')"),
    ("md", "## The chosen lines\n"
           "Each row is a mask over the phase-encode lines; ADS's chosen lines are coloured by when they were "
           "acquired (grey: the initial centre). The same picture, as `diffinverse-reconstruct --sampler ads` "
           "writes it, comes from `save_acquisition_order`."),
    ("code", "rows = torch.full((3, SIZE), math.nan)\n"
             "rows[0, list(ads.initial_lines)] = 0\n"
             "rows[0, list(ads.order)] = torch.arange(1, len(ads.order) + 1, dtype=torch.float32)\n"
             "rows[1][masks['equispaced'] > 0] = 0\n"
             "rows[2][masks['random'] > 0] = 0\n"
             "cmap = plt.get_cmap('viridis').copy(); cmap.set_under('0.6'); cmap.set_bad('white')\n"
             "fig, ax = plt.subplots(figsize=(10, 2.2))\n"
             "im = ax.imshow(rows, cmap=cmap, vmin=0.5, vmax=max(len(ads.order), 1), aspect='auto', interpolation='nearest')\n"
             "ax.set_yticks(range(3), ['ADS', 'equispaced', 'random']); ax.set_xlabel('phase-encode line')\n"
             "fig.colorbar(im, ax=ax, label='ADS acquisition')\n"
             "plt.show()\n"
             "with tempfile.TemporaryDirectory() as tmp:\n"
             "    save_acquisition_order(f'{tmp}/order.png', ads)\n"
             "    display(Image(filename=f'{tmp}/order.png'))"),
    ("md", "## Entropy over time\n"
           "Every line's estimated entropy at every acquisition (rows: acquisitions, top to bottom; white: "
           "already measured); the red dot is the line acquired. Early on the particles disagree most at low "
           "frequencies, where the image's energy is."),
    ("code", "h = ads.entropies.clone()\n"
             "h[torch.isinf(h)] = math.nan\n"
             "fig, ax = plt.subplots(figsize=(10, 3))\n"
             "im = ax.imshow(h, aspect='auto', interpolation='nearest', cmap='magma')\n"
             "ax.scatter(list(ads.order), range(len(ads.order)), c='red', s=12)\n"
             "ax.set_xlabel('phase-encode line'); ax.set_ylabel('acquisition')\n"
             "fig.colorbar(im, ax=ax, label='estimated entropy (ads kernel)')\n"
             "plt.show()"),
    ("md", "## Reconstructions and error maps\n"
           "Top: the particle mean's magnitude (ADS) and the posterior means of the fixed masks; bottom: the "
           "absolute error against the fully sampled image, on one colour scale."),
    ("code", "fig, ax = plt.subplots(2, 4, figsize=(13, 6.5))\n"
             "ax[0, 0].imshow(truth, cmap='gray'); ax[0, 0].set_title('fully sampled')\n"
             "ax[1, 0].imshow(ads.std[0], cmap='magma'); ax[1, 0].set_title('ADS particles: std')\n"
             "top = max(float((v - truth).abs().max()) for v in recs.values())\n"
             "for i, (name, rec) in enumerate(recs.items(), start=1):\n"
             "    p, s = scores[name]\n"
             "    ax[0, i].imshow(rec, cmap='gray', vmin=0, vmax=float(truth.max()))\n"
             "    ax[0, i].set_title(f'{name}: {p:.2f} dB, SSIM {s:.3f}')\n"
             "    ax[1, i].imshow((rec - truth).abs(), cmap='magma', vmin=0, vmax=top); ax[1, i].set_title(f'{name}: |error|')\n"
             "for a in ax.flat:\n"
             "    a.axis('off')\n"
             "plt.tight_layout()"),
    ("md", "On slices this small ADS tends to take the lines next to the centre, where the energy is; whether "
           "it does better than simply measuring the centre is a question for more slices than one. With one "
           "coil the operator ties no two lines together, so the particles' predictions made consistent with "
           "the measured lines (`predict='consistent'`, the default) and their raw Tweedie estimates "
           "(`predict='tweedie'`, the paper's) choose alike; with several coils, or CT views, a line or view "
           "that the measured ones already determine is no longer taken, and the chosen lines spread. The "
           "benchmark over held-out slices (single- and multi-coil, 4x and 8x, a `central` mask among the "
           "fixed ones, and CT views), with per-slice wins, wall time and network passes, is in "
           "`benchmarks/README.md`, \"Active Diffusion Subsampling against fixed masks\" "
           "(`benchmarks/samplers/bench_ads.py`)."),
]

if __name__ == "__main__":
    build(CELLS, "active_subsampling.ipynb")
