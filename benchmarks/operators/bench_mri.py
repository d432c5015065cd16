"""Multi-coil MRI benchmark and real-data SENSE measurement (not a test).

Speed: forward + adjoint ``A^H(A(x))`` of a 15-coil 320x320 Cartesian operator at batch 1 and 8,
ours (``diffinverse.operators.mri.MultiCoilMRI``; also its fused normal operator ``A_adjoint_A``,
which takes 1D FFTs for this line mask, and "A_adjoint_A 2D", the same mask with one k-space
sample added off the lines, which makes it a pixel mask and takes 2D FFTs) against deepinv's ``MultiCoilMRI`` and sigpy's ``Sense`` (a Python loop over the batch), timed
side by side in one process in interleaved rounds (median of the rounds). Peak memory: each
configuration runs in a fresh subprocess; the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs``) and the peak of the first call above the RSS before it is reported
(after a warm-up call the allocator would serve the measured call from memory it kept).

Quality (``--quality PATH``): on the real fully sampled 8-coil brain (ESPIRiT "brain_alias_8ch",
``DATA`` (320, 256, 8), wrapping FOV), a retrospective 4x mask; PSNR against the fully sampled RSS
image of zero-filled RSS and SENSE-CG with ESPIRiT maps (1 and 2 map sets).

Run:
    OMP_NUM_THREADS=2 python benchmarks/operators/bench_mri.py [--rounds 7] [--quality FILE.mat]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

H = W = 320
COILS = 15


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def make_problem(batch: int):
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(COILS, H, W, generator=g, dtype=torch.complex64)
    maps = maps / maps.abs().pow(2).sum(0).sqrt()
    from diffinverse.operators.masks import random_lines

    mask = random_lines((H, W), 4, 0.08, generator=g)
    x = torch.randn(batch, 2, H, W, generator=g)
    return maps, mask, x


def make_impls(maps, mask):
    """name -> function x (B, 2, H, W) -> A^H A x (B, 2, H, W)."""
    import deepinv
    import sigpy.mri

    from diffinverse.operators.mri import MultiCoilMRI

    ours = MultiCoilMRI(mask, maps)
    # one extra k-space sample off the lines makes it a pixel mask: A^H A then takes 2D FFTs
    pixel_mask = mask.clone()
    pixel_mask[0, (mask[0] == 0).nonzero()[0, 0]] = 1
    ours_2d = MultiCoilMRI(pixel_mask, maps)
    theirs = deepinv.physics.MultiCoilMRI(mask=mask, coil_maps=maps, img_size=(H, W))
    sense = sigpy.mri.linop.Sense(maps.numpy(), weights=mask.numpy())
    normal_sp = sense.H * sense

    def sigpy_fn(x):
        z = (x[:, 0] + 1j * x[:, 1]).numpy()
        out = np.stack([normal_sp(zi) for zi in z])
        return torch.from_numpy(np.stack([out.real, out.imag], 1)).float()

    return {
        "ours A then A^H": lambda x: ours.A_adjoint(ours.A(x)),
        "ours A_adjoint_A": ours.A_adjoint_A,
        "ours A_adjoint_A 2D": ours_2d.A_adjoint_A,
        "deepinv": lambda x: theirs.A_adjoint(theirs.A(x)),
        "sigpy Sense (loop)": sigpy_fn,
    }, ours, theirs


def child(name: str, batch: int) -> None:
    """Peak memory of one configuration (fresh process)."""
    warnings.filterwarnings("ignore")
    maps, mask, x = make_problem(batch)
    fn = make_impls(maps, mask)[0][name]
    # First call: a warm-up call would leave freed memory in the allocator's heap, which the
    # measured call would then reuse without raising the RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kb("VmRSS")
    fn(x)
    print(json.dumps({"peak_mb": (_rss_kb("VmHWM") - before) / 1024}))


def speed(rounds: int) -> None:
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {COILS} coils, {H}x{W}, complex64")
    for batch in (1, 8):
        maps, mask, x = make_problem(batch)
        impls, ours, theirs = make_impls(maps, mask)
        y_ref = theirs.A(x)
        err_a = ((ours.A(x) - y_ref).norm() / y_ref.norm()).item()
        ref = impls["deepinv"](x)
        errs = {k: ((f(x) - ref).norm() / ref.norm()).item() for k, f in impls.items()}
        times = {k: [] for k in impls}
        for f in impls.values():
            f(x)
        for _ in range(rounds):
            for k, f in impls.items():
                t0 = time.perf_counter()
                f(x)
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        mem = {}
        for k in impls:
            out = subprocess.run([sys.executable, __file__, "--child", k, str(batch)], capture_output=True,
                                 text=True, check=True)
            mem[k] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
        print(f"\nbatch {batch}: ours A vs deepinv A rel. diff {err_a:.1e}")
        print(f"{'implementation':22s} {'median ms':>10s} {'deepinv / it':>13s} {'peak MB':>9s} {'rel diff':>9s}")
        for k in impls:
            print(f"{k:22s} {med[k]:10.1f} {med['deepinv'] / med[k]:13.2f} {mem[k]:9.1f} {errs[k]:9.1e}")


def quality(path: str) -> None:
    import scipy.io

    from diffinverse.operators.coils import estimate_coil_maps, rss
    from diffinverse.operators.masks import equispaced_lines, random_lines
    from diffinverse.operators.mri import MultiCoilMRI, ifft2c, to_channels, to_complex

    data = scipy.io.loadmat(path)["DATA"]  # (H, W, C), centred k-space, phase encoding along W
    k = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1))).to(torch.complex64)
    c, h, w = k.shape
    gt = rss(ifft2c(k), dim=0)

    def psnr(img):
        return (20 * torch.log10(gt.max() / (img - gt).pow(2).mean().sqrt())).item()

    print(f"\nreal data {path}: {c} coils, {h}x{w}; PSNR (dB) vs fully sampled RSS, data range = its max")
    for name, mask in (("equispaced 4x", equispaced_lines((h, w), 4, 0.08, generator=torch.Generator().manual_seed(0))),
                       ("random 4x", random_lines((h, w), 4, 0.08, generator=torch.Generator().manual_seed(0)))):
        yk = k * mask
        y = to_channels(yk[None]).contiguous()
        row = {"lines": int(mask[0].sum()), "zero-filled RSS": psnr(rss(ifft2c(yk), dim=0))}
        for m in (1, 2):
            t0 = time.perf_counter()
            maps = estimate_coil_maps(yk, num_maps=m, calib_width=20)  # 20 centre lines = ACS
            t_esp = time.perf_counter() - t0
            for lam, iters in ((0.0, 5), (0.0, 50), (1e-2, 50)):
                op = MultiCoilMRI(mask, maps, cg_lambda=lam, cg_iters=iters, cg_tol=0.0)
                x = to_complex(op.A_dagger(y))[0]
                row[f"SENSE M={m} lambda={lam:g} {iters} it"] = psnr(x.abs() if m == 1 else rss(x, dim=0))
            row[f"ESPIRiT M={m} seconds"] = t_esp
        print(name, json.dumps({k2: round(v, 2) for k2, v in row.items()}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--quality", metavar="MAT", help="path of espirit_brain_alias_8ch.mat")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("IMPL", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if not args.skip_speed:
        speed(args.rounds)
    if args.quality:
        quality(args.quality)


if __name__ == "__main__":
    main()
