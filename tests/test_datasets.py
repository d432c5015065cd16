import numpy as np
import pytest
import torch

from diffinverse.datasets.images import RandomCrops, load_folder, random_crop, read_image
from diffinverse.datasets.volumes import nifti_slices, read_nifti, write_nifti


def test_npy_layouts_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    a2 = rng.random((5, 7)).astype(np.float32)
    a4 = rng.random((3, 2, 5, 7)).astype(np.float32)
    c = (rng.random((5, 7)) + 1j * rng.random((5, 7))).astype(np.complex64)
    np.save(tmp_path / "a.npy", a2)
    np.save(tmp_path / "b.npy", a4)
    np.save(tmp_path / "c.npy", c)
    assert torch.equal(read_image(tmp_path / "a.npy"), torch.from_numpy(a2)[None, None])
    assert torch.equal(read_image(tmp_path / "b.npy"), torch.from_numpy(a4))
    z = read_image(tmp_path / "c.npy")
    assert z.shape == (1, 2, 5, 7)
    torch.testing.assert_close(z[0, 0], torch.from_numpy(c.real))
    torch.testing.assert_close(z[0, 1], torch.from_numpy(c.imag))
    with pytest.raises(ValueError, match="different channel counts"):
        load_folder(tmp_path)


def test_png_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    a = (np.arange(48, dtype=np.uint8).reshape(6, 8) * 5)
    Image.fromarray(a).save(tmp_path / "x.png")
    np.save(tmp_path / "y.npy", np.ones((4, 4), np.float32))
    imgs = load_folder(tmp_path)
    assert [tuple(i.shape) for i in imgs] == [(1, 6, 8), (1, 4, 4)]
    torch.testing.assert_close(imgs[0][0], torch.from_numpy(a / 255.0).float())
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_folder(tmp_path / "missing")


def test_random_crops_deterministic():
    imgs = [torch.arange(100.0).reshape(1, 10, 10), torch.zeros(1, 12, 9)]
    src = RandomCrops(imgs, crop=4, flips=True)
    a = src.sample(5, generator=torch.Generator().manual_seed(0))
    b = src.sample(5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 1, 4, 4) and torch.equal(a, b)
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    crop = random_crop(x, 3, generator=torch.Generator().manual_seed(1))
    r, c = int(crop[0, 0, 0, 0]) // 6, int(crop[0, 0, 0, 0]) % 6
    assert torch.equal(crop[0, 0], x[0, 0, r:r + 3, c:c + 3])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_affine(tmp_path, suffix):
    vol = torch.rand(6, 5, 4)
    affine = np.array([[0.9, 0, 0, -10], [0, 1.1, 0.1, 5], [0, 0, 2.0, 3], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / f"v{suffix}", vol, affine)
    back, aff = read_nifti(path)
    torch.testing.assert_close(back, vol)
    np.testing.assert_allclose(aff, affine, atol=1e-6)
    s = nifti_slices(path, axis=1)
    assert s.shape == (5, 1, 6, 4)
    torch.testing.assert_close(s[2, 0], vol[:, 2, :])
    with pytest.raises(FileExistsError, match="exists"):
        write_nifti(path, vol, affine)
    write_nifti(path, 2 * vol, affine, overwrite=True)
    torch.testing.assert_close(read_nifti(path)[0], 2 * vol)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"v{suffix}"]  # no temporary left behind


def test_nifti_errors(tmp_path):
    with pytest.raises(ValueError, match="NIfTI file name"):
        write_nifti(tmp_path / "v.npy", torch.rand(2, 2, 2), np.eye(4))
    with pytest.raises(ValueError, match=r"affine must be \(4, 4\)"):
        write_nifti(tmp_path / "v.nii", torch.rand(2, 2, 2), np.eye(3))
    with pytest.raises(ValueError, match="axis must be"):
        nifti_slices(tmp_path / "v.nii", axis=3)
