"""Build and execute ``ct_and_restoration.ipynb`` (so its figures are real outputs).

Usage: ``cd notebooks && python build_ct_and_restoration.py`` (needs ``nbclient``, ``ipykernel`` and
``pydicom``, in the ``test`` extra). The notebook's first code cell holds its size parameters; they
are set small so that ``tests/test_notebooks.py`` runs it in CI on two CPU cores.
"""
from _build import build

PARAMETERS = (
    "# Parameters, small so that CI runs this notebook on 2 CPU cores in about a minute.\n"
    "# On a GPU (or with time to spare) raise SIZE to 128 or 256 (512 / SIZE must be an integer).\n"
    "SIZE = 64                    # image side: the 512x512 slice, area-averaged\n"
    "TV_LAMS = (0.3, 1.0, 3.0)    # TV weights tried on a synthetic phantom, times the task table's\n"
    "SEED = 0"
)

CELLS = [
    ("md", "# CT and image restoration with the `ct-ellipses` prior\n\n"
           "The quickstart shows MRI; this notebook runs the package's other operators on a **real head CT "
           "slice**: sparse-view CT (torch backend), limited-angle CT (ASTRA backend), Gaussian deblurring, "
           "box inpainting and 4x super-resolution. Each sampler of `diffinverse.samplers.SAMPLERS` runs at "
           "its defaults (`SAMPLERS[name].cls(prior)`, no step sizes: they are relative to `||A||^2` and "
           "warm-start from a Tikhonov reconstruction, so the same call works on every operator), next to "
           "the operator's classical reconstruction `physics.A_dagger` (FBP for CT) and TV.\n\n"
           "STSL, the table's fourth entry, is left out: it is built for a latent prior (the package ships "
           "one for MRI only), and on a pixel prior its defaults take 500 network evaluations per image, "
           "too slow for a notebook run in CI."),
    ("code", PARAMETERS),
    ("code", "import dataclasses, math, warnings\n"
             "import torch, torch.nn.functional as F, matplotlib.pyplot as plt\n"
             "from pydicom.data import get_testdata_file\n"
             "from diffinverse.baselines import tv_reconstruction\n"
             "from diffinverse.datasets.real_images import read_dicom\n"
             "from diffinverse.metrics import psnr, ssim\n"
             "from diffinverse.operators import CT\n"
             "from diffinverse.priors import load\n"
             "from diffinverse.samplers import SAMPLERS\n"
             "from diffinverse.tasks import TASKS, TUNING_SEED\n"
             "warnings.filterwarnings('ignore', module='pydicom')"),
    ("md", "## The real slice\n"
           "pydicom ships a 512x512 head CT slice (`J2K_pixelrep_mismatch.dcm`, lossless JPEG 2000, decoded "
           "by Pillow) among its test files, so CI has it without a download. `read_dicom` applies the "
           "modality LUT (Hounsfield units). The prior's model card asks for attenuation scaled to [0, 1]: "
           "`(HU + 1000) / (max HU + 1000)`, here the window **[-1000, max HU] HU** with values below "
           "-1000 (the scanner's -2000 outside its field of view) set to air. The slice is then "
           "area-averaged to `SIZE x SIZE`. It is not one of the real slices the prior was evaluated on "
           "(its model card), and the prior never trained on real images."),
    ("code", "hu = read_dicom(get_testdata_file('J2K_pixelrep_mismatch.dcm'))[0]        # (512, 512) HU\n"
             "window = (-1000.0, float(hu.max()))\n"
             "x = ((hu.clamp(min=window[0]) - window[0]) / (window[1] - window[0]))[None, None]\n"
             "x = F.avg_pool2d(x, 512 // SIZE)                                      # (1, 1, SIZE, SIZE) in [0, 1]\n"
             "print(f'window [{window[0]:.0f}, {window[1]:.0f}] HU; image {tuple(x.shape)}, '\n"
             "      f'range [{x.min():.3f}, {x.max():.3f}]')"),
    ("md", "## The five problems\n"
           "Four come from the package's task table (`diffinverse.tasks`), with its noise: parallel-beam CT "
           "with 30 views over 180 degrees and Gaussian sinogram noise of 1 % of its maximum (torch "
           "backend); Gaussian blur of std 2 px, reflect padding; a missing `SIZE/4` square; bicubic 4x "
           "downsampling; white noise of std 0.01 on the last three. The fifth, limited-angle CT, is the "
           "60-view task's noise with 60 views over 120 degrees only, on the ASTRA backend (its CPU "
           "projectors here; no GPU is needed). The two backends are the same system matrix:"),
    ("code", "limited = torch.arange(60) * (2 * math.pi / 3) / 60                      # 0 to 120 degrees\n"
             "a_torch, a_astra = CT(SIZE, limited, backend='torch'), CT(SIZE, limited, backend='astra')\n"
             "s_torch, s_astra = a_torch(x), a_astra(x)\n"
             "print(f'sinograms {tuple(s_torch.shape)}: torch vs ASTRA relative difference '\n"
             "      f'{float((s_torch - s_astra).norm() / s_astra.norm()):.1e}')\n"
             "TASKS_HERE = {\n"
             "    'sparse-view CT, 30 views (torch)': TASKS['ct_30_views'],\n"
             "    'limited-angle CT, 120 deg (ASTRA)': dataclasses.replace(\n"
             "        TASKS['ct_60_views'], name='ct_limited_120', physics=lambda size, g: CT(size, limited, backend='astra')),\n"
             "    'deblurring, Gaussian 2 px': TASKS['deblur_gaussian'],\n"
             "    'inpainting, box': TASKS['inpaint_box'],\n"
             "    '4x super-resolution': TASKS['superres_4x'],\n"
             "}"),
    ("md", "## TV's weight, chosen on a synthetic phantom\n"
           "TV's `lam` is chosen per problem on one synthetic slice of the prior's training generator (at a "
           "tuning seed), **not on the real slice**: `TV_LAMS` times the task table's weight, best PSNR."),
    ("code", "tv_lam = {}\n"
             "for label, task in TASKS_HERE.items():\n"
             "    tune = task.problem(1, SIZE, seed=TUNING_SEED)\n"
             "    scores = {}\n"
             "    for f in TV_LAMS:\n"
             "        r = tv_reconstruction(tune.y, tune.physics, lam=f * task.tv_lam)\n"
             "        scores[f * task.tv_lam] = psnr(reference=tune.x[0], estimate=r[0].clamp(0, 1))\n"
             "    tv_lam[label] = max(scores, key=scores.get)\n"
             "    print(f'{label:36s}', '  '.join(f'lam {k:g}: {v:.2f} dB' for k, v in scores.items()),\n"
             "          f'-> {tv_lam[label]:g}')"),
    ("md", "## Reconstructions of the real slice\n"
           "Every estimate is clipped to [0, 1] (the image's range) before it is scored against the slice; "
           "PSNR's peak is the slice's maximum."),
    ("code", "prior = load('ct-ellipses')\n"
             "results, rows = {}, []\n"
             "for label, task in TASKS_HERE.items():\n"
             "    p = task.problem(1, SIZE, seed=SEED, x=x)         # the real slice, the task's operator and noise\n"
             "    recs = {task.adjoint_name: p.physics.A_dagger(p.y),\n"
             "            'TV': tv_reconstruction(p.y, p.physics, lam=tv_lam[label])}\n"
             "    for name, spec in SAMPLERS.items():\n"
             "        if name == 'stsl':\n"
             "            continue\n"
             "        sampler = spec.cls(prior, progress=False)                    # the defaults\n"
             "        recs[spec.cls.__name__] = sampler(p.y, p.physics, generator=torch.Generator().manual_seed(SEED))\n"
             "    recs = {k: v.detach().clamp(0, 1) for k, v in recs.items()}\n"
             "    results[label] = recs\n"
             "    for k, v in recs.items():\n"
             "        rows.append((label, k, psnr(reference=x[0], estimate=v[0]), ssim(reference=x[0], estimate=v[0])))\n"
             "\n"
             "print(f'{\"problem\":36s} {\"method\":15s} {\"PSNR dB\":>8s} {\"SSIM\":>6s}')\n"
             "for label, method, p_, s_ in rows:\n"
             "    print(f'{label:36s} {method:15s} {p_:8.2f} {s_:6.3f}')\n"
             "print()\n"
             "for label in TASKS_HERE:\n"
             "    mine = [r for r in rows if r[0] == label]\n"
             "    best_p, best_s = max(mine, key=lambda r: r[2]), max(mine, key=lambda r: r[3])\n"
             "    print(f'{label:36s} best PSNR: {best_p[1]} ({best_p[2]:.2f}), best SSIM: {best_s[1]} ({best_s[3]:.3f})')"),
    ("md", "## Figures: reconstructions (top) and absolute errors (bottom, same scale per problem)"),
    ("code", "for label, recs in results.items():\n"
             "    fig, ax = plt.subplots(2, len(recs) + 1, figsize=(2.6 * (len(recs) + 1), 5.4))\n"
             "    ax[0, 0].imshow(x[0, 0], cmap='gray', vmin=0, vmax=1); ax[0, 0].set_title('reference')\n"
             "    errs = {k: (v - x)[0, 0].abs() for k, v in recs.items()}\n"
             "    top = max(float(e.max()) for e in errs.values())\n"
             "    for i, (k, v) in enumerate(recs.items(), start=1):\n"
             "        ax[0, i].imshow(v[0, 0], cmap='gray', vmin=0, vmax=1)\n"
             "        ax[0, i].set_title(f'{k}\\n{psnr(reference=x[0], estimate=v[0]):.2f} dB')\n"
             "        ax[1, i].imshow(errs[k], cmap='magma', vmin=0, vmax=top)\n"
             "    for a in ax.flat:\n"
             "        a.axis('off')\n"
             "    fig.suptitle(label)\n"
             "    plt.tight_layout()\n"
             "    plt.show()"),
    ("md", "## Reading the table\n"
           "The last lines name the best method per problem on this one slice at this size. Things to look "
           "for: the samplers at their defaults against FBP / the pseudo-inverse (the defaults are chosen to "
           "beat the classical reconstruction on every task of the package's task table, "
           "`tests/test_sampler_defaults.py`); against TV, which was tuned per problem here while the "
           "samplers were not; and the error maps, where the prior's failures show as structure rather than "
           "noise. The prior was trained on synthetic ellipse phantoms, never on a real CT slice, so TV "
           "is a hard baseline on real anatomy. Per-task tuned settings (`TASKS[name].settings`) and the "
           "measured tables over many images are in `benchmarks/README.md`. DPS returns one posterior sample, which can score below FBP where the posterior is broad; `sampler.posterior(y, physics, num_samples=N).mean` is its point estimate."),
]


def main() -> None:
    build(CELLS, "ct_and_restoration.ipynb")


if __name__ == "__main__":
    main()
