import pytest
import torch
from deepinv.physics import GaussianNoise

from diffinverse.operators.inpainting import Inpainting, box_mask, random_mask
from diffinverse.testing import assert_adjoint, assert_linear, assert_pseudo_inverse


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mask_shape", [(12, 10), (1, 1, 12, 10), (3, 1, 12, 10), (3, 2, 12, 10)])
def test_adjoint_and_pseudo_inverse(mask_shape):
    op = Inpainting(random_mask(mask_shape, 0.4, generator=_gen()))
    assert_adjoint(op, (3, 2, 12, 10))
    assert_linear(op, (3, 2, 12, 10))
    assert_pseudo_inverse(op, (3, 2, 12, 10))


def test_kept_pixels_untouched_missing_zero():
    mask = random_mask((3, 1, 16, 16), 0.3, generator=_gen(1))
    x = torch.randn(3, 2, 16, 16, generator=_gen(2)) + 5  # complex image as 2 channels, no zeros
    y = Inpainting(mask).A(x)
    kept = mask.expand_as(x).bool()
    assert torch.equal(y[kept], x[kept])
    assert (y[~kept] == 0).all()


def test_a_dagger_is_zero_filled():
    mask = box_mask((8, 8), (2, 3, 4, 2))
    op = Inpainting(mask)
    y = torch.randn(1, 1, 8, 8, generator=_gen())
    assert torch.equal(op.A_dagger(y), y * mask)


def test_noisy_measurements_are_zero_where_missing():
    mask = random_mask((16, 16), 0.5, generator=_gen())
    op = Inpainting(mask, noise_model=GaussianNoise(sigma=0.1, rng=_gen(5)))
    x = torch.ones(2, 1, 16, 16)
    y = op(x)
    assert (y[:, :, mask == 0] == 0).all()
    observed = y[:, :, mask == 1]
    assert 0.05 < (observed - 1).std().item() < 0.2


def test_with_mask_returns_a_new_operator():
    m1 = box_mask((8, 8), (0, 0, 4, 4))
    m2 = box_mask((8, 8), (4, 4, 4, 4))
    op1 = Inpainting(m1)
    op2 = op1.with_mask(m2)
    x = torch.ones(1, 1, 8, 8)
    assert torch.equal(op1.A(x)[0, 0], m1) and torch.equal(op2.A(x)[0, 0], m2)


def test_box_mask():
    m = box_mask((10, 12), (1, 2, 3, 4))
    assert m.shape == (10, 12) and m.dtype == torch.float32
    assert (m == 0).sum() == 12
    assert (m[1:4, 2:6] == 0).all()


def test_random_mask_exact_count_seeded_global_rng_untouched():
    state = torch.get_rng_state()
    m1 = random_mask((4, 1, 10, 10), 0.37, generator=_gen(3))
    m2 = random_mask((4, 1, 10, 10), 0.37, generator=_gen(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(m1, m2)
    assert m1.sum(dim=(1, 2, 3)).tolist() == [37.0] * 4
    assert not torch.equal(m1[0], m1[1])  # planes are drawn independently
    assert random_mask((5, 5), 0.0, generator=_gen()).sum() == 0
    assert random_mask((5, 5), 1.0, generator=_gen()).sum() == 25


def test_bad_inputs():
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        Inpainting(torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match=r"mask: expected shape \(H, W\) or \(B, 1\|C, H, W\)"):
        Inpainting(torch.ones(2, 4, 4))
    with pytest.raises(TypeError, match="mask: expected a real 0/1 tensor"):
        Inpainting(torch.ones(4, 4, dtype=torch.complex64))
    op = Inpainting(torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="does not match the mask's 4x4"):
        op.A(torch.ones(2, 1, 5, 4))
    with pytest.raises(ValueError, match="does not broadcast with the mask"):
        op.A(torch.ones(3, 1, 4, 4))
    with pytest.raises(TypeError, match="complex images as 2 real channels"):
        op.A(torch.ones(2, 1, 4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="not inside an image of size 4x4"):
        box_mask((4, 4), (2, 2, 3, 1))
    with pytest.raises(ValueError, match=r"fraction: expected a number in \[0, 1\]"):
        random_mask((4, 4), 1.5, generator=_gen())
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        random_mask((4, 4), 0.5, generator=3)
