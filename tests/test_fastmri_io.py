"""fastMRI HDF5 reading, validation messages, atomic writing and the centre crop."""
import os

import h5py
import numpy as np
import pytest
import torch

from diffinverse._io import new_file_mode
from diffinverse.datasets.fastmri import (FastMRIError, FastMRIFile, atomic_output, center_crop, read_mask,
                                          write_fastmri_file, write_submission)

HEADER = b"""<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>
<encodedSpace><matrixSize><x>24</x><y>13</y><z>1</z></matrixSize></encodedSpace>
<reconSpace><matrixSize><x>10</x><y>9</y><z>1</z></matrixSize>
<fieldOfView_mm><x>200</x><y>180</y><z>5</z></fieldOfView_mm></reconSpace></encoding></ismrmrdHeader>"""


def _kspace(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def _raw_file(path, **datasets):
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            if key == "attrs":
                f.attrs.update(value)
            else:
                f.create_dataset(key, data=value)
    return path


def test_reads_multicoil_file_written_with_h5py(tmp_path):
    k = _kspace((3, 4, 24, 13))
    rss = np.abs(np.random.default_rng(1).normal(size=(3, 10, 9))).astype(np.float32)
    p = _raw_file(tmp_path / "a.h5", kspace=k, reconstruction_rss=rss, ismrmrd_header=HEADER,
                  attrs={"acquisition": "AXT2", "max": 3.5, "norm": 1.0})
    with FastMRIFile(p) as f:
        assert f.multicoil and (f.num_slices, f.num_coils, f.shape) == (3, 4, (24, 13))
        assert f.recon_size == (10, 9) and f.encoding_size == (24, 13)
        assert f.voxel_size_mm == pytest.approx((20.0, 20.0, 5.0))
        assert f.mask is None and f.targets == ["reconstruction_rss"]
        assert f.attrs == {"acquisition": "AXT2", "max": 3.5, "norm": 1.0}
        np.testing.assert_array_equal(f.read_kspace(1), k[1])
        got = f.read_kspace(slice(1, 3))
        assert got.dtype == np.complex64 and got.shape == (2, 4, 24, 13)
        np.testing.assert_array_equal(f.read_target("reconstruction_rss", slice(0, 2)), rss[:2])
        with pytest.raises(FastMRIError, match="no 'reconstruction_esc'"):
            f.read_target("reconstruction_esc")


def test_single_coil_defaults_and_mask(tmp_path):
    mask = np.zeros(13, bool)
    mask[[0, 5, 6, 7]] = True
    p = _raw_file(tmp_path / "s.h5", kspace=_kspace((2, 400, 13)), mask=mask)
    with FastMRIFile(p) as f:
        assert not f.multicoil and f.num_coils == 1
        # no header: default 320 x 320, limited to the k-space size
        assert f.recon_size == (320, 13) and f.voxel_size_mm is None
        np.testing.assert_array_equal(f.mask, mask.astype(np.float32))
        assert f.read_kspace(0).shape == (400, 13)


def _group(path, name):
    with h5py.File(path, "w") as f:
        f.create_group(name)


def _with_nan(a):
    a[1, 2, 3] = np.nan
    return a


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"this is not hdf5"), "not an HDF5 file"),
    (lambda p: _raw_file(p, reconstruction_rss=np.ones((1, 4, 4), np.float32)), "no 'kspace' dataset"),
    (lambda p: _raw_file(p, kspace=_kspace((4, 4))), r"must be \(slices, H, W\)"),
    (lambda p: _raw_file(p, kspace=np.ones((1, 4, 4), np.float32)), "must be complex"),
    (lambda p: _raw_file(p, kspace=_kspace((1, 4, 6)), mask=np.ones(5, bool)), r"'mask' must have shape \(6,\)"),
    (lambda p: _raw_file(p, kspace=_kspace((2, 4, 6)), reconstruction_esc=np.ones((3, 4, 4), np.float32)),
     "'reconstruction_esc' must be"),
    (lambda p: _raw_file(p, kspace=_kspace((1, 4, 6)), ismrmrd_header=b"<unclosed"), "not valid XML"),
    (lambda p: _group(p, "kspace"), "'kspace' is an HDF5 group, not a dataset"),
    (lambda p: _raw_file(p, kspace=_kspace((2, 4, 6)), reconstruction_rss=_with_nan(np.ones((2, 4, 4), np.float32))),
     r"'reconstruction_rss' holds NaN or Inf values \(slice 1\)"),
    (lambda p: _raw_file(p, kspace=_kspace((2, 4, 6)), reconstruction_esc=np.zeros((2, 4, 4), np.float32)),
     "'reconstruction_esc' has no positive value"),
])
def test_bad_files_name_file_and_problem(tmp_path, make, message):
    p = tmp_path / "bad.h5"
    make(p)
    with pytest.raises(FastMRIError, match=message) as info:
        FastMRIFile(p)
    assert str(info.value).startswith(str(p))


def test_nonfinite_kspace_is_reported_with_slice(tmp_path):
    k = _kspace((3, 2, 8, 8))
    k[2, 1, 3, 3] = np.nan
    with FastMRIFile(_raw_file(tmp_path / "nan.h5", kspace=k)) as f:
        f.read_kspace(slice(0, 2))
        with pytest.raises(FastMRIError, match=r"nan.h5: 'kspace' holds NaN or Inf values \(slices 1:3\)"):
            f.read_kspace(slice(1, None))
    with pytest.raises(FileNotFoundError, match="no such file"):
        FastMRIFile(tmp_path / "missing.h5")


def test_write_fastmri_file_round_trip(tmp_path):
    k = _kspace((2, 3, 17, 11))
    rss = np.ones((2, 9, 7), np.float32)
    p = write_fastmri_file(tmp_path / "w.h5", k, targets={"reconstruction_rss": rss}, recon_size=(9, 7),
                           mask=np.ones(11), attrs={"acquisition": "AXT1"})
    with FastMRIFile(p) as f:
        assert f.recon_size == (9, 7) and f.encoding_size == (17, 11)
        assert f.attrs["max"] == 1.0 and f.attrs["acquisition"] == "AXT1"
        np.testing.assert_array_equal(f.read_kspace(slice(None)), k)
    with pytest.raises(FileExistsError, match="already exists"):
        write_fastmri_file(p, k)


def test_center_crop_matches_fastmri_convention():
    x = np.arange(7 * 6).reshape(7, 6)
    np.testing.assert_array_equal(center_crop(x, (3, 3)), x[2:5, 1:4])
    t = torch.arange(2 * 8 * 5).reshape(2, 8, 5)
    assert torch.equal(center_crop(t, (4, 2)), t[:, 2:6, 1:3])
    with pytest.raises(ValueError, match="fit inside"):
        center_crop(x, (8, 2))


def test_write_submission_layout_and_atomicity(tmp_path):
    rec = torch.rand(2, 5, 4, dtype=torch.float64)
    std = np.full((2, 5, 4), 0.5)
    p = write_submission(tmp_path / "out.h5", rec, std=std, attrs={"sampler": "sense"})
    with h5py.File(p, "r") as f:
        assert set(f.keys()) == {"reconstruction", "std"}
        assert f["reconstruction"].dtype == np.float32 and f["std"].shape == (2, 5, 4)
        np.testing.assert_allclose(f["reconstruction"][()], rec.numpy(), rtol=1e-6)
        assert f.attrs["sampler"] == "sense"
    with pytest.raises(FileExistsError):
        write_submission(p, rec)
    write_submission(p, 2 * rec, overwrite=True)
    with h5py.File(p, "r") as f:
        assert "std" not in f and np.allclose(f["reconstruction"][()], 2 * rec.numpy())
    # a failure while writing leaves neither a partial file nor a temporary one behind
    with pytest.raises(RuntimeError, match="injected"):
        with atomic_output(tmp_path / "new.nii.gz") as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz")
            tmp.write_bytes(b"partial")
            raise RuntimeError("injected")
    assert sorted(os.listdir(tmp_path)) == ["out.h5"]
    with pytest.raises(ValueError, match="real"):
        write_submission(tmp_path / "c.h5", np.ones((1, 2, 2), np.complex64))


def test_zero_slices_are_found(tmp_path):
    k = _kspace((4, 2, 8, 8))
    k[[1, 3]] = 0
    with FastMRIFile(_raw_file(tmp_path / "z.h5", kspace=k)) as f:
        assert f.zero_slices() == [1, 3] and f.zero_slices(slice(2, 4)) == [3] and f.zero_slices(slice(0, 1)) == []


def test_write_submission_stores_the_mask_as_fastmri_does(tmp_path):
    lines = np.array([1, 0, 0, 1, 1, 0, 1], np.float32)
    p = write_submission(tmp_path / "m.h5", np.ones((1, 3, 3)), mask=lines)
    with h5py.File(p, "r") as f:
        assert f["mask"].dtype == bool and f["mask"].shape == (7,)
    np.testing.assert_array_equal(read_mask(p), lines)
    with pytest.raises(ValueError, match="0/1 array"):
        write_submission(tmp_path / "bad.h5", np.ones((1, 3, 3)), mask=np.array([0.0, 0.5]))


def test_read_mask_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_mask(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(FastMRIError, match="not an HDF5 file"):
        read_mask(tmp_path / "text.h5")
    with pytest.raises(FastMRIError, match=r"no 'mask' dataset \(found: \['kspace'\]\)"):
        read_mask(_raw_file(tmp_path / "k.h5", kspace=_kspace((1, 4, 6))))
    with pytest.raises(FastMRIError, match="must be \\(W,\\) lines"):
        read_mask(_raw_file(tmp_path / "3d.h5", mask=np.ones((2, 2, 2))))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_output_gives_a_plain_writes_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w") as f:  # what a plain write gives
            f.write("x")
        with atomic_output(tmp_path / "atomic") as tmp:
            tmp.write_text("x")
        assert new_file_mode(tmp_path / "missing") == 0o666 & ~umask
    finally:
        os.umask(old)
    mode = (tmp_path / "atomic").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~umask
    # replacing a file keeps its mode, as writing into it would
    (tmp_path / "atomic").chmod(0o640)
    with atomic_output(tmp_path / "atomic", overwrite=True) as tmp:
        tmp.write_text("y")
    assert (tmp_path / "atomic").stat().st_mode & 0o777 == 0o640
