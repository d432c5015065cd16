import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from diffinverse.operators.blur import PADDINGS, Blur, gaussian_kernel, motion_kernel
from diffinverse.operators.inpainting import Inpainting, random_mask
from diffinverse.testing import assert_adjoint, assert_composition_adjoint, assert_linear

# scipy.ndimage's names for the same boundary rules (true convolution, centre at k // 2)
SCIPY_MODE = {"circular": "wrap", "reflect": "mirror", "replicate": "nearest", "zeros": "constant"}


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("ksize", [(3, 3), (4, 6), (5, 7), (12, 13)])  # 12 x 13 takes the FFT path
def test_adjoint_every_padding(padding, ksize):
    k = _rand(*ksize, seed=1).abs()
    assert_adjoint(Blur(k, padding=padding), (2, 2, 19, 24))


@pytest.mark.parametrize("padding", ["circular", "reflect", "replicate", "zeros"])
@pytest.mark.parametrize("ksize", [(3, 3), (5, 7), (11, 11)])  # conv2d path, FFT paths
def test_matches_scipy_convolve(padding, ksize):
    k = _rand(*ksize, seed=2)
    x = _rand(2, 3, 20, 23, seed=3)
    y = Blur(k, padding=padding).A(x)
    ref = np.stack([[ndi.convolve(x[b, c].numpy(), k.numpy(), mode=SCIPY_MODE[padding])
                     for c in range(3)] for b in range(2)])
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12)


def test_valid_is_interior_of_zero_padded():
    k = _rand(5, 3, seed=4)
    x = _rand(1, 1, 16, 17, seed=5)
    valid = Blur(k, padding="valid").A(x)
    same = Blur(k, padding="zeros").A(x)
    assert valid.shape == (1, 1, 12, 15)
    torch.testing.assert_close(valid, same[..., 2:-2, 1:-1])


@pytest.mark.parametrize("padding", ["circular", "reflect", "replicate", "zeros"])
def test_delta_kernel_is_identity(padding):
    k = torch.zeros(5, 5, dtype=torch.float64)
    k[2, 2] = 1
    x = _rand(2, 2, 12, 12, seed=6)
    torch.testing.assert_close(Blur(k, padding=padding).A(x), x, rtol=0, atol=1e-12)


def test_complex_channels_blurred_independently():
    k = motion_kernel(9, generator=torch.Generator().manual_seed(0)).double()
    x = _rand(1, 2, 16, 16, seed=7)
    op = Blur(k, padding="reflect")
    y = op.A(x)
    for c in range(2):
        torch.testing.assert_close(y[:, c:c + 1], op.A(x[:, c:c + 1]))


def test_float32_in_float32_out_and_linear():
    op = Blur(gaussian_kernel(1.0), padding="replicate")
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert op.A(x).dtype == torch.float32
    assert_linear(op, (2, 1, 16, 16))


@pytest.mark.parametrize("padding", ["circular", "reflect", "valid"])
def test_a_dagger_is_the_tikhonov_solution(padding):
    # dense reference: (A^T A + lam I)^{-1} A^T y with lam = reg * (sum |k|)^2
    k = gaussian_kernel(1.2, size=5).double()
    op = Blur(k, padding=padding, reg=1e-2, cg_tol=1e-10)
    n = 10
    basis = torch.eye(n * n, dtype=torch.float64).reshape(n * n, 1, n, n)
    mat = op.A(basis).reshape(n * n, -1).T
    y = _rand(1, 1, *op.A(basis[:1]).shape[-2:], seed=8)
    lam = 1e-2 * float(k.abs().sum()) ** 2
    ref = torch.linalg.solve(mat.T @ mat + lam * torch.eye(n * n, dtype=torch.float64),
                             mat.T @ y.reshape(-1))
    torch.testing.assert_close(op.A_dagger(y).reshape(-1), ref, rtol=0, atol=1e-7)


def test_a_dagger_deblurs_better_than_the_blurred_image():
    # a bright disc on a dark background, blurred and 1 % noise: Wiener must gain >= 1.5 dB
    n = 64
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    x = (((yy - 30) ** 2 + (xx - 34) ** 2) < 200).float()[None, None] * 0.8
    op = Blur(gaussian_kernel(2.0), padding="reflect")
    y = op.A(x) + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))

    def psnr(a):
        return -10 * torch.log10(((a - x) ** 2).mean())

    assert psnr(op.A_dagger(y)) > psnr(y) + 1.5


def test_composition_with_inpainting():
    mask = random_mask((14, 14), 0.5, generator=torch.Generator().manual_seed(0))
    assert_composition_adjoint(Inpainting(mask), Blur(gaussian_kernel(1.0), padding="reflect"),
                               (2, 2, 14, 14))


def test_gaussian_kernel_sum_and_std():
    k = gaussian_kernel((2.0, 3.5)).double()
    assert k.shape == (17, 29)
    assert k.sum().item() == pytest.approx(1, abs=1e-6)
    for dim, sigma in ((1, 2.0), (0, 3.5)):
        marginal = k.sum(dim)
        pos = torch.arange(marginal.numel(), dtype=torch.float64) - (marginal.numel() - 1) / 2
        assert (marginal * pos).sum().item() == pytest.approx(0, abs=1e-6)
        assert (marginal * pos ** 2).sum().sqrt().item() == pytest.approx(sigma, rel=1e-3)


def test_gaussian_kernel_explicit_size():
    k = gaussian_kernel(1.0, size=(3, 5))
    assert k.shape == (3, 5) and k.dtype == torch.float32
    assert torch.equal(k, k.flip(0)) and torch.equal(k, k.flip(1))


def test_motion_kernel_seeded_normalised_centred():
    state = torch.get_rng_state()
    k1 = motion_kernel(21, length=12, generator=torch.Generator().manual_seed(3))
    k2 = motion_kernel(21, length=12, generator=torch.Generator().manual_seed(3))
    k3 = motion_kernel(21, length=12, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(k1, k2) and not torch.equal(k1, k3)
    assert k1.shape == (21, 21) and (k1 >= 0).all()
    assert k1.double().sum().item() == pytest.approx(1, abs=1e-6)
    pos = torch.arange(21, dtype=torch.float64) - 10
    assert (k1.double().sum(1) * pos).sum().item() == pytest.approx(0, abs=1e-4)
    assert (k1.double().sum(0) * pos).sum().item() == pytest.approx(0, abs=1e-4)


def test_straight_motion_kernel_has_the_stated_length():
    # a uniform segment of length L has variance L^2 / 12 along it and ~0 across it
    length = 10.0
    k = motion_kernel(15, length=length, curvature=0.0, generator=torch.Generator().manual_seed(0))
    yy, xx = torch.meshgrid(torch.arange(15.0), torch.arange(15.0), indexing="ij")
    pts = torch.stack([yy.flatten() - 7, xx.flatten() - 7], 1).double()
    cov = (pts.T * k.flatten().double()) @ pts
    small, large = torch.linalg.eigvalsh(cov).tolist()
    assert large == pytest.approx(length ** 2 / 12, rel=0.15)
    assert small < 0.2


def test_bad_inputs():
    k = gaussian_kernel(1.0)
    with pytest.raises(ValueError, match=r"kernel: expected shape \(kh, kw\)"):
        Blur(k[None])
    with pytest.raises(TypeError, match="kernel: expected a real floating tensor"):
        Blur(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="kernel: expected finite values"):
        Blur(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="padding: expected one of"):
        Blur(k, padding="mirror")
    with pytest.raises(ValueError, match="reg: expected a positive float"):
        Blur(k, reg=0.0)
    op = Blur(k)
    with pytest.raises(TypeError, match="complex images as 2 real channels"):
        op.A(torch.zeros(1, 1, 16, 16, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"expected shape \(B, C, H, W\)"):
        op.A(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        op.A(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="sigma: expected positive finite"):
        gaussian_kernel(0.0)
    with pytest.raises(ValueError, match="size: expected positive integers"):
        gaussian_kernel(1.0, size=0)
    with pytest.raises(ValueError, match="size: expected an integer >= 3"):
        motion_kernel(2, generator=torch.Generator())
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        motion_kernel(9, generator=None)
