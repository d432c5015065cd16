"""Reference outputs of DPS and RED-Diff on the CPU, for checking that a refactor changes no number.

Run it on the old and the new checkout; the second run compares bit for bit:

    PYTHONPATH=/path/to/old python benchmarks/samplers/reference_outputs.py /tmp/before.pt
    python benchmarks/samplers/reference_outputs.py /tmp/after.pt /tmp/before.pt
"""
import sys, torch
from diffinverse.priors import load
from diffinverse.operators import MultiCoilMRI, SingleCoilMRI, random_lines, simulate_coil_maps, CT, Blur, gaussian_kernel
from diffinverse.samplers import DPS, REDDiff
from diffinverse.datasets.brain import BrainSlices

torch.set_num_threads(1)
out = {}
mri = load("mri-brain"); ct = load("ct-ellipses")
g = torch.Generator().manual_seed(0)
n = 32
x = BrainSlices("test", generator=g).sample(2)[..., 112:112 + n, 112:112 + n].contiguous()
maps = simulate_coil_maps(4, (n, n)); mask = random_lines((n, n), 4, 0.1, generator=g)
mc = MultiCoilMRI(mask, maps); sc = SingleCoilMRI(mask)
ymc = mc(x); ysc = sc(x)
xc = torch.rand(1, 1, n, n, generator=g)
ctp = CT(n, torch.linspace(0, 180, 20)[:-1], backend="torch"); yct = ctp(xc)
blur = Blur(gaussian_kernel(1.5)); ybl = blur(xc)
cases = {
  "dps_mc_cold": lambda: DPS(mri, num_steps=8, zeta=1.0, progress=False)(ymc, mc, generator=torch.Generator().manual_seed(1)),
  "dps_mc_warm": lambda: DPS(mri, num_steps=20, zeta=4.0, sigma_start=0.3, progress=False)(ymc, mc, generator=torch.Generator().manual_seed(2)),
  "dps_sc_sq_clip": lambda: DPS(mri, num_steps=8, zeta=0.5, squared_norm=True, clip_x0=True, progress=False)(ysc, sc, generator=torch.Generator().manual_seed(3)),
  "dps_ct": lambda: DPS(ct, num_steps=10, zeta=1e-3, squared_norm=True, sigma_start=0.1, progress=False)(yct, ctp, generator=torch.Generator().manual_seed(4)),
  "dps_ct_nchw": lambda: DPS(ct, num_steps=6, zeta=1.0, channels_last=False, progress=False)(yct, ctp, generator=torch.Generator().manual_seed(5)),
  "dps_blur_bf16": lambda: DPS(ct, num_steps=6, zeta=1.0, autocast=True, progress=False)(ybl, blur, generator=torch.Generator().manual_seed(6)),
  "red_mc_cold": lambda: REDDiff(mri, num_steps=10, lam=0.01, lr=0.05, progress=False)(ymc, mc, generator=torch.Generator().manual_seed(7)),
  "red_mc_warm": lambda: REDDiff(mri, num_steps=30, lam=0.01, lr=0.05, sigma_start=0.2, progress=False)(ymc, mc, generator=torch.Generator().manual_seed(8)),
  "red_ct_sqrt": lambda: REDDiff(ct, num_steps=10, lam=100.0, lr=0.01, weighting="sqrt", progress=False)(yct, ctp, generator=torch.Generator().manual_seed(9)),
  "red_blur_bf16_nchw": lambda: REDDiff(ct, num_steps=8, autocast=True, channels_last=False, progress=False)(ybl, blur, generator=torch.Generator().manual_seed(10)),
  "dps_post": lambda: DPS(mri, num_steps=6, zeta=1.0, progress=False).posterior(ymc, mc, num_samples=3, max_batch=4, generator=torch.Generator().manual_seed(11)).samples,
  "red_post": lambda: REDDiff(mri, num_steps=6, lam=0.01, lr=0.05, sigma_start=0.5, progress=False).posterior(ysc, sc, num_samples=3, max_batch=2, generator=torch.Generator().manual_seed(12)).samples,
}
for k, f in cases.items():
    out[k] = f()
torch.save(out, sys.argv[1])
if len(sys.argv) > 2:
    ref = torch.load(sys.argv[2], weights_only=True)
    for k in cases:
        same = torch.equal(ref[k], out[k])
        print(f"{k:22s} {'bit-identical' if same else 'DIFFERS max abs %.3g' % (ref[k] - out[k]).abs().max()}")
