"""Volume data (issue 25, item 2): 3-D CT phantoms from the 2-D training construction, the held-out
MNI152 slab as a complex brain volume, and NIfTI in and out with the affine kept."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from diffinverse.datasets.ct_slices import synthetic_ct_slices, synthetic_ct_volumes
from diffinverse.datasets.phantoms import (
    per_volume_count,
    random_ellipses,
    random_ellipsoids,
)
from diffinverse.datasets.volumes import (
    read_nifti,
    read_volume,
    voxel_size,
    write_nifti,
    write_volume,
)

# -- 3-D CT phantoms ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [random_ellipsoids, synthetic_ct_volumes])
def test_volumes_shape_range_determinism_and_global_rng(make):
    state = torch.get_rng_state()
    a = make(2, (6, 24, 24), generator=torch.Generator().manual_seed(3))
    b = make(2, (6, 24, 24), generator=torch.Generator().manual_seed(3))
    c = make(2, (6, 24, 24), generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (2, 1, 6, 24, 24) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a[0] - a[1]).abs().max() > 0.1                      # the two volumes differ
    # air in the corners of every slice, something inside
    assert (a[..., 0, 0] < 0.05).all() and (a[..., 0, 0, 0] < 0.05).all()
    assert (a.flatten(2).amax(2) > 0.3).all()


def test_ellipsoid_volumes_vary_smoothly_along_the_slice_axis():
    """Neighbouring slices of a phantom volume are much more alike than slices of two different
    volumes: the volume is one object, not a stack of independent phantoms."""
    v = random_ellipsoids(2, (8, 32, 32), generator=torch.Generator().manual_seed(0))
    within = (v[:, :, 1:] - v[:, :, :-1]).abs().mean()
    between = (v[0] - v[1]).abs().mean()
    assert within < 0.3 * between, (within, between)


def test_ct_volume_slices_look_like_the_training_slices():
    """Statistics of axial slices of the 3-D phantoms against those of the 2-D training generator:
    the share of body voxels, the mean intensity inside the body, the share of bone-bright voxels and
    the fine texture (mean absolute difference of horizontal neighbours inside the body) agree to
    within the stated factors over a few seeds."""
    vols = synthetic_ct_volumes(6, (8, 48, 48), generator=torch.Generator().manual_seed(10))
    slices3d = vols.movedim(2, 1).reshape(-1, 1, 48, 48)
    slices2d = synthetic_ct_slices(48, 48, generator=torch.Generator().manual_seed(11))

    def stats(x):
        body = x > 0.02
        grad = (x[..., 1:] - x[..., :-1]).abs()[body[..., 1:] & body[..., :-1]]
        return np.array([body.float().mean(), x[body].mean(), (x > 0.7).float().mean() / body.float().mean(),
                         grad.mean()])

    s3, s2 = stats(slices3d), stats(slices2d)
    ratio = s3 / s2
    assert (abs(np.log(ratio[:2])) < np.log(1.25)).all(), (s3, s2)   # body share, mean within 25 %
    assert (abs(np.log(ratio[2:])) < np.log(2.0)).all(), (s3, s2)    # bone share, texture within 2x


def test_count_per_volume_gives_the_per_slice_count_on_average():
    """A slice cuts an ellipsoid with semi-axis c and centre uniform on the widened slab with
    probability 2c / extent; with the counts of per_volume_count the expectation is at least the
    2-D count and less than one ellipsoid's share above it."""
    for depth, size, lo, hi, k in ((16, 64, 0.06, 0.25, 6), (64, 64, 0.01, 0.035, 6), (3, 32, 0.06, 0.16, 2)):
        n = per_volume_count(k, lo, hi, depth, size)
        extent = 2 * depth / size + 2 * hi
        expected = n * (lo + hi) / extent
        assert k <= expected < k + (lo + hi) / extent + 1e-9


# Sums at seed 0 of (2, 1, 32, 32) images from the generators as they were before the 3-D code
# (commit a503729); the refactor kept them bit for bit (checked then with torch.equal on 18 draws).
REF_CT_SUM = 288.81886528378345
REF_ELLIPSES_SUM = 271.24944281578064


def test_two_d_generators_unchanged_by_the_three_d_refactor():
    """The 2-D training generator defines the ct-ellipses prior's data and the end-to-end tasks'
    test images: the 3-D construction shares its code and must not change it."""
    x = synthetic_ct_slices(2, 32, generator=torch.Generator().manual_seed(0))
    e = random_ellipses(2, 32, generator=torch.Generator().manual_seed(0))
    assert float(x.double().sum()) == pytest.approx(REF_CT_SUM, rel=1e-6)
    assert float(e.double().sum()) == pytest.approx(REF_ELLIPSES_SUM, rel=1e-6)


def test_volume_phantom_bad_arguments():
    g = torch.Generator().manual_seed(0)
    for make in (random_ellipsoids, synthetic_ct_volumes):
        with pytest.raises(ValueError, match="H == W"):
            make(1, (4, 16, 20), generator=g)
        with pytest.raises(ValueError, match=r"shape must be \(D, H, W\)"):
            make(1, (16, 16), generator=g)
        with pytest.raises(ValueError, match="size must be >= 2"):
            make(1, (1, 16, 16), generator=g)
        with pytest.raises(TypeError, match="generator"):
            make(1, (4, 16, 16), generator=None)
        with pytest.raises(ValueError, match="n must be >= 1"):
            make(0, (4, 16, 16), generator=g)


# -- the held-out brain slab ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slab():
    from diffinverse.datasets.brain import test_slab_volume
    return test_slab_volume(size=32, generator=torch.Generator().manual_seed(0))


def test_brain_slab_is_a_complex_volume_in_the_prior_range(slab):
    from diffinverse.datasets.brain import TEST_SLAB, BrainSlices
    d = TEST_SLAB[1] - TEST_SLAB[0]
    assert slab.shape == (1, 2, d, 32, 32) and slab.dtype == torch.float32
    mag = slab.square().sum(1).sqrt()
    assert torch.quantile(mag.flatten(), 0.995).item() == pytest.approx(1.0, abs=1e-4)
    assert slab[:, 1].abs().max() > 0.1                             # a phase, not a real image
    # the slab is the test split's: its slices are exactly those BrainSlices("test") draws from
    assert len(BrainSlices("test")) == d
    # one object: neighbouring slices alike (1 mm apart), brain in every slice, air in the corners
    assert ((mag[:, 1:] - mag[:, :-1]).abs().mean() < 0.25 * mag.mean())
    assert (mag.flatten(2).amax(2) > 0.5).all() and (mag[..., 0, 0] < 0.05).all()


def test_brain_slab_phase_is_smooth_and_optional():
    from diffinverse.datasets.brain import test_slab_volume
    real = test_slab_volume(size=16)
    assert real[:, 1].abs().max() == 0 and real[:, 0].abs().max() > 0.5
    a = test_slab_volume(size=16, generator=torch.Generator().manual_seed(5))
    b = test_slab_volume(size=16, generator=torch.Generator().manual_seed(5))
    c = test_slab_volume(size=16, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # at full resolution (no k-space crop) the phase leaves the magnitude alone
    full, full_phase = test_slab_volume(), test_slab_volume(generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(full_phase.square().sum(1).sqrt(), full[:, 0].abs(), rtol=0, atol=1e-5)
    # smooth: the phase changes little between neighbouring voxels where there is signal
    z = torch.complex(full_phase[0, 0], full_phase[0, 1])
    inside = (z.abs() > 0.2)[:, :, 1:] & (z.abs() > 0.2)[:, :, :-1]
    step = (z[:, :, 1:] * z[:, :, :-1].conj()).angle().abs()[inside]
    assert step.max() < 0.1
    with pytest.raises(ValueError, match="size"):
        test_slab_volume(size=300)


# -- NIfTI --------------------------------------------------------------------------------------------

AFFINE = np.array([[0.9, 0.0, 0.0, -10.0], [0.0, 1.1, 0.1, 5.0], [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("axis", [0, 2])
def test_volume_round_trip_keeps_affine_and_voxel_size(tmp_path, suffix, axis):
    x = torch.rand(1, 1, 5, 4, 3)
    path = write_volume(tmp_path / f"v{suffix}", x, AFFINE, axis=axis)
    # nibabel alone: the same affine (sform and qform codes set), voxel sizes in the header
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
    assert int(img.header["sform_code"]) > 0 and int(img.header["qform_code"]) > 0
    np.testing.assert_allclose(img.header.get_zooms()[:3], voxel_size(AFFINE), rtol=1e-6)
    assert img.shape[axis] == 5
    np.testing.assert_allclose(np.asarray(img.dataobj).transpose(
        [axis] + [a for a in range(3) if a != axis]), x[0, 0].numpy(), atol=0)
    back, aff = read_volume(path, axis=axis)
    assert torch.equal(back, x)
    np.testing.assert_allclose(aff, AFFINE, atol=1e-6)


def test_voxel_size_of_an_oblique_affine():
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.5, 0.7, 3.0])
    np.testing.assert_allclose(voxel_size(aff), [0.5, 0.7, 3.0])


def _save(tmp_path, name, data, affine=None, codes=(1, 1)):
    affine = np.eye(4) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine if codes[0] else None, code=codes[0])
    img.set_sform(affine if codes[1] else None, code=codes[1])
    path = tmp_path / name
    nib.save(img, str(path))
    return path


def test_a_file_without_affine_is_refused_unless_asked(tmp_path):
    path = _save(tmp_path, "noaff.nii", np.ones((3, 3, 3), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]),
                 codes=(0, 0))
    with pytest.raises(ValueError, match="no usable affine"):
        read_nifti(path)
    with pytest.raises(ValueError, match="no usable affine"):
        read_volume(path)
    vol, aff = read_nifti(path, allow_missing_affine=True)
    assert vol.shape == (3, 3, 3)
    np.testing.assert_allclose(voxel_size(aff), [2.0, 2.0, 2.0])   # pixdim survives
    # a qform alone is a usable affine
    path = _save(tmp_path, "qonly.nii", np.ones((3, 3, 3), np.float32), np.diag([2.0, 3.0, 4.0, 1.0]),
                 codes=(1, 0))
    np.testing.assert_allclose(read_nifti(path)[1], np.diag([2.0, 3.0, 4.0, 1.0]))


def test_a_four_d_time_series_is_refused_unless_a_volume_is_picked(tmp_path):
    data = np.stack([np.full((3, 4, 5), t, np.float32) for t in range(3)], axis=-1)
    path = _save(tmp_path, "series.nii.gz", data)
    with pytest.raises(ValueError, match="time series of 3 volumes"):
        read_nifti(path)
    with pytest.raises(ValueError, match="time series"):
        read_volume(path)
    vol, _ = read_nifti(path, volume=2)
    assert vol.shape == (3, 4, 5) and (vol == 2).all()
    with pytest.raises(ValueError, match="out of range"):
        read_nifti(path, volume=3)
    single = _save(tmp_path, "single.nii", data[..., :1])          # (X, Y, Z, 1): one volume, fine
    assert read_nifti(single)[0].shape == (3, 4, 5)
    five = _save(tmp_path, "five.nii", np.zeros((2, 2, 2, 1, 2), np.float32))
    with pytest.raises(ValueError, match="5-D data"):
        read_nifti(five)


def test_wrong_dtypes_are_named(tmp_path):
    path = _save(tmp_path, "complex.nii", np.ones((2, 3, 4), np.complex64))
    with pytest.raises(ValueError, match="complex"):
        read_nifti(path)
    rgb = np.zeros((2, 3, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = _save(tmp_path, "rgb.nii", rgb)
    with pytest.raises(ValueError, match="RGB"):
        read_nifti(path)
    ints = _save(tmp_path, "int16.nii", np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    vol, _ = read_nifti(ints)                                         # integers are fine, as float32
    assert vol.dtype == torch.float32 and vol[1, 2, 3] == 23
    with pytest.raises(TypeError, match="dtype bool"):
        write_nifti(tmp_path / "b.nii", np.ones((2, 2, 2), bool), np.eye(4))
    with pytest.raises(ValueError, match="real"):
        write_nifti(tmp_path / "c.nii", torch.ones(2, 2, 2, dtype=torch.complex64), np.eye(4))
    with pytest.raises(ValueError, match=r"complex volumes: write the magnitude"):
        write_volume(tmp_path / "c.nii", torch.ones(1, 2, 2, 2, 2), np.eye(4))
    with pytest.raises(ValueError, match=r"\(1, 1, D, H, W\)"):
        write_volume(tmp_path / "c.nii", torch.ones(2, 2, 2), np.eye(4))
    assert not any(tmp_path.glob("[bc].nii"))


def test_a_bad_affine_is_refused_on_writing(tmp_path):
    with pytest.raises(ValueError, match="singular"):
        write_volume(tmp_path / "s.nii", torch.ones(1, 1, 2, 2, 2), np.diag([1.0, 0.0, 1.0, 1.0]))
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_volume(tmp_path / "n.nii", torch.ones(1, 1, 2, 2, 2), bad)
    with pytest.raises(ValueError, match=r"affine must be \(4, 4\)"):
        write_volume(tmp_path / "n.nii", torch.ones(1, 1, 2, 2, 2), np.eye(3))
    assert not list(tmp_path.iterdir())
