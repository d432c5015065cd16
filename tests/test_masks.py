"""Sampling masks: fastMRI line semantics, seeding, untouched global RNG, 2D variable density."""
import numpy as np
import pytest
import torch

from diffinverse.operators.masks import equispaced_lines, random_lines, variable_density_2d


def fastmri_equispaced_columns(num_cols, acceleration, center_fraction, offset):
    """fastMRI EquiSpacedMaskFunc (subsample.py), re-implemented independently with numpy."""
    num_low = round(num_cols * center_fraction)
    center = np.zeros(num_cols, dtype=np.float32)
    pad = (num_cols - num_low + 1) // 2
    center[pad:pad + num_low] = 1
    accel = np.zeros(num_cols, dtype=np.float32)
    accel[offset::acceleration] = 1
    return np.maximum(center, accel)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("w,acc,cf", [(368, 4, 0.08), (372, 8, 0.04), (320, 4, 0.08), (257, 6, 0.06)])
def test_equispaced_matches_fastmri_for_every_offset(w, acc, cf):
    for offset in range(acc):
        mask = equispaced_lines((10, w), acc, cf, offset=offset)
        expected = fastmri_equispaced_columns(w, acc, cf, offset)
        np.testing.assert_array_equal(mask[0].numpy(), expected)
        assert (mask == mask[:1]).all()  # constant along H (lines)
    offsets = {int(np.flatnonzero(equispaced_lines((2, w), acc, cf, generator=gen(s))[0].numpy()
                                  - fastmri_equispaced_columns(w, acc, cf, 0) != 0).size > 0)
               for s in range(20)}
    assert offsets == {0, 1}  # the drawn offset varies with the seed


@pytest.mark.parametrize("w,acc,cf", [(368, 4, 0.08), (320, 8, 0.04), (255, 4, 0.08)])
def test_random_lines_centre_and_expected_count(w, acc, cf):
    num_low = round(w * cf)
    pad = (w - num_low + 1) // 2
    counts = []
    for seed in range(300):
        cols = random_lines((4, w), acc, cf, generator=gen(seed))[0]
        assert cols[pad:pad + num_low].all()
        counts.append(int(cols.sum()))
    # fastMRI: outer columns are Bernoulli(p), p = (w/acc - n_low) / (w - n_low), so
    # E[count] = w / acc exactly; 6 standard errors of the mean over 300 draws.
    p = (w / acc - num_low) / (w - num_low)
    sem = np.sqrt((w - num_low) * p * (1 - p) / len(counts))
    assert abs(np.mean(counts) - w / acc) < 6 * sem


def test_same_seed_same_mask_and_different_seeds_differ():
    for fn in (lambda g: random_lines((8, 64), 4, 0.08, generator=g),
               lambda g: equispaced_lines((8, 64), 8, 0.04, generator=g),
               lambda g: variable_density_2d((48, 40), 5, kind="poisson", calib=8, generator=g),
               lambda g: variable_density_2d((48, 40), 5, kind="gaussian", calib=8, generator=g)):
        assert torch.equal(fn(gen(3)), fn(gen(3)))
        assert any(not torch.equal(fn(gen(3)), fn(gen(s))) for s in (4, 5, 6))


def test_global_rng_untouched():
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    random_lines((8, 64), 4, 0.08, generator=gen(0))
    random_lines((8, 64), 4, 0.08)
    equispaced_lines((8, 64), 4, 0.08)
    variable_density_2d((32, 32), 4, kind="poisson", calib=6)
    variable_density_2d((32, 32), 4, kind="gaussian", calib=6, generator=gen(1))
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


@pytest.mark.parametrize("kind,tol", [("poisson", 0.03), ("gaussian", 0.002)])
@pytest.mark.parametrize("shape,acc,calib", [((64, 64), 4, 12), ((80, 56), 8, (10, 8))])
def test_variable_density_2d(kind, tol, shape, acc, calib):
    mask = variable_density_2d(shape, acc, kind=kind, calib=calib, generator=gen(0))
    h, w = shape
    ch, cw = (calib, calib) if isinstance(calib, int) else calib
    assert mask.shape == shape and mask.dtype == torch.float32
    assert mask[h // 2 - ch // 2:h // 2 - ch // 2 + ch, w // 2 - cw // 2:w // 2 - cw // 2 + cw].all()
    assert abs(mask.numel() / mask.sum().item() - acc) / acc < tol
    # variable density: the central half of k-space is sampled more densely than the rest
    centre = torch.zeros(shape, dtype=torch.bool)
    centre[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = True
    assert mask[centre].mean() > 1.5 * mask[~centre].mean()


def test_poisson_points_keep_their_distance():
    # Poisson disc: outside the central half (radius >= 3 r0 there) no two samples touch,
    # which i.i.d. sampling at this density (1 in 6) would violate many times over.
    for seed in range(3):
        mask = variable_density_2d((64, 64), 6, kind="poisson", calib=0, generator=gen(seed)).bool()
        pts = torch.nonzero(mask).double()
        d = torch.cdist(pts, pts) + torch.eye(len(pts)) * 1e9
        outer = (pts - 32).abs().max(1).values >= 16
        assert d.min(1).values[outer].min() >= 2.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="integer"):
        equispaced_lines((8, 64), 2.5, 0.08)
    with pytest.raises(ValueError, match="offset must be in"):
        equispaced_lines((8, 64), 4, 0.08, offset=4)
    with pytest.raises(ValueError, match="acceleration must be"):
        random_lines((8, 64), 0.5, 0.08)
    with pytest.raises(ValueError, match="center_fraction"):
        random_lines((8, 64), 4, 1.5)
    with pytest.raises(ValueError, match=r"shape must be \(H, W\)"):
        random_lines((8, 64, 2), 4, 0.08)
    with pytest.raises(TypeError, match="torch.Generator"):
        random_lines((8, 64), 4, 0.08, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="kind must be"):
        variable_density_2d((32, 32), 4, kind="uniform")
    with pytest.raises(ValueError, match="calibration box"):
        variable_density_2d((32, 32), 4, calib=20)
    with pytest.raises(ValueError, match="acceleration must be"):
        variable_density_2d((32, 32), 1.0)
