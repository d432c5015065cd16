import pytest
import torch
import torch.nn.functional as F

from diffinverse.operators.blur import Blur, gaussian_kernel
from diffinverse.operators.superres import SuperResolution, bicubic_taps
from diffinverse.testing import assert_adjoint, assert_composition_adjoint, assert_pseudo_inverse


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("filt", ["bicubic", "box"])
@pytest.mark.parametrize("padding", ["reflect", "replicate", "circular", "zeros"])
def test_adjoint(factor, filt, padding):
    assert_adjoint(SuperResolution(factor, filter=filt, padding=padding), (2, 2, 24, 36))


@pytest.mark.parametrize("factor", [3, 4])
def test_adjoint_size_not_a_multiple(factor):
    op = SuperResolution(factor, img_size=(2, 26, 39))
    assert op.A(_rand(1, 2, 26, 39)).shape == (1, 2, 26 // factor, 39 // factor)
    assert_adjoint(op, (2, 2, 26, 39))


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("padding", ["reflect", "replicate", "circular"])
def test_constant_image_stays_constant(factor, padding):
    x = torch.full((1, 2, 24, 24), 3.0, dtype=torch.float64)
    y = SuperResolution(factor, padding=padding).A(x)
    torch.testing.assert_close(y, torch.full_like(y, 3.0), rtol=0, atol=1e-12)


def test_bicubic_taps_known_values():
    # MATLAB imresize(x, 0.5) weights (Keys a = -0.5 stretched by 2)
    expected = torch.tensor([-0.01171875, -0.03515625, 0.11328125, 0.43359375], dtype=torch.float64)
    torch.testing.assert_close(bicubic_taps(2), torch.cat([expected, expected.flip(0)]))
    assert bicubic_taps(3).numel() == 11 and bicubic_taps(4).numel() == 16


@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_matches_torch_antialiased_interpolate_inside(factor):
    # torch renormalises its weights at the border, so compare away from it
    x = _rand(1, 1, 32, 32, seed=1)
    ours = SuperResolution(factor).A(x)
    ref = F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], rtol=0, atol=1e-6)


def test_box_is_block_mean_and_dagger_is_nearest_upsampling():
    x = _rand(2, 2, 12, 18, seed=2)
    op = SuperResolution(3, filter="box")
    y = op.A(x)
    torch.testing.assert_close(y, F.avg_pool2d(x, 3))
    up = y.repeat_interleave(3, dim=-2).repeat_interleave(3, dim=-1)
    torch.testing.assert_close(op.A_dagger(y), up)


@pytest.mark.parametrize("factor", [2, 3])
def test_a_dagger_is_the_pseudo_inverse(factor):
    op = SuperResolution(factor, cg_tol=1e-9)
    assert_pseudo_inverse(op, (2, 2, 24, 24), rtol=1e-7)
    # minimum norm: the result lies in the range of A^T, so it is its own projection
    xd = op.A_dagger(op.A(_rand(1, 1, 24, 24, seed=3)))
    torch.testing.assert_close(op.A_dagger(op.A(xd)), xd, rtol=0, atol=1e-6)


def test_complex_channels_independent():
    x = _rand(1, 2, 16, 16, seed=4)
    op = SuperResolution(2)
    y = op.A(x)
    for c in range(2):
        torch.testing.assert_close(y[:, c:c + 1], op.A(x[:, c:c + 1]))


def test_composition_with_blur():
    assert_composition_adjoint(SuperResolution(2), Blur(gaussian_kernel(1.0), padding="reflect"),
                               (1, 2, 16, 16))


def test_bad_inputs():
    with pytest.raises(TypeError, match="factor: expected an int"):
        SuperResolution(2.0)
    with pytest.raises(ValueError, match="factor: expected an integer >= 1"):
        SuperResolution(0)
    with pytest.raises(ValueError, match="filter: expected one of"):
        SuperResolution(2, filter="lanczos")
    with pytest.raises(ValueError, match="padding: expected one of"):
        SuperResolution(2, padding="valid")
    with pytest.raises(ValueError, match="img_size: expected"):
        SuperResolution(2, img_size=(0, 4))
    with pytest.raises(ValueError, match="too small for factor 4"):
        SuperResolution(4).A(torch.zeros(1, 1, 6, 6))
    with pytest.raises(ValueError, match=r"expected trailing shape \(16, 16\)"):
        SuperResolution(2, img_size=(16, 16)).A(torch.zeros(1, 1, 16, 18))
    with pytest.raises(ValueError, match=r"y: expected size \(8, 8\)"):
        SuperResolution(2, img_size=(16, 16)).A_adjoint(torch.zeros(1, 1, 8, 9))
    with pytest.raises(TypeError, match="complex images as 2 real channels"):
        SuperResolution(2).A(torch.zeros(1, 1, 8, 8, dtype=torch.complex64))
