"""The active (ADS) MRI pipeline on one tiny fully sampled slice: the lines it measures, its units,
determinism, the fastMRI-style mask, the acquisition-order PNG and bad input."""
from __future__ import annotations

import math

import pytest
import torch

from diffinverse.metrics import psnr
from diffinverse.operators.coils import simulate_coil_maps
from diffinverse.operators.mri import fft2c, to_complex
from diffinverse.pipelines.active import (
    ACTIVE_DEFAULTS,
    active_reconstruct_kspace,
    save_acquisition_order,
)
from diffinverse.pipelines.fastmri import build_sampler
from diffinverse.tasks import brain_images, frozen_prior

N = 32
STEPS = 10        # the full grid; the warm start (sigma 0.3) runs its last few steps


@pytest.fixture(scope="module")
def prior():
    return frozen_prior("mri-brain")


@pytest.fixture(scope="module")
def image():
    return to_complex(brain_images(1, N, torch.Generator().manual_seed(0)))[0]      # (N, N) complex


def _run(kspace, prior, seed=0, **kw):
    return active_reconstruct_kspace(kspace, acceleration=kw.pop("acceleration", 4), prior=prior, num_steps=STEPS,
                                     num_particles=3, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.fixture(scope="module")
def single(prior, image):
    return _run(fft2c(image), prior)


def test_single_coil_lines_mask_and_determinism(single, prior, image):
    r = single
    lines = round(N / 4)                                   # 8 of 32 columns, 3 of them the centre (0.08 * 32)
    assert r.initial_lines == (15, 16, 17) and len(r.order) == lines - 3 and len(set(r.order)) == lines - 3
    assert r.mask.shape == (N,) and r.mask.dtype == torch.float32 and int(r.mask.sum()) == lines
    assert set(r.mask.nonzero().flatten().tolist()) == {*r.initial_lines, *r.order}
    assert r.acceleration == pytest.approx(4.0)
    assert r.entropies.shape == (lines - 3, N) and torch.isinf(r.entropies[:, list(r.initial_lines)]).all()
    assert r.image.shape == r.std.shape == (1, N, N) and r.complex_image.shape == (1, 2, 1, N, N)
    assert set(r.baselines) == {"zero-filled"} and (r.std > 0).any()
    assert r.window == ACTIVE_DEFAULTS["window"] == (0.0, 0.8)             # the run says which window ran
    # one network pass per step of the warm-started grid (the acquisitions reuse the steps' passes)
    assert r.nfe == len(build_sampler("dds", prior, num_steps=STEPS).schedule_for(0.3)) - 1
    again = _run(fft2c(image), prior)
    assert again.order == r.order and torch.equal(again.image, r.image)
    # in the k-space's units: data x 10 gives the same lines and 10x the image
    scaled = _run(10 * fft2c(image), prior)
    assert scaled.order == r.order
    torch.testing.assert_close(scaled.image, 10 * r.image, rtol=1e-3, atol=1e-4)


def test_multicoil_uses_the_centre_coil_maps(prior, image):
    """4 simulated coils, 8 centre lines (ESPIRiT needs a few), 11 lines in all: the particles'
    image agrees with SENSE of the chosen lines (the maps' own reconstruction) to > 25 dB."""
    maps = simulate_coil_maps(4, (N, N))
    r = _run(fft2c(maps * image), prior, acceleration=3, center_fraction=0.25)
    assert int(r.mask.sum()) == round(N / 3) and len(r.initial_lines) == 8 and set(r.baselines) == {"zero-filled",
                                                                                                     "sense"}
    assert psnr(reference=r.baselines["sense"], estimate=r.image) > 25


def test_a_wrapped_field_of_view_gets_both_map_sets_images(prior):
    """An object wider than the field of view (8 coils, its right third folded onto the left):
    ESPIRiT finds a second map set, and the particles are both sets' images, the second zero
    outside its maps, as the fixed-mask pipeline's ``second_map_set="model"``. Against the fully
    sampled root-sum-of-squares, the particles' mean beats SENSE (both sets) of the chosen lines
    and reaches 31 dB (the first set's image alone cannot explain the folded part)."""
    from diffinverse.operators.coils import estimate_coil_maps, rss
    from diffinverse.operators.mri import ifft2c
    from test_map_sets import wrapped_kspace

    k = wrapped_kspace(seed=0)                                              # (8, 48, 48)
    r = active_reconstruct_kspace(k, acceleration=2, center_fraction=0.42, prior=prior, num_steps=STEPS,
                                  num_particles=3, generator=torch.Generator().manual_seed(0))
    assert r.complex_image.shape == (1, 2, 2, 48, 48)
    centre = torch.zeros(48)
    centre[list(r.initial_lines)] = 1                                       # the maps come from the centre
    calib = len(r.initial_lines)
    maps = estimate_coil_maps(k[None] * centre, num_maps=2, calib_width=calib, kernel_width=min(6, calib // 2))
    support = maps[:, 1].abs().amax(1) > 0
    second = r.complex_image[:, :, 1].abs().amax(1)
    assert 0.02 < support.float().mean() < 0.5 and (second[~support] == 0).all() and (second[support] > 0).any()
    truth = rss(ifft2c(k[None]), dim=1)
    quality = psnr(reference=truth, estimate=r.image)
    assert quality > psnr(reference=truth, estimate=r.baselines["sense"]) and quality > 31, quality


def test_acquisition_order_png(single, tmp_path):
    path = tmp_path / "order.png"
    save_acquisition_order(path, single)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and list(tmp_path.iterdir()) == [path]
    with pytest.raises(FileExistsError):
        save_acquisition_order(path, single)
    save_acquisition_order(path, single, overwrite=True)


def test_bad_input_is_named(prior, image):
    k = fft2c(image)
    cases = [
        (torch.stack([k, k])[:, None], {}, "one slice"),
        (k, {"acceleration": 1.0}, "acceleration must be > 1"),
        (k, {"acceleration": 16, "center_fraction": 0.08}, "nothing left to choose"),
        (torch.full_like(k, math.nan), {}, "NaN"),
        (k, {"sampler": "ddpm"}, "unknown sampler"),
        (fft2c(simulate_coil_maps(4, (N, N)) * image), {"center_fraction": 0.05, "acceleration": 8}, "coil maps"),
        (k, {"recon_size": (64, 32)}, "recon_size"),
    ]
    for kspace, kw, match in cases:
        with pytest.raises(ValueError, match=match):
            _run(kspace, prior, **kw)
    with pytest.raises(TypeError, match="complex or floating"):
        _run(torch.ones(N, N, dtype=torch.long), prior)
