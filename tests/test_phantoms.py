import numpy as np
import pytest
import torch

from diffinverse.datasets.phantoms import random_ellipses, shepp_logan


def test_shepp_logan_known_values_and_orientation():
    n = 128
    x = shepp_logan(n)
    assert x.shape == (n, n) and x.dtype == torch.float32
    assert x.min() == 0.0 and x.max() == 1.0
    # Centre: outer skull (1.0) + brain (-0.8).
    assert x[n // 2, n // 2].item() == pytest.approx(0.2, abs=1e-6)
    # Ellipse 5 (+0.1) is centred at y = +0.35, i.e. in the upper half (rows count down).
    row_up = round((1 - 0.35) / 2 * n)
    assert x[row_up, n // 2].item() == pytest.approx(0.3, abs=1e-6)
    assert x[n - row_up, n // 2].item() == pytest.approx(0.2, abs=1e-6)
    # Corners are outside the head.
    assert x[0, 0] == 0 and x[-1, -1] == 0


def test_shepp_logan_original_scaled_to_unit_range():
    x = shepp_logan(64, modified=False)
    assert x.max().item() == pytest.approx(1.0) and x.min().item() == 0.0
    assert x[32, 32].item() == pytest.approx((2.0 - 0.98) / 2, abs=1e-6)


def test_random_ellipses_range_and_structure():
    g = torch.Generator().manual_seed(3)
    x = random_ellipses(16, 64, generator=g)
    assert x.shape == (16, 1, 64, 64) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    flat = x.flatten(1)
    # Air outside the body (corners), bone rims brighter than 0.75, soft tissue in between.
    assert (x[:, 0, 0, 0] == 0).all() and (x[:, 0, -1, -1] == 0).all()
    assert (flat.amax(1) > 0.75).all()
    tissue = ((flat > 0.1) & (flat < 0.6)).float().mean(1)
    assert (tissue > 0.2).all()
    # Images differ from each other.
    assert (x[0] - x[1]).abs().max() > 0.1


def test_random_ellipses_deterministic_and_global_rng_untouched():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a = random_ellipses(4, 32, generator=torch.Generator().manual_seed(7))
    b = random_ellipses(4, 32, generator=torch.Generator().manual_seed(7))
    c = random_ellipses(4, 32, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])


def test_phantom_bad_arguments():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="size must be >= 2"):
        shepp_logan(1)
    with pytest.raises(TypeError, match="size must be an int"):
        shepp_logan(64.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        random_ellipses(0, 32, generator=g)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        random_ellipses(2, 32, generator=0)
