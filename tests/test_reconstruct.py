"""End-to-end tests of ``diffinverse-reconstruct`` through ``main(argv)`` on small generated files."""
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffinverse.reconstruct import main

ROOT = Path(__file__).resolve().parents[1]


# --- independent numpy implementations (fastMRI's definitions) ------------------------------
def fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def crop(x, shape):
    h, w = shape
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


def fastmri_metrics(gt, pred):
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    return {"nmse": np.sum((g - p) ** 2) / np.sum(g**2),
            "psnr": peak_signal_noise_ratio(g, p, data_range=g.max()),
            "ssim": np.mean([structural_similarity(g[s], p[s], data_range=g.max()) for s in range(g.shape[0])])}


def make_file(path, *, coils=0, slices=2, shape=(26, 15), recon=(13, 11), targets=("reconstruction_rss",),
              mask=None, header=True, seed=0, scale=1e-4):
    """A fastMRI-layout file of smooth blobs; readout oversampled when shape[0] > recon[0].

    coils=0 makes a single-coil file. Returns (full k-space, mask-applied k-space as stored).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    img = np.zeros((slices, h, w), complex)
    for s in range(slices):
        for _ in range(4):
            cy, cx = rng.uniform(-0.3, 0.3) * recon[0] / h, rng.uniform(-0.4, 0.4)
            img[s] += rng.uniform(0.5, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.12**2))
        img[s] *= np.exp(1j * (0.5 * xx + 0.3 * yy))
    if coils:
        ang = 2 * np.pi * np.arange(coils) / coils
        maps = np.stack([np.exp(-((yy - 0.8 * np.sin(a)) ** 2 + (xx - 0.8 * np.cos(a)) ** 2) / 1.5) * np.exp(1j * a)
                         for a in ang])
        maps /= np.sqrt((np.abs(maps) ** 2).sum(0))
        k = fft2c(maps[None] * img[:, None])
    else:
        k = fft2c(img)
    k = (scale * (k + 1e-4 * (rng.normal(size=k.shape) + 1j * rng.normal(size=k.shape)))).astype(np.complex64)
    coil_imgs = ifft2c(k.astype(np.complex128))
    ref = {"reconstruction_rss": crop(np.sqrt((np.abs(coil_imgs) ** 2).sum(1)) if coils else np.abs(coil_imgs), recon),
           "reconstruction_esc": crop(np.abs(coil_imgs if not coils else coil_imgs[:, 0]), recon)}
    stored = k if mask is None else (k * mask).astype(np.complex64)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=stored)
        for key in targets:
            f.create_dataset(key, data=ref[key].astype(np.float32))
        if mask is not None:
            f.create_dataset("mask", data=mask.astype(bool))
        if header:
            f.create_dataset("ismrmrd_header", data=(
                f'<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
                f"<encodedSpace><matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize></encodedSpace>"
                f"<reconSpace><matrixSize><x>{recon[0]}</x><y>{recon[1]}</y><z>1</z></matrixSize>"
                f"<fieldOfView_mm><x>{2 * recon[0]}</x><y>{3 * recon[1]}</y><z>4</z></fieldOfView_mm></reconSpace>"
                f"</encoding></ismrmrdHeader>").encode())
        f.attrs["acquisition"] = "TEST"
    return k, stored


def read_h5(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def check_metrics(record, out_dir, name, targets, methods):
    rec = read_h5(out_dir / f"{name}.h5")["reconstruction"]
    for key, t in targets.items():
        assert set(record["metrics"][key]) == set(methods)
        ref = fastmri_metrics(t, rec)
        for m, v in ref.items():
            assert record["metrics"][key][methods[0]][m] == pytest.approx(v, rel=1e-6, abs=1e-9), (key, m)


# --- tests ------------------------------------------------------------------------------------
def test_single_coil_file_mask_zero_filled_all_formats(tmp_path, capsys):
    w = 15
    mask = np.zeros(w, bool)
    mask[[0, 3, 6, 7, 8, 11]] = True
    make_file(tmp_path / "sc.h5", slices=3, shape=(26, w), recon=(13, 11), mask=mask,
              targets=("reconstruction_rss", "reconstruction_esc"))
    out = tmp_path / "out"
    rc = main([str(tmp_path / "sc.h5"), "--sampler", "zero-filled", "--output", str(out),
               "--format", "h5", "nifti", "png"])
    assert rc == 0
    h5 = read_h5(out / "sc.h5")
    assert set(h5) == {"reconstruction", "mask"} and h5["reconstruction"].dtype == np.float32
    np.testing.assert_array_equal(h5["mask"], mask)  # the file's own mask, as fastMRI stores it
    assert h5["reconstruction"].shape == (3, 13, 11)
    with h5py.File(tmp_path / "sc.h5", "r") as f:
        stored, rss, esc = f["kspace"][()], f["reconstruction_rss"][()], f["reconstruction_esc"][()]
    # the file's own mask is used: zero-filled of the stored (undersampled) k-space, then cropped
    expected = crop(np.abs(ifft2c(stored.astype(np.complex128))), (13, 11))
    np.testing.assert_allclose(h5["reconstruction"], expected, rtol=1e-4, atol=1e-6 * expected.max())
    record = json.loads((out / "metrics.json").read_text())["files"]["sc"]
    assert record["mask"].startswith("file mask")
    check_metrics(record, out, "sc", {"reconstruction_rss": rss, "reconstruction_esc": esc}, ["zero-filled"])
    img = nib.load(out / "sc.nii.gz")
    assert img.shape == (13, 11, 3)
    np.testing.assert_allclose(np.diag(img.affine), [2.0, 3.0, 4.0, 1.0])
    np.testing.assert_allclose(np.asarray(img.dataobj)[:, :, 1], h5["reconstruction"][1], rtol=1e-6)
    assert (out / "sc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "reconstruction_esc" in table and "zero-filled" in table and "1 reconstructed" in table


def test_multicoil_full_sampling_recovers_reference(tmp_path):
    # readout oversampled 40 -> 20 rows, 24 -> 20 columns; full sampling: zero-filled RSS equals the
    # reference exactly, and SENSE with ESPIRiT maps nearly (Tikhonov 0.01 shrinks it by ~1 %, and
    # ESPIRiT's eigenvalue crop zeroes the maps at the faintest background pixels)
    make_file(tmp_path / "mc.h5", coils=4, slices=2, shape=(40, 24), recon=(20, 20))
    out = tmp_path / "out"
    rc = main([str(tmp_path / "mc.h5"), "--sampler", "sense", "--acceleration", "1", "--center-fraction", "1",
               "--output", str(out)])
    assert rc == 0
    record = json.loads((out / "mc.metrics.json").read_text())
    m = record["metrics"]["reconstruction_rss"]
    assert list(m) == ["sense", "zero-filled"]
    assert m["zero-filled"]["nmse"] < 1e-10
    assert m["sense"]["nmse"] < 3e-3
    assert read_h5(out / "mc.h5")["reconstruction"].shape == (2, 20, 20)


def test_multicoil_retrospective_mask_metrics(tmp_path):
    make_file(tmp_path / "odd.h5", coils=3, slices=2, shape=(33, 31), recon=(17, 21), seed=3)
    out = tmp_path / "out"
    rc = main([str(tmp_path / "odd.h5"), "--sampler", "sense", "--mask", "equispaced", "--acceleration", "2",
               "--center-fraction", "0.4", "--slices", "1:", "--output", str(out)])
    assert rc == 0
    with h5py.File(tmp_path / "odd.h5", "r") as f:
        rss = f["reconstruction_rss"][1:]
    record = json.loads((out / "odd.metrics.json").read_text())
    assert record["slices"] == [1, 2] and record["mask"].startswith("equispaced 2x requested, ")
    check_metrics(record, out, "odd", {"reconstruction_rss": rss}, ["sense", "zero-filled"])
    assert record["metrics"]["reconstruction_rss"]["sense"]["psnr"] > 30


def test_tv_single_coil_beats_zero_filled(tmp_path):
    make_file(tmp_path / "t.h5", slices=1, shape=(24, 24), recon=(24, 24), targets=("reconstruction_esc",))
    out = tmp_path / "out"
    assert main([str(tmp_path / "t.h5"), "--sampler", "tv", "--acceleration", "3", "--center-fraction", "0.2",
                 "--output", str(out)]) == 0
    record = json.loads((out / "t.metrics.json").read_text())
    with h5py.File(tmp_path / "t.h5", "r") as f:
        check_metrics(record, out, "t", {"reconstruction_esc": f["reconstruction_esc"][()]}, ["tv", "zero-filled"])
    m = record["metrics"]["reconstruction_esc"]
    assert m["tv"]["psnr"] > m["zero-filled"]["psnr"]


@pytest.fixture(scope="module")
def tiny_priors(tmp_path_factory):
    from diffinverse.priors.checkpoints import save
    from diffinverse.priors.unet import UNet

    d = tmp_path_factory.mktemp("priors")
    paths = {}
    for ch in (1, 2):
        paths[ch] = save(UNet(channels=ch, base_channels=4, channel_mult=(1,), num_res_blocks=1), d / f"p{ch}.safetensors")
    return paths


def test_dps_posterior_writes_std_and_is_deterministic(tmp_path, tiny_priors):
    make_file(tmp_path / "d.h5", coils=2, slices=1, shape=(16, 16), recon=(12, 12), targets=())
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        rc = main([str(tmp_path / "d.h5"), "--sampler", "dps", "--prior", str(tiny_priors[2]), "--steps", "6",
                   "--sigma-start", "0.5", "--num-samples", "2", "--center-fraction", "0.5", "--acceleration", "2",
                   "--seed", "3",
                   "--output", str(out), "--format", "h5", "nifti"])
        assert rc == 0
        runs.append(read_h5(out / "d.h5"))
    a, b = runs
    assert set(a) == {"reconstruction", "std", "mask"} and a["std"].shape == a["reconstruction"].shape == (1, 12, 12)
    assert a["std"].dtype == np.float32 and (a["std"] >= 0).all() and a["std"].max() > 0
    np.testing.assert_array_equal(a["reconstruction"], b["reconstruction"])
    assert nib.load(tmp_path / "a" / "d_std.nii.gz").shape == (12, 12, 1)
    record = json.loads((tmp_path / "a" / "d.metrics.json").read_text())
    assert record["metrics"] == {} and record["nfe"] > 0


def test_reddiff_options_reach_the_sampler(tmp_path, tiny_priors):
    # single-coil, so RED-Diff starts from the zero-filled image A^H y; with a negligible Adam step
    # (--lr) it stays there, whereas the default step moves it. --lam changes the output unless it
    # is the default value.
    from diffinverse.pipelines import SAMPLER_DEFAULTS

    make_file(tmp_path / "s.h5", slices=1, shape=(16, 16), recon=(16, 16))
    common = [str(tmp_path / "s.h5"), "--sampler", "reddiff", "--prior", str(tiny_priors[2]), "--steps", "8",
              "--center-fraction", "0.25", "--format", "h5"]
    lam = str(SAMPLER_DEFAULTS["reddiff"].options["lam"])
    runs = {"default": [], "lr_tiny": ["--reddiff-lr", "1e-9"], "lam_default": ["--reddiff-lam", lam],
            "lam0": ["--reddiff-lam", "0"]}
    psnr, rec = {}, {}
    for name, extra in runs.items():
        assert main([*common, "--output", str(tmp_path / name), *extra]) == 0
        record = json.loads((tmp_path / name / "s.metrics.json").read_text())["metrics"]["reconstruction_rss"]
        psnr[name] = (record["reddiff"]["psnr"], record["zero-filled"]["psnr"])
        rec[name] = read_h5(tmp_path / name / "s.h5")["reconstruction"]
    assert psnr["lr_tiny"][0] == pytest.approx(psnr["lr_tiny"][1], abs=1e-3)
    assert abs(psnr["default"][0] - psnr["default"][1]) > 0.01
    np.testing.assert_array_equal(rec["lam_default"], rec["default"])
    assert np.abs(rec["lam0"] - rec["default"]).max() > 1e-3 * np.abs(rec["default"]).max()


def test_adapt_trains_adapters_during_the_run_and_is_recorded(tmp_path, tiny_priors):
    """--adapt changes the reconstruction (LoRA adapters trained on the file's measurements), leaves
    the prior file untouched, and is part of the recorded options that --resume compares."""
    make_file(tmp_path / "a.h5", slices=1, shape=(16, 16), recon=(16, 16))
    before = Path(tiny_priors[2]).read_bytes()
    common = [str(tmp_path / "a.h5"), "--sampler", "dds", "--prior", str(tiny_priors[2]), "--steps", "8",
              "--center-fraction", "0.25", "--format", "h5"]
    assert main([*common, "--output", str(tmp_path / "plain")]) == 0
    assert main([*common, "--output", str(tmp_path / "adapted"), "--adapt", "--adapt-lr", "0.01",
                 "--adapt-every", "1"]) == 0
    plain, adapted = (read_h5(tmp_path / d / "a.h5")["reconstruction"] for d in ("plain", "adapted"))
    assert np.abs(adapted - plain).max() > 1e-4 * np.abs(plain).max()
    assert Path(tiny_priors[2]).read_bytes() == before
    record = json.loads((tmp_path / "adapted" / "a.metrics.json").read_text())
    assert record["options"]["adapt"]["lr"] == 0.01 and record["options"]["adapt"]["every"] == 1
    assert "adapted (LoRA rank 4" in record["method"]
    assert json.loads((tmp_path / "plain" / "a.metrics.json").read_text())["options"]["adapt"] is None
    assert record["options"]["second_map_set"] == "model"


def test_stsl_runs_on_the_shipped_latent_prior_by_default(tmp_path, capsys):
    """--sampler stsl loads mri-brain-latent unless --prior is given, takes its --stsl-* options
    and records them; an image size the autoencoder cannot take fails that file with a clear
    message (exit 1)."""
    make_file(tmp_path / "l.h5", coils=2, slices=1, shape=(32, 32), recon=(32, 32))
    out = tmp_path / "out"
    assert main([str(tmp_path / "l.h5"), "--sampler", "stsl", "--steps", "4", "--stsl-inner-steps", "1",
                 "--center-fraction", "0.25", "--output", str(out)]) == 0
    record = json.loads((out / "l.metrics.json").read_text())
    assert record["options"]["prior"] == "mri-brain-latent" and record["nfe"] > 0
    assert record["options"]["sampler_options"]["inner_steps"] == 1
    assert record["options"]["second_map_set"] == "sense"     # the latent prior models one image
    rec = read_h5(out / "l.h5")["reconstruction"]
    assert rec.shape == (1, 32, 32) and np.isfinite(rec).all() and rec.max() > 0
    make_file(tmp_path / "odd.h5", coils=2, slices=1, shape=(30, 30), recon=(30, 30))   # 30: not a multiple of 4
    assert main([str(tmp_path / "odd.h5"), "--sampler", "stsl", "--steps", "2", "--stsl-inner-steps", "1",
                 "--acceleration", "2", "--center-fraction", "0.25", "--output", str(tmp_path / "odd")]) == 1
    printed = capsys.readouterr()
    assert "odd.h5" in printed.out and "not a multiple of the autoencoder's downsampling factor 4" in printed.out


def test_bf16_runs_the_network_in_bfloat16(tmp_path, monkeypatch):
    # --bf16 reaches the sampler: the prior runs under bf16 autocast, and the output is the
    # float32 run's up to bf16 rounding; the record says how the network ran. (The shipped prior:
    # a freshly initialised UNet returns its input exactly, its output convolution being zero.)
    from diffinverse.priors.unet import UNet

    make_file(tmp_path / "h.h5", coils=2, slices=1, shape=(16, 16), recon=(16, 16), seed=6)
    seen = []
    denoise = UNet.denoise

    def recording_denoise(self, *args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return denoise(self, *args, **kwargs)

    monkeypatch.setattr(UNet, "denoise", recording_denoise)
    rec, method = {}, {}
    for name, extra in (("fp32", []), ("bf16", ["--bf16"])):
        seen.clear()
        assert main([str(tmp_path / "h.h5"), "--sampler", "reddiff", "--steps", "8", "--center-fraction", "0.25",
                     "--device", "cpu", "--output", str(tmp_path / name), *extra]) == 0
        assert seen and set(seen) == {torch.bfloat16 if extra else None}
        rec[name] = read_h5(tmp_path / name / "h.h5")["reconstruction"]
        method[name] = json.loads((tmp_path / name / "h.metrics.json").read_text())["method"]
    assert not np.array_equal(rec["bf16"], rec["fp32"])
    # close in norm: bf16 rounding through 8 RED-Diff steps, on a 16x16 image where single pixels
    # differ by up to a tenth of the peak on some CPUs
    assert np.linalg.norm(rec["bf16"] - rec["fp32"]) < 0.05 * np.linalg.norm(rec["fp32"])
    assert method["bf16"].endswith("network in bf16)") and "bf16" not in method["fp32"]


@pytest.mark.parametrize("coils", [4, 0])
def test_tv_reconstructs_each_slice_alone_whatever_the_batch_size(tmp_path, coils):
    # TV runs slice by slice, each to its own tolerance: the same images with --batch-size 3 and 1
    # (run as one batch, every slice would iterate until the slowest converged)
    make_file(tmp_path / "b.h5", coils=coils, slices=3, shape=(32, 32), recon=(32, 32), seed=5)
    rec = {}
    for size in ("3", "1"):
        assert main([str(tmp_path / "b.h5"), "--acceleration", "3", "--center-fraction", "0.2", "--sampler", "tv",
                     "--batch-size", size, "--output", str(tmp_path / size)]) == 0
        rec[size] = read_h5(tmp_path / size / "b.h5")["reconstruction"]
    np.testing.assert_allclose(rec["3"], rec["1"], rtol=0, atol=1e-5 * np.abs(rec["1"]).max())


def test_warm_start_tv_starts_the_sampler_from_the_tv_reconstruction(tmp_path, tiny_priors):
    # with a negligible step RED-Diff returns its start: the TV image with --warm-start tv (the
    # same as --sampler tv), the SENSE image without it (which differs from TV by over 1 % of the peak)
    make_file(tmp_path / "w.h5", coils=2, slices=1, shape=(20, 20), recon=(20, 20), seed=4)
    common = [str(tmp_path / "w.h5"), "--acceleration", "3", "--center-fraction", "0.2", "--format", "h5"]
    sampler = ["--sampler", "reddiff", "--prior", str(tiny_priors[2]), "--steps", "8", "--reddiff-lr", "1e-9"]
    runs = {"tv": ["--sampler", "tv"], "warm_tv": [*sampler, "--warm-start", "tv"], "warm_sense": sampler}
    rec = {}
    for name, extra in runs.items():
        assert main([*common, "--output", str(tmp_path / name), *extra]) == 0
        rec[name] = read_h5(tmp_path / name / "w.h5")["reconstruction"]
    scale = np.abs(rec["tv"]).max()
    np.testing.assert_allclose(rec["warm_tv"], rec["tv"], atol=1e-4 * scale)
    assert np.abs(rec["warm_sense"] - rec["tv"]).max() > 1e-2 * scale


def test_diffusion_samplers_keep_the_second_map_image_of_a_wrapped_field_of_view(tmp_path, tiny_priors):
    # a 96-wide head seen through a 64-wide field of view: the ESPIRiT second map set carries the
    # folded-over part. The prior models one image per slice, so the command line reconstructs the
    # first map's image and keeps the second from SENSE: with a negligible step (--lr) RED-Diff
    # returns two-map SENSE exactly.
    import torch.nn.functional as F

    from diffinverse.datasets.brain import BrainSlices
    from diffinverse.operators import simulate_coil_maps

    x = BrainSlices("test", generator=torch.Generator().manual_seed(0)).sample(1)[0]      # (2, 256, 256)
    img = F.interpolate(x[None], size=(64, 96), mode="area")[0]
    coil = simulate_coil_maps(8, (64, 96)).numpy() * torch.complex(img[0], img[1]).numpy()
    wrapped = coil[..., :64].copy()
    wrapped[..., :32] += coil[..., 64:]
    with h5py.File(tmp_path / "wrap.h5", "w") as f:
        f.create_dataset("kspace", data=fft2c(wrapped)[None].astype(np.complex64))
        f.create_dataset("reconstruction_rss", data=np.sqrt((np.abs(wrapped) ** 2).sum(0))[None].astype(np.float32))
    out = tmp_path / "out"
    assert main([str(tmp_path / "wrap.h5"), "--sampler", "reddiff", "--prior", str(tiny_priors[2]), "--steps", "8",
                 "--acceleration", "2", "--center-fraction", "0.4", "--reddiff-lr", "1e-9", "--output", str(out)]) == 0
    scores = json.loads((out / "wrap.metrics.json").read_text())["metrics"]["reconstruction_rss"]
    assert scores["reddiff"]["psnr"] == pytest.approx(scores["sense"]["psnr"], abs=1e-4)
    assert scores["reddiff"]["ssim"] == pytest.approx(scores["sense"]["ssim"], abs=1e-5)


def test_overwrite_protection_and_resume(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        make_file(data / f"f{i}.h5", slices=1, shape=(12, 10), recon=(8, 8), seed=i)
    out = tmp_path / "out"
    args = [str(data), "--sampler", "zero-filled", "--output", str(out), "--center-fraction", "0.3", "--acceleration", "3"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"f0.h5", "f0.metrics.json", "f1.h5", "f1.metrics.json", "metrics.json"}
    capsys.readouterr()
    assert main(args + ["--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "f0.h5" in err and "already exists" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # an interrupted run: f1 lacks its completion marker, so --resume redoes f1 only
    (out / "f1.metrics.json").unlink()
    assert main(args + ["--resume"]) == 0
    assert "1 reconstructed, 1 skipped" in capsys.readouterr().out
    assert (out / "f0.h5").read_bytes() == before["f0.h5"]
    assert sorted(json.loads((out / "metrics.json").read_text())["files"]) == ["f0", "f1"]
    assert main([*args[:-1], "2", "--overwrite"]) == 0
    assert "2 reconstructed, 0 skipped" in capsys.readouterr().out
    assert (out / "f0.h5").read_bytes() != before["f0.h5"]


def test_bad_files_are_reported_and_skipped(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    make_file(data / "good.h5", slices=1, shape=(12, 10), recon=(8, 8))
    (data / "nothdf5.h5").write_bytes(b"just text")
    with h5py.File(data / "nokspace.h5", "w") as f:
        f.create_dataset("reconstruction_rss", data=np.ones((1, 8, 8), np.float32))
    with h5py.File(data / "rank.h5", "w") as f:
        f.create_dataset("kspace", data=np.ones((8, 8), np.complex64))
    k = np.ones((2, 12, 10), np.complex64)
    k[1, 0, 0] = np.inf
    with h5py.File(data / "inf.h5", "w") as f:
        f.create_dataset("kspace", data=k)
    with h5py.File(data / "maskwidth.h5", "w") as f:
        f.create_dataset("kspace", data=np.ones((1, 12, 10), np.complex64))
        f.create_dataset("mask", data=np.ones(9, bool))
    out = tmp_path / "out"
    assert main([str(data), "--sampler", "zero-filled", "--output", str(out), "--center-fraction", "0.3",
                 "--acceleration", "3"]) == 1
    printed = capsys.readouterr().out
    assert "1 reconstructed, 0 skipped (complete, --resume), 5 failed" in printed
    failed = json.loads((out / "metrics.json").read_text())["failed"]
    expected = {"nothdf5": "not an HDF5 file", "nokspace": "no 'kspace' dataset",
                "rank": "'kspace' must be (slices, H, W) or (slices, coils, H, W)",
                "inf": "'kspace' holds NaN or Inf values", "maskwidth": "'mask' must have shape (10,)"}
    assert set(failed) == set(expected)
    for name, message in expected.items():
        assert str(data / f"{name}.h5") in failed[name] and message in failed[name]
        assert f"failed: {name}: " in printed
        assert not list(out.glob(f"{name}*"))
    assert (out / "good.h5").exists()


@pytest.mark.parametrize("extra, message", [
    (["--sampler", "dps", "--prior", "no-such-prior"], "cannot load prior 'no-such-prior'"),
    (["--sampler", "dps", "--prior", "P1"], "1 channel(s); MRI reconstruction needs a 2-channel"),
    (["--slices", "a:b"], "--slices must look like"),
    (["--num-samples", "2", "--sampler", "sense"], "--num-samples > 1 needs a diffusion sampler"),
    (["--sampler", "dps", "--reddiff-lr", "0.1"], "--reddiff-lr applies to --sampler reddiff, not dps"),
    (["--sampler", "reddiff", "--dps-zeta", "1"], "--dps-zeta applies to --sampler dps, not reddiff"),
    (["--sampler", "reddiff", "--dps-squared-norm"], "--dps-squared-norm applies to --sampler dps, not reddiff"),
    (["--sampler", "reddiff", "--zeta", "1"], "--dps-zeta applies to --sampler dps, not reddiff"),
    (["--sampler", "dps", "--dps-zeta", "1", "--zeta", "2"], "give --dps-zeta or its deprecated name --zeta, not both"),
    (["--sampler", "sense", "--warm-start", "tv"], "--warm-start applies to the diffusion samplers (dps, reddiff, dds, stsl), not sense"),
    (["--sampler", "tv", "--bf16"], "--bf16 applies to the diffusion samplers (dps, reddiff, dds, stsl), not tv"),
    (["--sampler", "reddiff", "--reddiff-lam", "-1"], "--sampler reddiff: "),   # the sampler's own range check
    (["--sampler", "dps", "--dps-zeta", "nan"], "--dps-zeta must be a finite number, got nan"),
    (["--sampler", "dps", "--sigma-start", "1e6"], "exceeds the prior's largest noise level"),
    (["--sampler", "dds", "--adapt-lr", "1e-3"], "--adapt-lr need(s) --adapt"),
    (["--sampler", "tv", "--adapt"], "--adapt applies to the diffusion samplers (dps, reddiff, dds, stsl), not tv"),
    (["--sampler", "dds", "--adapt", "--adapt-rank", "0"], "--adapt: "),   # Adaptation's own range check
    (["--sampler", "sense", "--second-map-set", "model"],
     "--second-map-set applies to tv and the diffusion samplers (dps, reddiff, dds, stsl), not sense"),
    (["--sampler", "stsl", "--second-map-set", "model"], "--second-map-set model: second_map_set='model' needs a pixel prior"),
])
def test_configuration_errors_exit_2_before_writing(tmp_path, capsys, tiny_priors, extra, message):
    make_file(tmp_path / "x.h5", slices=1, shape=(12, 10), recon=(8, 8))
    extra = [str(tiny_priors[1]) if e == "P1" else e for e in extra]
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated names' warning (tested below)
        assert main([str(tmp_path / "x.h5"), "--output", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("old, new, value", [("--lr", "--reddiff-lr", "1e-9"), ("--lam", "--reddiff-lam", "0")])
def test_deprecated_option_names_still_work_with_a_warning(tmp_path, tiny_priors, old, new, value):
    # the former flat names reach the same sampler option as the namespaced ones, for one version
    make_file(tmp_path / "s.h5", slices=1, shape=(16, 16), recon=(16, 16))
    common = [str(tmp_path / "s.h5"), "--sampler", "reddiff", "--prior", str(tiny_priors[2]), "--steps", "8",
              "--center-fraction", "0.25", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main([*common, new, value, "--output", str(tmp_path / "new")]) == 0
    with pytest.warns(FutureWarning, match=f"{old} is deprecated and will be removed in the next version; use {new}"):
        assert main([*common, old, value, "--output", str(tmp_path / "old")]) == 0
    a, b = (read_h5(tmp_path / d / "s.h5")["reconstruction"] for d in ("new", "old"))
    np.testing.assert_array_equal(a, b)
    default = tmp_path / "default"
    assert main([*common, "--output", str(default)]) == 0
    assert not np.array_equal(read_h5(default / "s.h5")["reconstruction"], a)


def test_sampler_options_come_from_the_sampler_table():
    from diffinverse.pipelines import SAMPLER_DEFAULTS
    from diffinverse.reconstruct import build_parser
    from diffinverse.samplers import SAMPLERS

    text = build_parser().format_help()
    for name in SAMPLER_DEFAULTS:
        for option in SAMPLERS[name].options:
            assert f"--{name}-{option.replace('_', '-')}" in text


def test_cold_start(tmp_path, tiny_priors):
    make_file(tmp_path / "c.h5", slices=1, shape=(16, 16), recon=(16, 16))
    records = {}
    for name, extra in (("warm", []), ("cold", ["--sigma-start", "none"])):
        assert main([str(tmp_path / "c.h5"), "--sampler", "dps", "--prior", str(tiny_priors[2]), "--steps", "6",
                     "--center-fraction", "0.25", "--output", str(tmp_path / name), *extra]) == 0
        records[name] = json.loads((tmp_path / name / "c.metrics.json").read_text())
    assert "cold start" in records["cold"]["method"] and "warm start from sense" in records["warm"]["method"]
    assert records["cold"]["nfe"] > records["warm"]["nfe"]


def test_missing_input_and_output_collision(tmp_path, capsys):
    assert main([str(tmp_path / "nope.h5"), "--output", str(tmp_path)]) == 2
    assert "nope.h5: no such file or directory" in capsys.readouterr().err
    make_file(tmp_path / "x.h5", slices=1, shape=(12, 10), recon=(8, 8))
    before = (tmp_path / "x.h5").read_bytes()
    assert main([str(tmp_path / "x.h5"), "--output", str(tmp_path), "--overwrite"]) == 2
    assert "would replace the input file" in capsys.readouterr().err
    assert (tmp_path / "x.h5").read_bytes() == before


def test_failure_while_writing_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    make_file(tmp_path / "x.h5", slices=1, shape=(12, 10), recon=(8, 8))

    def broken(img, path):  # nibabel's writer dies half-way through the NIfTI file
        Path(path).write_bytes(b"half a nifti")
        raise OSError("disk full (injected)")

    monkeypatch.setattr("nibabel.save", broken)
    out = tmp_path / "out"
    assert main([str(tmp_path / "x.h5"), "--sampler", "zero-filled", "--format", "h5", "nifti",
                 "--center-fraction", "0.3", "--acceleration", "3", "--output", str(out)]) == 1
    assert "disk full (injected)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_demo_file_is_bundled_and_runs(tmp_path):
    out = tmp_path / "demo"
    assert main(["--demo", "--sampler", "zero-filled", "--slices", "1:2", "--output", str(out)]) == 0
    record = json.loads((out / "demo_brain.metrics.json").read_text())
    assert record["coils"] == 8 and record["shape"] == [1, 160, 128]
    assert set(record["metrics"]["reconstruction_rss"]) == {"zero-filled", "sense"}


@pytest.mark.parametrize("sampler", ["dps", "reddiff"])
def test_demo_samplers_beat_baselines_at_their_defaults(tmp_path, sampler):
    # a regression test of the pipeline's defaults (SAMPLER_DEFAULTS), which were chosen on this
    # file (the scores: benchmarks/)
    out = tmp_path / "demo"
    assert main(["--demo", "--sampler", sampler, "--slices", "0:2", "--device", "cpu", "--output", str(out)]) == 0
    scores = json.loads((out / "demo_brain.metrics.json").read_text())["metrics"]["reconstruction_rss"]
    for baseline in ("sense", "zero-filled"):
        assert scores[sampler]["psnr"] > scores[baseline]["psnr"] + 1.0, baseline
        assert scores[sampler]["ssim"] > scores[baseline]["ssim"] + 0.05, baseline


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_style_sharding_two_cpu_ranks(tmp_path, monkeypatch, capsys):
    # rank 1 is a fresh process; rank 0 runs here, in a thread (so a hang fails instead of blocking)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        make_file(data / f"s{i}.h5", slices=1, shape=(12, 10), recon=(8, 8), seed=i)
    out = tmp_path / "out"
    argv = [str(data), "--sampler", "zero-filled", "--center-fraction", "0.3", "--acceleration", "3", "--device", "cpu",
            "--output", str(out)]
    dist_env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env = dict(os.environ, **dist_env, RANK="1", LOCAL_RANK="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "diffinverse.reconstruct", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for key, value in {**dist_env, "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", main(argv)), daemon=True)
    thread.start()
    thread.join(timeout=150)
    stdout1, stderr1 = proc.communicate(timeout=30)
    assert not thread.is_alive(), f"rank 0 hung; rank 1 said: {stderr1[-2000:]}"
    assert (result["rc"], proc.returncode) == (0, 0), stderr1[-2000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert sorted(summary["files"]) == ["s0", "s1", "s2"]
    assert "3 reconstructed" in capsys.readouterr().out and stdout1 == ""
    assert all((out / f"s{i}.h5").exists() for i in range(3))


_FAULTS_OF_A_LARGE_BLOCK = """
import resource, sys, torch
from diffinverse.reconstruct import keep_freed_memory   # as the command imports it (heap layout)
applied = keep_freed_memory() if sys.argv[1] == "apply" else None
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(64 << 20, dtype=torch.uint8)   # a 64 MiB block, written and freed once
per_block = []
for _ in range(4):
    before = faults()
    torch.ones(64 << 20, dtype=torch.uint8)
    per_block.append(faults() - before)
print(applied, min(per_block))   # the steady state: where the heap's top fell matters only once
"""


def _faults_of_a_large_block(mode: str, env: dict) -> tuple[str, int]:
    """Run the script above in a fresh process with environment ``env``: (applied, fewest faults of
    one block over 4 allocations)."""
    out = subprocess.run([sys.executable, "-c", _FAULTS_OF_A_LARGE_BLOCK, mode], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_stops_fresh_pages_for_large_blocks():
    """With glibc's defaults a 64 MiB block is mapped afresh at every allocation (a page fault per
    4 KiB page when written); after keep_freed_memory() it comes from the heap, already mapped.
    Each process starts with the same environment (none of glibc's MALLOC_* variables set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    _, default = _faults_of_a_large_block("default", env)
    applied, kept = _faults_of_a_large_block("apply", env)
    assert default > 4000          # 16384 pages of 4 KiB per block
    assert applied == "True" and kept < default / 3
    # the environment's own setting stands
    applied, _ = _faults_of_a_large_block("apply", {**env, "MALLOC_MMAP_MAX_": "65536"})
    assert applied == "False"


def test_keep_freed_memory_is_still_importable_from_the_command_line_module():
    import diffinverse.memory
    import diffinverse.reconstruct

    assert diffinverse.reconstruct.keep_freed_memory is diffinverse.memory.keep_freed_memory
