import pytest
import torch
from deepinv.physics import MRI, GaussianNoise, MultiCoilMRI

from diffinverse.operators.blur import Blur, gaussian_kernel
from diffinverse.operators.inpainting import Inpainting, random_mask
from diffinverse.operators.superres import SuperResolution
from diffinverse.operators.volume import SliceStack, fold_slices, unfold_slices
from diffinverse.testing import assert_adjoint, assert_composition_adjoint, assert_pseudo_inverse


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _loop(fn, x, axis):
    """Reference: call a 2D function on every slice along ``axis`` in a Python loop."""
    return torch.stack([fn(x.select(axis, i)) for i in range(x.shape[axis])], dim=axis)


@pytest.mark.parametrize("axis", [2, 3, 4])
def test_blur_equals_loop_over_slices_and_adjoint(axis):
    op2d = Blur(gaussian_kernel(0.8, size=5), padding="reflect")
    op = SliceStack(op2d, axis=axis)
    x = _rand(2, 2, 6, 8, 10)
    torch.testing.assert_close(op.A(x), _loop(op2d.A, x, axis))
    y = op.A(x)
    torch.testing.assert_close(op.A_adjoint(y), _loop(op2d.A_adjoint, y, axis))
    assert_adjoint(op, (2, 2, 6, 8, 10))


@pytest.mark.parametrize("axis", [2, 4])
def test_superres_changes_slice_size_not_slice_count(axis):
    op = SliceStack(SuperResolution(2), axis=axis)
    y = op.A(_rand(1, 1, 8, 12, 16))
    expected = {2: (1, 1, 8, 6, 8), 4: (1, 1, 4, 6, 16)}[axis]
    assert y.shape == expected
    assert_adjoint(op, (1, 1, 8, 12, 16))
    assert_pseudo_inverse(op, (1, 1, 8, 12, 16), rtol=1e-5)


def test_per_slice_inpainting_masks():
    masks = random_mask((2, 1, 5, 8, 8), 0.5, generator=torch.Generator().manual_seed(0))
    op = SliceStack(Inpainting(fold_slices(masks, axis=2)), axis=2)
    x = _rand(2, 2, 5, 8, 8)
    torch.testing.assert_close(op.A(x), x * masks)
    assert_adjoint(op, (2, 2, 5, 8, 8))


def test_mri_per_slice_masks_equal_loop():
    # deepinv's own single-coil MRI, one mask per slice (B = 1, so item d is slice d)
    depth, n = 4, 12
    masks = (torch.rand(depth, 1, n, n, generator=torch.Generator().manual_seed(1)) < 0.4).double()
    op = SliceStack(MRI(mask=masks, img_size=(2, n, n)), axis=2)
    x = _rand(1, 2, depth, n, n)
    y = op.A(x)
    for d in range(depth):
        op_d = MRI(mask=masks[d:d + 1], img_size=(2, n, n))
        torch.testing.assert_close(y[:, :, d], op_d.A(x[:, :, d]))
        torch.testing.assert_close(op.A_dagger(y)[:, :, d], op_d.A_dagger(y[:, :, d]))
    assert_adjoint(op, (1, 2, depth, n, n))


def test_multicoil_output_gets_slice_axis_at_the_same_position():
    g = torch.Generator().manual_seed(2)
    maps = torch.randn(3, 8, 8, dtype=torch.complex128, generator=g)
    op2d = MultiCoilMRI(coil_maps=maps, img_size=(8, 8))
    op = SliceStack(op2d, axis=2)
    x = _rand(1, 2, 5, 8, 8)
    y = op.A(x)
    assert y.shape == (1, 2, 5, 3, 8, 8)
    torch.testing.assert_close(y[:, :, 1], op2d.A(x[:, :, 1]))
    assert_adjoint(op, (1, 2, 5, 8, 8))


def test_noise_follows_the_2d_forward():
    mask = random_mask((6, 6), 0.5, generator=torch.Generator().manual_seed(3))
    noise = GaussianNoise(sigma=0.1, rng=torch.Generator().manual_seed(4))
    op = SliceStack(Inpainting(mask, noise_model=noise), axis=3)
    y = op(torch.ones(1, 1, 6, 4, 6))
    assert (y.movedim(3, 1)[:, :, :, mask == 0] == 0).all()  # missing pixels stay exactly 0
    assert (y.movedim(3, 1)[:, :, :, mask == 1] != 1).all()


def test_composition():
    inner = SliceStack(Blur(gaussian_kernel(0.8, size=5), padding="circular"), axis=3)
    outer = SliceStack(Inpainting(random_mask((6, 8), 0.5, generator=torch.Generator())), axis=3)
    assert_composition_adjoint(outer, inner, (1, 2, 6, 5, 8))


def test_fold_unfold_round_trip():
    x = _rand(2, 3, 4, 5, 6)
    for axis in (2, 3, 4):
        folded = fold_slices(x, axis)
        assert folded.shape[0] == 2 * x.shape[axis]
        assert torch.equal(folded[1 * x.shape[axis] + 2], x[1].select(axis - 1, 2))
        assert torch.equal(unfold_slices(folded, 2, axis), x)


def test_bad_inputs():
    op2d = Blur(gaussian_kernel(1.0))
    with pytest.raises(ValueError, match=r"axis: expected one of \(2, 3, 4\)"):
        SliceStack(op2d, axis=1)
    with pytest.raises(TypeError, match="op2d: expected a deepinv LinearPhysics"):
        SliceStack(lambda x: x)
    with pytest.raises(ValueError, match=r"expected a volume \(B, C, D, H, W\)"):
        SliceStack(op2d).A(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="not a multiple of the batch"):
        unfold_slices(torch.zeros(5, 1, 4, 4), 2)
