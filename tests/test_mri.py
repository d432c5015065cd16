"""MRI operators: fastMRI FFT conventions, exact adjoints, known answers, SENSE-CG, input checks."""
import numpy as np
import pytest
import torch

from diffinverse.operators.masks import random_lines
from diffinverse.operators.mri import MultiCoilMRI, SingleCoilMRI, fft2c, ifft2c, to_channels, to_complex
from diffinverse.testing import assert_adjoint


def np_fft2c(x):
    """fastMRI's fft2c, written independently with numpy."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_ifft2c(x):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def crandn(*shape, g, dtype=torch.complex128):
    return torch.randn(*shape, generator=g, dtype=dtype)


@pytest.fixture
def g():
    return torch.Generator().manual_seed(1234)


@pytest.mark.parametrize("shape", [(2, 3, 16, 12), (1, 9, 7), (4, 15, 16), (5, 6)])
def test_fft2c_matches_numpy_fastmri(shape, g):
    z = crandn(*shape, g=g)
    np.testing.assert_allclose(fft2c(z).numpy(), np_fft2c(z.numpy()), atol=1e-12)
    np.testing.assert_allclose(ifft2c(z).numpy(), np_ifft2c(z.numpy()), atol=1e-12)
    z32 = z.to(torch.complex64)
    err = np.abs(fft2c(z32).numpy() - np_fft2c(z32.numpy().astype(np.complex128))).max()
    assert err < 1e-6


def test_channels_round_trip(g):
    z = crandn(3, 4, 5, g=g)
    x = to_channels(z)
    assert x.shape == (3, 2, 4, 5)
    torch.testing.assert_close(x[:, 0], z.real)
    torch.testing.assert_close(x[:, 1], z.imag)
    torch.testing.assert_close(to_complex(x), z)


def test_single_coil_known_answer_and_full_mask_inverse(g):
    x = torch.randn(3, 2, 16, 13, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 16, 13, generator=g) > 0.5).float()
    op = SingleCoilMRI(mask)
    expected = mask.numpy() * np_fft2c(to_complex(x).numpy())
    np.testing.assert_allclose(to_complex(op.A(x)).numpy(), expected, atol=1e-12)
    full = SingleCoilMRI(torch.ones(16, 13))
    torch.testing.assert_close(full.A_dagger(full.A(x)), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mask_shape", [(16, 12), (3, 16, 12), (3, 15, 11)])
def test_single_coil_adjoint(mask_shape, g):
    mask = (torch.rand(*mask_shape, generator=g) > 0.4).float()
    assert_adjoint(SingleCoilMRI(mask), (3, 2, *mask_shape[-2:]), rtol=1e-6)


@pytest.mark.parametrize("maps_shape,x_shape", [
    ((4, 16, 12), (3, 2, 16, 12)),              # one map set
    ((2, 4, 16, 12), (3, 2, 2, 16, 12)),        # two map sets (soft-SENSE)
    ((3, 2, 4, 16, 12), (3, 2, 2, 16, 12)),     # per-slice map stacks
    ((3, 1, 4, 15, 11), (3, 2, 15, 11)),        # per-slice, one set, odd sizes
])
def test_multi_coil_adjoint(maps_shape, x_shape, g):
    maps = crandn(*maps_shape, g=g)
    mask = (torch.rand(3, *maps_shape[-2:], generator=g) > 0.4).float()
    assert_adjoint(MultiCoilMRI(mask, maps), x_shape, rtol=1e-6)
    assert_adjoint(MultiCoilMRI(mask[0], maps), x_shape, rtol=1e-6)


def test_multi_coil_known_answer_two_sets(g):
    maps = crandn(3, 2, 5, 12, 10, g=g)  # (B, M, C, H, W)
    mask = (torch.rand(12, 10, generator=g) > 0.5).float()
    x = torch.randn(3, 2, 2, 12, 10, generator=g, dtype=torch.float64)
    op = MultiCoilMRI(mask, maps)
    coil = (maps * to_complex(x)[:, :, None]).sum(1).numpy()
    np.testing.assert_allclose(to_complex(op.A(x)).numpy(), mask.numpy() * np_fft2c(coil), atol=1e-12)
    torch.testing.assert_close(op.A_adjoint_A(x), op.A_adjoint(op.A(x)))


def test_matches_deepinv_multicoil(g):
    import deepinv

    maps = crandn(6, 20, 16, g=g, dtype=torch.complex64)
    mask = (torch.rand(20, 16, generator=g) > 0.5).float()
    x = torch.randn(2, 2, 20, 16, generator=g)
    ours = MultiCoilMRI(mask, maps)
    ref = deepinv.physics.MultiCoilMRI(mask=mask, coil_maps=maps, img_size=(20, 16))
    y = ref.A(x)
    torch.testing.assert_close(ours.A(x), y, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.A_adjoint(y), ref.A_adjoint(y), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("num_maps", [1, 2])
def test_sense_cg_recovers_from_full_data(num_maps, g):
    maps = crandn(num_maps, 6, 24, 20, g=g) if num_maps > 1 else crandn(6, 24, 20, g=g)
    x_shape = (2, 2, num_maps, 24, 20) if num_maps > 1 else (2, 2, 24, 20)
    x = torch.randn(*x_shape, generator=g, dtype=torch.float64)
    op = MultiCoilMRI(torch.ones(24, 20), maps, cg_lambda=0.0, cg_iters=200, cg_tol=1e-10)
    x_hat = op.A_dagger(op.A(x))
    assert ((x_hat - x).norm() / x.norm()).item() < 1e-4


def test_sense_cg_undersampled_and_lambda(g):
    # 8 smooth coils, 2x line undersampling: SENSE is well posed and recovers x
    h, w = 24, 20
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    centres = torch.linspace(0, 2 * torch.pi, 9)[:-1]
    maps = torch.stack([torch.exp(-((xx - 1.5 * torch.cos(t)) ** 2 + (yy - 1.5 * torch.sin(t)) ** 2) / 2)
                        * torch.exp(1j * (xx * torch.cos(t) + yy * torch.sin(t))) for t in centres]).to(torch.complex128)
    mask = torch.zeros(h, w)
    mask[:, ::2] = 1
    x = torch.randn(1, 2, h, w, generator=g, dtype=torch.float64)
    op = MultiCoilMRI(mask, maps, cg_lambda=0.0, cg_iters=300, cg_tol=1e-10)
    assert ((op.A_dagger(op.A(x)) - x).norm() / x.norm()).item() < 1e-4
    # Tikhonov: the solution satisfies (A^H A + lambda) x = A^H y
    reg = MultiCoilMRI(mask, maps, cg_lambda=0.1, cg_iters=300, cg_tol=1e-12)
    y = reg.A(x)
    x_hat = reg.A_dagger(y)
    res = reg.A_adjoint_A(x_hat) + 0.1 * x_hat - reg.A_adjoint(y)
    assert (res.norm() / reg.A_adjoint(y).norm()).item() < 1e-8


def test_with_mask_returns_new_operator_and_calls_do_not_mutate(g):
    maps = crandn(4, 8, 8, g=g, dtype=torch.complex64)
    m1 = torch.ones(8, 8)
    m2 = torch.zeros(8, 8)
    m2[:, ::2] = 1
    op = MultiCoilMRI(m1, maps)
    x = torch.randn(1, 2, 8, 8, generator=g)
    y_before = op.A(x).clone()
    op2 = op.with_mask(m2)
    assert op2 is not op and isinstance(op2, MultiCoilMRI)
    torch.testing.assert_close(op.mask, m1)
    torch.testing.assert_close(op2.mask, m2)
    torch.testing.assert_close(op.A(x), y_before)
    assert (op2.A(x)[..., 1::2] == 0).all()
    s = SingleCoilMRI(m1)
    assert torch.equal(s.with_mask(m2).mask, m2) and torch.equal(s.mask, m1)


def test_noise_only_on_sampled_locations(g):
    import deepinv

    mask = torch.zeros(8, 8)
    mask[:, ::2] = 1
    op = MultiCoilMRI(mask, crandn(3, 8, 8, g=g, dtype=torch.complex64),
                      noise_model=deepinv.physics.GaussianNoise(sigma=0.1, rng=torch.Generator().manual_seed(0)))
    y = op(torch.randn(2, 2, 8, 8, generator=g))
    assert (y[..., 1::2] == 0).all() and (y[..., ::2] != 0).all()


def test_gradients_flow_through_operator(g):
    op = MultiCoilMRI(torch.ones(8, 8), crandn(3, 8, 8, g=g, dtype=torch.complex64))
    x = torch.randn(2, 2, 8, 8, generator=g, requires_grad=True)
    (op.A(x) ** 2).sum().backward()
    # ||A x||^2 with a full mask and maps S has gradient 2 A^H A x
    torch.testing.assert_close(x.grad, 2 * op.A_adjoint_A(x.detach()), atol=1e-4, rtol=1e-4)


def test_bad_inputs(g):
    maps = crandn(4, 8, 8, g=g, dtype=torch.complex64)
    op = MultiCoilMRI(torch.ones(8, 8), maps)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        op.A(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        op.A(torch.zeros(2, 8, 8))
    with pytest.raises(TypeError, match="complex dtype"):
        op.A(torch.zeros(1, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="does not match the mask"):
        op.A(torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="expected 4"):
        op.A_adjoint(torch.zeros(1, 2, 5, 8, 8))
    with pytest.raises(ValueError, match="non-finite"):
        op.A_dagger(torch.full((1, 2, 4, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="size .* does not match the mask"):
        MultiCoilMRI(torch.ones(8, 9), maps)
    with pytest.raises(TypeError, match="coil_maps must be complex"):
        MultiCoilMRI(torch.ones(8, 8), maps.real)
    with pytest.raises(ValueError, match="coil_maps contains non-finite"):
        MultiCoilMRI(torch.ones(8, 8), maps * float("inf"))
    with pytest.raises(ValueError, match="only 0 and 1"):
        SingleCoilMRI(torch.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="mask contains non-finite"):
        SingleCoilMRI(torch.full((8, 8), float("nan")))
    with pytest.raises(ValueError, match="batch size 3 does not match the mask batch size 2"):
        SingleCoilMRI(torch.ones(2, 8, 8)).A(torch.zeros(3, 2, 8, 8))
    two = MultiCoilMRI(torch.ones(8, 8), maps[None].expand(2, -1, -1, -1))
    with pytest.raises(ValueError, match="M=2"):
        two.A(torch.zeros(1, 2, 3, 8, 8))
    with pytest.raises(TypeError, match="complex tensor"):
        fft2c(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="got complex"):
        to_complex(torch.zeros(1, 2, 4, dtype=torch.complex64))


def random_masks(kind, n, shape, g):
    """``n`` random masks ``(n, H, W)``: Cartesian lines (columns) or scattered pixels."""
    if kind == "lines":
        return (torch.rand(n, 1, shape[1], generator=g) > 0.6).float().expand(n, *shape).clone()
    return (torch.rand(n, *shape, generator=g) > 0.6).float()


@pytest.mark.parametrize("shape", [(16, 12), (15, 13), (16, 11)])
@pytest.mark.parametrize("per_item_mask", [False, True])
@pytest.mark.parametrize("kind", ["lines", "pixels"])
def test_single_coil_normal_operator_equals_adjoint_of_forward(g, shape, per_item_mask, kind):
    # A_adjoint_A skips the centring ramps (they cancel); odd sizes have complex ramps; line
    # masks take the 1D-FFT path
    masks = random_masks(kind, 3, shape, g)
    op = SingleCoilMRI(masks if per_item_mask else masks[0])
    assert op._normal_dims == ((-1,) if kind == "lines" else (-2, -1))
    x = torch.randn(3, 2, *shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op.A_adjoint_A(x), op.A_adjoint(op.A(x)), rtol=1e-12, atol=1e-12)
    x32 = x.float()
    torch.testing.assert_close(op.A_adjoint_A(x32), op.A_adjoint(op.A(x32)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("maps_shape,x_shape", [
    ((4, 16, 12), (3, 2, 16, 12)),              # one map set
    ((2, 4, 15, 11), (3, 2, 2, 15, 11)),        # two map sets, odd sizes
    ((3, 1, 4, 16, 11), (3, 2, 16, 11)),        # per-slice maps, odd width
])
@pytest.mark.parametrize("kind", ["lines", "pixels"])
def test_multi_coil_normal_operator_equals_adjoint_of_forward(g, maps_shape, x_shape, kind):
    masks = random_masks(kind, 3, maps_shape[-2:], g)
    for mask in (masks, masks[0]):
        op = MultiCoilMRI(mask, crandn(*maps_shape, g=g))
        assert op._normal_dims == ((-1,) if kind == "lines" else (-2, -1))
        x = torch.randn(*x_shape, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.A_adjoint_A(x), op.A_adjoint(op.A(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("multi", [False, True])
def test_normal_operator_keeps_its_input_layout(g, multi):
    """Channels-last in, channels-last out (no copies in a sampler whose state is channels-last),
    standard in, standard out; the same numbers either way."""
    mask = random_lines((16, 16), 4, 0.2, generator=g)
    maps = torch.randn(3, 16, 16, dtype=torch.complex64, generator=g)
    op = MultiCoilMRI(mask, maps / maps.abs().square().sum(0).sqrt()) if multi else SingleCoilMRI(mask)
    x = torch.randn(2, 2, 16, 16, generator=g)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out, out_cl = op.A_adjoint_A(x), op.A_adjoint_A(x_cl)
    assert out.is_contiguous() and not out_cl.is_contiguous()
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out, rtol=0, atol=0)
    if not multi:   # (the multi-coil adjoint maps 5-D k-space to images: no layout to keep)
        y = op.A(x)
        back = op.A_adjoint(y.contiguous(memory_format=torch.channels_last))
        assert back.is_contiguous(memory_format=torch.channels_last) and not back.is_contiguous()
        torch.testing.assert_close(back, op.A_adjoint(y.contiguous()), rtol=0, atol=0)


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("per_item_mask", [False, True])
@pytest.mark.parametrize("shape", [(16, 12), (15, 13)])  # even sizes (real ramps) and odd (complex)
def test_compact_is_the_same_problem_on_the_sampled_lines(g, multi, per_item_mask, shape):
    masks = torch.stack([random_lines(shape, 3, 0.2, generator=g) for _ in range(3)]).double()
    mask = masks if per_item_mask else masks[0]
    if multi:  # two map sets, per-item maps
        op = MultiCoilMRI(mask, crandn(3, 2, 4, *shape, g=g))
        x_shape = (3, 2, 2, *shape)
    else:
        op = SingleCoilMRI(mask)
        x_shape = (3, 2, *shape)
    y = op.A(torch.randn(x_shape, generator=g, dtype=torch.float64))
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    lines, y_lines = op.compact(y)
    sampled = int((masks if per_item_mask else masks[:1]).amax(0)[0].sum())
    assert y_lines.shape == (*y.shape[:-1], sampled) and sampled < shape[1]
    # the same data term for every x, the same A^H y, and the same normal operator
    torch.testing.assert_close((lines.A(x) - y_lines).norm(), (op.A(x) - y).norm(), rtol=1e-12, atol=0)
    torch.testing.assert_close(lines.A_adjoint(y_lines), op.A_adjoint(y), rtol=0, atol=1e-12)
    torch.testing.assert_close(lines.A_adjoint(lines.A(x)), op.A_adjoint_A(x), rtol=0, atol=1e-12)
    assert_adjoint(lines, x_shape, rtol=1e-10)


def test_compact_refuses_what_it_cannot_do(g):
    maps = crandn(4, 8, 8, g=g, dtype=torch.complex64)
    mask_2d = (torch.rand(8, 8, generator=g) > 0.5).float()
    assert MultiCoilMRI(mask_2d, maps).compact(torch.zeros(1, 2, 4, 8, 8)) is None  # no lines to keep
    op = MultiCoilMRI(random_lines((8, 8), 2, 0.25, generator=g), maps)
    with pytest.raises(ValueError, match="expected 4"):
        op.compact(torch.zeros(1, 2, 3, 8, 8))
    lines, y_lines = op.compact(torch.zeros(1, 2, 4, 8, 8))
    n = y_lines.shape[-1]
    for bad in (torch.zeros(1, 2, 4, 8, 8), torch.zeros(1, 2, 3, 8, n), y_lines[:, 0]):
        with pytest.raises(ValueError, match=rf"\(B, 2, C, H, lines\) = \(B, 2, 4, 8, {n}\)"):
            lines.A_adjoint(bad)
