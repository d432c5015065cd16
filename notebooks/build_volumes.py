"""Build and execute ``volumes.ipynb``: 3-D reconstruction from a 2-D prior (DiffusionMBIR) on a CT
phantom volume at sparse views and on the held-out brain slab at 4x MRI, seen in three planes.

Usage: ``python notebooks/build_volumes.py`` (needs ``nbclient`` and ``ipykernel``, in the ``test``
extra). The notebook's first code cell holds its size parameters; they are set small so that
``tests/test_notebooks.py`` runs it in CI on one CPU core in well under a minute.
"""
from _build import build

PARAMETERS = (
    "# Parameters, small so that CI runs this notebook on one CPU core in well under a minute.\n"
    "# With time to spare: DEPTH = 16, SIZE = 64, STEPS = 50 (the benchmark's sizes).\n"
    "DEPTH = 8        # slices of each volume\n"
    "SIZE = 32        # in-plane side of each slice\n"
    "VIEWS = 8        # CT projection angles over 180 degrees\n"
    "STEPS = 20       # DiffusionMBIR steps"
)

CELLS = [
    ("md", "# Volumes from a 2-D prior: DiffusionMBIR\n\n"
           "A diffusion prior trained on 2-D slices knows nothing of the third axis: run slice by slice, each "
           "slice is plausible but its neighbours need not agree, which shows in the planes that cut across "
           "the slices (coronal, sagittal). DiffusionMBIR (Chung, Ryu & Ye, CVPR 2023) adds a total-variation "
           "term along the slice axis, solved by ADMM inside the diffusion loop; its Tweedie mode (the default "
           "here, as in DDS) does the data consistency on the denoised estimate, one network pass per step.\n\n"
           "Two problems, both through `diffinverse.reconstruct_volume` (the library half of "
           "`diffinverse-reconstruct-volume`): a synthetic CT phantom at sparse views and the held-out "
           "MNI152 brain slab at 4x single-coil MRI. Methods: the adjoint (FBP / zero-filled), 3-D TV, "
           "DDS slice by slice (the same prior, no coupling across slices) and DiffusionMBIR. The sizes are "
           "tiny so that the notebook runs in CI; `benchmarks/samplers/mbir_results.md` has the measured "
           "comparison at 16 x 64 x 64."),
    ("code", PARAMETERS),
    ("code", "import torch, matplotlib.pyplot as plt\n"
             "from diffinverse.datasets.brain import test_slab_volume\n"
             "from diffinverse.datasets.ct_slices import synthetic_ct_volumes\n"
             "from diffinverse.imaging import magnitude\n"
             "from diffinverse.priors import load\n"
             "from diffinverse.reconstruct_volume import (MBIR_DEFAULTS, PLANES, TV_LAMBDA, plane_scores,\n"
             "                                            reconstruct, simulate)"),
    ("code", "def run_all(problem, prior, modality):\n"
             "    \"\"\"Each method's magnitude volume (scaled units) and its scores against the truth.\"\"\"\n"
             "    g = lambda: torch.Generator().manual_seed(1)\n"
             "    runs = {\n"
             "        'adjoint': reconstruct(problem, 'adjoint'),\n"
             "        '3-D TV': reconstruct(problem, 'tv', tv_lam=TV_LAMBDA[modality]),\n"
             "        'DDS per slice': reconstruct(problem, 'dds', prior=prior, chunk_size=DEPTH, generator=g()),\n"
             "        'DiffusionMBIR': reconstruct(problem, 'mbir', prior=prior, num_steps=STEPS, chunk_size=DEPTH,\n"
             "                                     options=MBIR_DEFAULTS[modality], generator=g()),\n"
             "    }\n"
             "    truth = magnitude(problem.x)[0]\n"
             "    print(f\"{'method':15s} {'NFE':>4s} {'PSNR vol':>9s}\" + ''.join(f'{p:>17s}' for p in PLANES))\n"
             "    for name, r in runs.items():\n"
             "        s = plane_scores(truth, r.magnitude)\n"
             "        print(f'{name:15s} {r.nfe:4d} {s[\"psnr_volume\"]:9.2f}' +\n"
             "              ''.join(f'{s[\"psnr_\" + p]:9.2f} / {s[\"ssim_\" + p]:.3f}' for p in PLANES))\n"
             "    return truth, {name: r.magnitude for name, r in runs.items()}\n\n"
             "def show(truth, volumes, title):\n"
             "    \"\"\"Rows: the truth and each method; columns: the central axial, coronal and sagittal\n"
             "    slices, then each one's absolute error (x 3).\"\"\"\n"
             "    rows = {'truth': truth, **volumes}\n"
             "    fig, ax = plt.subplots(len(rows), 6, figsize=(13, 2.1 * len(rows)), squeeze=False)\n"
             "    vmax = float(truth.max())\n"
             "    cut = lambda v, d: v.movedim(d, 0)[v.shape[d] // 2]\n"
             "    for i, (name, v) in enumerate(rows.items()):\n"
             "        for j, (plane, d) in enumerate(PLANES.items()):\n"
             "            ax[i, j].imshow(cut(v, d), cmap='gray', vmin=0, vmax=vmax, aspect='auto')\n"
             "            ax[i, j + 3].imshow(3 * (cut(v, d) - cut(truth, d)).abs(), cmap='magma', vmin=0, vmax=vmax,\n"
             "                                aspect='auto')\n"
             "            if i == 0:\n"
             "                ax[i, j].set_title(plane); ax[i, j + 3].set_title(f'|error| x 3, {plane}')\n"
             "        ax[i, 0].set_ylabel(name)\n"
             "    for a in ax.flat:\n"
             "        a.set_xticks([]); a.set_yticks([])\n"
             "    fig.suptitle(title); plt.tight_layout()"),
    ("md", "## 1. CT: a phantom volume at sparse views\n"
           "A synthetic CT volume (the `ct-ellipses` prior's training construction in 3-D), measured slice by "
           "slice by parallel-beam CT with `VIEWS` views and 1 % sinogram noise."),
    ("code", "ct_prior = load('ct-ellipses')\n"
             "x_ct = synthetic_ct_volumes(1, (DEPTH, SIZE, SIZE), generator=torch.Generator().manual_seed(0))\n"
             "ct = simulate(x_ct, 'ct', views=VIEWS, noise=0.01, generator=torch.Generator().manual_seed(7))\n"
             "print(ct.description)\n"
             "truth, volumes = run_all(ct, ct_prior, 'ct')\n"
             "show(truth, volumes, f'CT, {VIEWS} views')"),
    ("md", "## 2. MRI: the held-out brain slab at 4x\n"
           "The MNI152 slab that no training slice of `mri-brain` comes near (`test_slab_volume`), reduced to "
           "`SIZE` x `SIZE` in-plane, its central `DEPTH` slices, measured single-coil with one random-lines "
           "mask (4x, 8 % centre) for every slice and k-space noise 0.01."),
    ("code", "mri_prior = load('mri-brain')\n"
             "slab = magnitude(test_slab_volume(size=SIZE))[0]\n"
             "top = (slab.shape[0] - DEPTH) // 2\n"
             "mri = simulate(slab[top:top + DEPTH], 'mri', acceleration=4, center_fraction=0.08, noise=0.01,\n"
             "               generator=torch.Generator().manual_seed(7))\n"
             "print(mri.description)\n"
             "truth, volumes = run_all(mri, mri_prior, 'mri')\n"
             "show(truth, volumes, 'MRI, 4x single-coil')"),
    ("md", "What to look for: slice by slice, nothing ties a slice to its neighbours, so their errors differ "
           "from slice to slice (bands across the coronal and sagittal planes); the TV term along the slice "
           "axis is there to make neighbouring slices agree. At these tiny sizes and step counts the numbers "
           "move with the seed and the settings are not tuned for them: read the tables above as a "
           "demonstration, and `benchmarks/samplers/mbir_results.md` (16 x 64 x 64, 50 steps, settings "
           "chosen on a tuning volume) as the measurement."),
]

if __name__ == "__main__":
    build(CELLS, "volumes.ipynb")
