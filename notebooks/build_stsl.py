"""Build and execute ``stsl.ipynb``: first- against second-order latent sampling (STSL).

Usage: ``python notebooks/build_stsl.py`` (needs ``nbclient`` and ``ipykernel``, in the ``test``
extra). The first code cell holds the size parameters, small so that ``tests/test_notebooks.py``
runs it in CI on one CPU core in well under a minute.
"""
from _build import build

PARAMETERS = (
    "# Parameters, small so that CI runs this notebook on one CPU core in well under a minute.\n"
    "# With time to spare raise them: SIZE = 64, STEPS = 50, K = 5 (benchmarks/samplers/stsl_results.md).\n"
    "SIZE = 32         # image side (a multiple of the autoencoder's factor, 4)\n"
    "STEPS = 10        # noise levels of each sampler's grid, all below the warm start\n"
    "K = 3             # STSL's inner gradient steps per level\n"
    "ETA = 0.02        # weight of STSL's Hessian-trace term (the paper's)"
)

CELLS = [
    ("md", "# STSL: first- and second-order Tweedie on a latent diffusion prior\n\n"
           "`STSL` (Rout et al., CVPR 2024) takes K gradient steps per noise level on the data term of the "
           "first-order Tweedie estimate plus a Hutchinson estimate of the trace of the score's Jacobian; "
           "`second_order=False` is the first-order latent sampler (latent DPS). Two problems: 4x MRI with the "
           "shipped latent prior `mri-brain-latent`, and Gaussian deblurring with the pixel prior `ct-ellipses` "
           "through the identity form (encoder and decoder the identity). Settings are the benchmark's "
           "(`benchmarks/samplers/stsl_results.md`), scaled down; the figures show what these settings give, "
           "not a tuned result."),
    ("code", PARAMETERS),
    ("code", "import torch, matplotlib.pyplot as plt\n"
             "from diffinverse.datasets.brain import BrainSlices\n"
             "from diffinverse.imaging import magnitude\n"
             "from diffinverse.priors import load\n"
             "from diffinverse.samplers import STSL\n"
             "from diffinverse.tasks import frozen_prior, get_task, scores\n"
             "torch.set_num_threads(1)\n"
             "\n"
             "def run(prior, p, x_init, second_order, steps, k, sigma_start, zeta):\n"
             "    s = STSL(prior, num_steps=steps, inner_steps=k, eta=ETA, second_order=second_order, zeta=zeta,\n"
             "             sigma_max=sigma_start, progress=False)\n"
             "    out = s(p.y, p.physics, x_init=x_init, sigma_start=float(s.sigmas[0]),\n"
             "            generator=torch.Generator().manual_seed(1))\n"
             "    return out, s.last_forward, s.last_backward"),
    ("md", "## 4x single-coil MRI, latent prior\nThe central SIZE x SIZE of a held-out slice at its native 1 mm "
           "pixels; the task `mri_1coil_4x_random`'s mask and noise. Both samplers start from the encoded "
           "zero-filled image plus latent noise 0.1."),
    ("code", "task = get_task('mri_1coil_4x_random')\n"
             "c = (256 - SIZE) // 2\n"
             "x = BrainSlices('test', generator=torch.Generator().manual_seed(0)).sample(1)[..., c:c + SIZE, c:c + SIZE]\n"
             "p = task.problem(n=1, size=SIZE, x=x.contiguous())\n"
             "latent = load('mri-brain-latent')\n"
             "x0 = p.physics.A_dagger(p.y)\n"
             "rows = {'zero-filled': (x0, 0, 0),\n"
             "        'first order': run(latent, p, x0, False, 3 * STEPS, 1, 0.1, 0.3),\n"
             "        'STSL': run(latent, p, x0, True, STEPS, K, 0.1, 0.3)}\n"
             "fig, ax = plt.subplots(1, 4, figsize=(12, 3))\n"
             "for a, (name, img) in zip(ax, [('truth', p.x)] + [(n, r[0]) for n, r in rows.items()]):\n"
             "    a.imshow(magnitude(img)[0], cmap='gray'); a.axis('off')\n"
             "    a.set_title(name if name == 'truth' else f'{name}: {scores(p.x, img)[0]:.2f} dB')\n"
             "for name, (img, fw, bw) in rows.items():\n"
             "    print(f'{name:12s} PSNR {scores(p.x, img)[0]:.2f} dB, forward {fw}, backward {bw}')"),
    ("md", "## Gaussian deblurring, pixel prior through the identity form\nA synthetic CT slice, the task "
           "`deblur_gaussian`'s blur and noise; both samplers start from TV plus noise 0.05."),
    ("code", "task = get_task('deblur_gaussian')\n"
             "p = task.problem(n=1, size=SIZE)\n"
             "pixel = frozen_prior(task.prior)\n"
             "x0 = task.warm_start(p.y, p.physics)\n"
             "rows = {'TV': (x0, 0, 0),\n"
             "        'first order': run(pixel, p, x0, False, 3 * STEPS, 1, 0.05, 0.3),\n"
             "        'STSL': run(pixel, p, x0, True, STEPS, K, 0.05, 0.3)}\n"
             "fig, ax = plt.subplots(1, 4, figsize=(12, 3))\n"
             "for a, (name, img) in zip(ax, [('truth', p.x)] + [(n, r[0]) for n, r in rows.items()]):\n"
             "    a.imshow(img[0, 0], cmap='gray', vmin=0, vmax=1); a.axis('off')\n"
             "    a.set_title(name if name == 'truth' else f'{name}: {scores(p.x, img)[0]:.2f} dB')\n"
             "for name, (img, fw, bw) in rows.items():\n"
             "    print(f'{name:12s} PSNR {scores(p.x, img)[0]:.2f} dB, forward {fw}, backward {bw}')"),
    ("md", "STSL's passes: each of the K inner steps costs one network forward and backward at the state and, "
           "with `eta > 0`, one more of each at the probe. On the benchmark's MRI crops the trace term added "
           "nothing measurable and the extra steps (K) carried the gain; see "
           "`benchmarks/samplers/stsl_results.md` for the measured table and what was not measured."),
]

if __name__ == "__main__":
    build(CELLS, "stsl.ipynb")
