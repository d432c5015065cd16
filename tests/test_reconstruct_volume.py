"""``diffinverse-reconstruct-volume``: simulated operators, exactness through the scaling and NIfTI
round trip, the affine kept, --resume, several samples, fastMRI files as volumes, and bad input."""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from diffinverse.datasets.ct_slices import synthetic_ct_volumes
from diffinverse.datasets.fastmri import write_fastmri_file
from diffinverse.datasets.volumes import write_volume
from diffinverse.operators.mri import fft2c
from diffinverse.reconstruct_volume import (
    main,
    read_fastmri_volume,
    reconstruct,
    simulate,
)

AFFINE = np.array([[0.0, -0.9, 0.0, 12.0], [1.1, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]])


def _ct_volume(depth=4, size=16, seed=0):
    return synthetic_ct_volumes(1, (depth, size, size), generator=torch.Generator().manual_seed(seed))


def _write(tmp_path, x, name="vol.nii.gz", affine=AFFINE):
    return write_volume(tmp_path / name, x, affine, axis=2)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


# --- the library half ---------------------------------------------------------------------------

def test_fully_sampled_mri_without_noise_gives_back_the_volume():
    """Known answer: acceleration 1, no noise: the zero-filled (adjoint) reconstruction is the volume,
    through the scaling into the prior's range and back."""
    x = _ct_volume()[0, 0] * 7.0 + 1.0
    p = simulate(x, "mri", acceleration=1.0, noise=0.0)
    rec = reconstruct(p, "adjoint")
    torch.testing.assert_close(rec.magnitude * p.scale, x, rtol=1e-5, atol=1e-5)


def test_per_slice_masks_give_each_chunk_its_own_operator():
    x = _ct_volume(depth=5)[0, 0]
    p = simulate(x, "mri", acceleration=4.0, mask_per_slice=True, noise=0.0)
    op = p.slice_physics(1, 4)
    assert not torch.equal(op.mask[0], op.mask[1])         # the slices' masks differ
    torch.testing.assert_close(op.A(p.x[0].movedim(1, 0)[1:4]), p.y[0].movedim(1, 0)[1:4])


def test_multicoil_and_fan_beam_operators_measure_the_volume():
    x = _ct_volume(depth=3)[0, 0]
    mc = simulate(x, "mri", coils=4, noise=0.5, mask_per_slice=True)
    assert mc.y.shape == (1, 2, 3, 4, 16, 16)
    masks = mc.physics.op2d.mask                              # (3, 16, 16): one per slice
    unsampled = (masks == 0)[None, None, :, None].expand_as(mc.y)
    assert unsampled.any() and (mc.y[unsampled] == 0).all()   # the noise only where k-space is sampled
    assert (mc.y[~unsampled] != 0).all()
    fan = simulate(x, "ct", views=8, geometry="fan", angle_range=200.0, noise=0.0)
    assert fan.physics.op2d.geometry == "fan"
    assert math.isclose(float(fan.physics.op2d.angles[-1]), math.radians(200.0) * 7 / 8)
    torch.testing.assert_close(fan.y[0, :, 1], fan.physics.op2d.A(fan.x[0, :, 1][None])[0])


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(1, 1, 8, 8), "4-D tensor"),
    (torch.zeros(1, 1, 3, 8, 6), "square slices"),
    (-torch.ones(3, 8, 8), "non-negative"),
])
def test_bad_volumes_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        simulate(bad, "ct")


def test_chunk_size_below_one_is_refused():
    p = simulate(_ct_volume()[0, 0], "ct", views=4)
    with pytest.raises(ValueError, match="chunk_size"):
        reconstruct(p, "mbir", prior=object(), chunk_size=0)


# --- the command line -----------------------------------------------------------------------------

def test_mbir_writes_the_affine_metrics_and_resumes(tmp_path, capsys):
    x = _ct_volume(depth=6)
    src = _write(tmp_path, x)
    out = tmp_path / "out"
    argv = [src, "--modality", "ct", "--views", "8", "--steps", "2", "--chunk-size", "3", "--slices", "1:5",
            "--output", out]
    code, cap = _run(capsys, *argv)
    assert code == 0, cap.err
    img = nib.load(str(out / "vol.nii.gz"))
    shifted = AFFINE.copy()
    shifted[:3, 3] += AFFINE[:3, 2]                         # --slices 1:5 starts one slice in
    np.testing.assert_allclose(img.affine, shifted, atol=1e-5)
    assert img.shape == (16, 16, 4)
    rec = json.loads((out / "vol.metrics.json").read_text())
    assert rec["nfe"] == 2 * 2                              # 2 steps, 2 chunks of at most 3 slices
    assert rec["options"]["lam"] == 1.0 and rec["slices"] == [1, 5]
    data = np.asarray(img.dataobj)
    psnr = 10 * np.log10(x.max().item() ** 2 / np.mean((data - x[0, 0, 1:5].permute(1, 2, 0).numpy()) ** 2))
    assert abs(psnr - rec["metrics"]["mbir"]["psnr_volume"]) < 1e-3   # outputs in the input's units
    # existing outputs: refused without --overwrite/--resume; --resume skips the complete input
    code, cap = _run(capsys, *argv)
    assert code == 2 and "already exist" in cap.err
    mtime = (out / "vol.nii.gz").stat().st_mtime_ns
    code, cap = _run(capsys, *argv, "--resume")
    assert code == 0 and "1 skipped" in cap.out
    assert (out / "vol.nii.gz").stat().st_mtime_ns == mtime
    # the noisy mode gets its own (the official code's) lam and rho unless they are given; it needs
    # more steps than 2 to reach an image
    code, cap = _run(capsys, *argv, "--mbir-dc", "noisy", "--steps", "40", "--output", tmp_path / "noisy")
    assert code == 0, cap.err
    options = json.loads((tmp_path / "noisy" / "vol.metrics.json").read_text())["options"]
    assert (options["dc"], options["lam"], options["rho"]) == ("noisy", 0.04, 10.0)


def test_several_samples_write_a_std_volume_and_slice_by_slice_samplers_run(tmp_path, capsys):
    src = _write(tmp_path, _ct_volume(depth=3), name="v.nii")
    code, cap = _run(capsys, src, "--modality", "mri", "--sampler", "dds", "--steps", "4", "--chunk-size", "2",
                     "--num-samples", "2", "--mask-per-slice", "--output", tmp_path / "o")
    assert code == 0, cap.err
    std = np.asarray(nib.load(str(tmp_path / "o" / "v_std.nii.gz")).dataobj)
    assert std.shape == (16, 16, 3) and std.max() > 0
    assert json.loads((tmp_path / "o" / "v.metrics.json").read_text())["num_samples"] == 2


def test_a_fastmri_file_is_read_as_a_volume(tmp_path, capsys):
    vol = _ct_volume(depth=3)[0, 0]
    k = fft2c(torch.complex(vol, torch.zeros_like(vol)))
    path = write_fastmri_file(tmp_path / "f.h5", k, recon_size=(16, 16), fov_mm=(32.0, 32.0, 3.0))
    x, aff = read_fastmri_volume(path)          # no target: RSS of the inverse FFT
    torch.testing.assert_close(x[0, 0], vol, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.diag(aff), [2.0, 2.0, 3.0, 1.0])
    code, cap = _run(capsys, path, "--modality", "mri", "--sampler", "adjoint", "--acceleration", "1",
                     "--noise", "0", "--output", tmp_path / "o")
    assert code == 0, cap.err
    assert json.loads((tmp_path / "o" / "f.metrics.json").read_text())["metrics"]["adjoint"]["psnr_volume"] > 80


def test_bad_inputs_exit_2_naming_the_problem(tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.float32), None), str(tmp_path / "noaff.nii"))
    img = nib.Nifti1Image(np.ones((8, 8, 3), np.float32), np.eye(4))
    nib.save(img, str(tmp_path / "ok.nii"))
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3, 2), np.float32), np.eye(4)), str(tmp_path / "series.nii"))
    nib.save(nib.Nifti1Image(np.ones((8, 6, 3), np.float32), np.eye(4)), str(tmp_path / "rect.nii"))
    out = tmp_path / "out"
    for argv, match in [
        ([tmp_path / "noaff.nii", "--modality", "ct"], "no usable affine"),
        ([tmp_path / "series.nii", "--modality", "ct"], "4-D time series"),
        ([tmp_path / "rect.nii", "--modality", "ct"], "square slices"),
        ([tmp_path / "ok.nii", "--modality", "ct", "--chunk-size", "0"], "--chunk-size must be >= 1"),
        ([tmp_path / "ok.nii"], "--modality"),
        ([tmp_path / "ok.nii", "--modality", "ct", "--dds-gamma", "1"], "applies to --sampler dds"),
        ([tmp_path / "ok.nii", "--modality", "mri", "--prior", "ct-ellipses"], "channel"),
    ]:
        code, cap = _run(capsys, *argv, "--output", out)
        assert code == 2 and match in cap.err, (argv, cap.err)
    assert not out.exists()                                  # nothing written before the checks pass
