"""The checks in diffinverse.testing must fail on broken operators, not only pass on good ones."""
import pytest
import torch
from deepinv.physics import LinearPhysics

from diffinverse.operators.blur import Blur, gaussian_kernel
from diffinverse.operators.inpainting import Inpainting, box_mask
from diffinverse.testing import (adjoint_mismatch, assert_adjoint, assert_composition_adjoint,
                                 assert_linear, assert_pseudo_inverse)

SHAPE = (2, 1, 8, 8)


def _shift_op(adjoint_shift):
    """A = roll by +1 along W; A_adjoint = roll by ``adjoint_shift`` (-1 is exact)."""
    return LinearPhysics(A=lambda x, **kw: torch.roll(x, 1, -1),
                         A_adjoint=lambda y, **kw: torch.roll(y, adjoint_shift, -1))


def test_adjoint_check_passes_exact_and_catches_wrong_adjoint():
    assert adjoint_mismatch(_shift_op(-1), SHAPE) < 1e-12
    assert_adjoint(_shift_op(-1), SHAPE)
    with pytest.raises(AssertionError, match="adjoint mismatch"):
        assert_adjoint(_shift_op(1), SHAPE)  # A used as its own adjoint


def test_adjoint_check_catches_a_slightly_wrong_scale():
    op = LinearPhysics(A=lambda x, **kw: 2 * x, A_adjoint=lambda y, **kw: 2.0001 * y)
    with pytest.raises(AssertionError, match=r"adjoint mismatch 5\.000e-05"):
        assert_adjoint(op, SHAPE)


def test_adjoint_check_catches_wrong_shape_and_vacuous_operator():
    crop = LinearPhysics(A=lambda x, **kw: x, A_adjoint=lambda y, **kw: y[..., 1:])
    with pytest.raises(AssertionError, match="A_adjoint returned shape"):
        assert_adjoint(crop, SHAPE)
    zero = LinearPhysics(A=lambda x, **kw: 0 * x, A_adjoint=lambda y, **kw: 0 * y)
    with pytest.raises(AssertionError, match="vacuous"):
        assert_adjoint(zero, SHAPE)


def test_linearity_check_catches_nonlinear_and_affine_ops():
    assert_linear(Blur(gaussian_kernel(1.0, size=3)), SHAPE)
    with pytest.raises(AssertionError, match="linearity error"):
        assert_linear(LinearPhysics(A=lambda x, **kw: x ** 2), SHAPE)
    with pytest.raises(AssertionError, match="linearity error"):
        assert_linear(LinearPhysics(A=lambda x, **kw: x + 1e-3), SHAPE)


def test_composition_check_catches_wrong_product_and_wrong_adjoint():
    blur = Blur(gaussian_kernel(1.0, size=3))
    mask = Inpainting(box_mask((8, 8), (2, 2, 3, 3)))
    assert_composition_adjoint(mask, blur, SHAPE)
    with pytest.raises(AssertionError, match="adjoint mismatch"):
        assert_composition_adjoint(mask, _shift_op(1), SHAPE)

    class SwappedProduct(Inpainting):
        def __mul__(self, other):  # composes in the wrong order
            return LinearPhysics.__mul__(other, self)

    with pytest.raises(AssertionError, match="composition A differs"):
        assert_composition_adjoint(SwappedProduct(mask.mask), blur, SHAPE)


def test_pseudo_inverse_check():
    assert_pseudo_inverse(Inpainting(box_mask((8, 8), (0, 0, 4, 8))), SHAPE)
    with pytest.raises(AssertionError, match=r"A\(A_dagger\(A x\)\) differs"):
        assert_pseudo_inverse(Blur(gaussian_kernel(1.0, size=5), reg=1e-2), SHAPE)  # regularised


def test_checks_leave_global_rng_untouched():
    state = torch.get_rng_state()
    assert_adjoint(_shift_op(-1), SHAPE)
    assert_linear(_shift_op(-1), SHAPE)
    assert torch.equal(torch.get_rng_state(), state)
