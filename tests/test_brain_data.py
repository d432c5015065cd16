import pytest
import torch

from diffinverse.datasets.brain import CANVAS, TEST_SLAB, BrainSlices


@pytest.fixture(scope="module")
def train_set():
    return BrainSlices("train")


def test_shapes_scaling_and_determinism(train_set):
    x = train_set.sample(3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 2, CANVAS, CANVAS) and x.dtype == torch.float32
    mag = x.square().sum(1).sqrt().flatten(1)
    torch.testing.assert_close(torch.quantile(mag, 0.995, dim=1), torch.ones(3), rtol=1e-4, atol=1e-4)
    y = train_set.sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, y)
    z = train_set.sample(3, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(x, z)
    # complex: the imaginary channel carries signal (random phase), not only noise
    assert x[:, 1].abs().mean() > 0.05


def test_crops_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    data = BrainSlices("train", size=48, generator=torch.Generator().manual_seed(5))
    x = data.sample(4)
    assert x.shape == (4, 2, 48, 48)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_splits_are_disjoint_contiguous_slabs(train_set):
    test = BrainSlices("test")
    tr, te = set(train_set.slices.tolist()), set(test.slices.tolist())
    assert tr.isdisjoint(te) and len(te) >= 10 and len(tr) > 3 * len(te)
    assert sorted(te) == list(range(min(te), max(te) + 1))
    assert min(te) >= TEST_SLAB[0] and max(te) < TEST_SLAB[1]
    # no training slice right next to the held-out slab
    assert all(abs(z - t) > 2 for z in tr for t in te)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be"):
        BrainSlices("val")
    with pytest.raises(ValueError, match="size must be"):
        BrainSlices("train", size=1000)


def test_template_file_round_trip(tmp_path, train_set):
    from diffinverse.datasets.brain import save_template

    path = save_template(tmp_path / "t.npz")
    other = BrainSlices("train", template_file=path)
    assert torch.equal(other.slices, train_set.slices)
    assert (other._maps.float() - train_set._maps.float()).abs().max() < 0.005
    np_bad = tmp_path / "bad.npz"
    import numpy as np

    np.savez(np_bad, maps=np.zeros((2, 5, 8, 8), np.uint8), z=np.arange(2))
    with pytest.raises(ValueError, match="not a brain template file"):
        BrainSlices("train", template_file=np_bad)


def test_magnitude_images_have_zero_phase_and_rician_background():
    sigma = 0.02
    data = BrainSlices("train", magnitude_fraction=1.0, noise_range=(sigma, sigma),
                       generator=torch.Generator().manual_seed(3))
    x = data.sample(4)
    assert torch.equal(x[:, 1], torch.zeros_like(x[:, 1])) and (x[:, 0] >= 0).all()
    # air in the corners: the magnitude of complex Gaussian noise has mean sigma * sqrt(pi / 2)
    # (the whole-slice rescaling after the noise changes scale by under 10 %)
    corners = torch.cat([x[:, 0, :16, :16].flatten(), x[:, 0, -16:, -16:].flatten()])
    assert 0.9 * 1.2533 * sigma < corners.mean() < 1.1 * 1.2533 * sigma
    mixed = BrainSlices("train", size=32, magnitude_fraction=0.5, generator=torch.Generator().manual_seed(4))
    is_magnitude = (mixed.sample(40)[:, 1] == 0).flatten(1).all(1)
    assert 8 <= is_magnitude.sum() <= 32  # Binomial(40, 0.5): outside this with probability < 1e-4


def test_magnitude_and_noise_arguments_are_checked():
    with pytest.raises(ValueError, match="magnitude_fraction"):
        BrainSlices("train", magnitude_fraction=1.5)
    with pytest.raises(ValueError, match="noise_range"):
        BrainSlices("train", noise_range=(0.1, 0.05))
