"""Metrics against independent computations (scikit-image, numpy) with fastMRI's conventions."""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffinverse.metrics import nmse, psnr, ssim


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    gt = np.abs(rng.normal(size=shape)).cumsum(axis=-1)  # smooth-ish, non-negative structure
    pred = gt + 0.3 * rng.normal(size=shape)
    return gt.astype(np.float32), pred.astype(np.float32)


def _fastmri_ssim(gt, pred):
    # fastMRI's evaluate.ssim: per-slice skimage SSIM with the volume max as data range
    return np.mean([structural_similarity(gt[s], pred[s], data_range=gt.max()) for s in range(gt.shape[0])])


@pytest.mark.parametrize("shape", [(3, 20, 17), (1, 7, 7), (2, 33, 8)])
def test_ssim_matches_skimage(shape):
    gt, pred = _pair(shape)
    assert ssim(reference=gt, estimate=pred) == pytest.approx(_fastmri_ssim(gt.astype(np.float64), pred.astype(np.float64)), abs=1e-10)


def test_ssim_known_answers_and_torch_input():
    gt, pred = _pair((2, 16, 16), seed=1)
    assert ssim(reference=gt, estimate=gt) == pytest.approx(1.0, abs=1e-12)
    assert ssim(reference=torch.from_numpy(gt), estimate=torch.from_numpy(pred)) == pytest.approx(ssim(reference=gt, estimate=pred), abs=1e-12)
    # a 2-D image is a one-slice volume
    assert ssim(reference=gt[0], estimate=pred[0]) == pytest.approx(ssim(reference=gt[:1], estimate=pred[:1]), abs=1e-12)
    # data range is the volume's max, not each slice's
    scaled = gt.copy()
    scaled[1] *= 10
    expected = np.mean([structural_similarity(scaled[s].astype(np.float64), pred[s].astype(np.float64),
                                              data_range=float(scaled.max())) for s in range(2)])
    assert ssim(reference=scaled, estimate=pred) == pytest.approx(expected, abs=1e-10)


def test_psnr_nmse_match_independent():
    gt, pred = _pair((4, 12, 9), seed=2)
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    assert psnr(reference=gt, estimate=pred) == pytest.approx(peak_signal_noise_ratio(g, p, data_range=g.max()), abs=1e-9)
    assert psnr(reference=gt, estimate=pred, data_range=2.0) == pytest.approx(10 * np.log10(4.0 / np.mean((g - p) ** 2)), abs=1e-9)
    assert nmse(reference=gt, estimate=pred) == pytest.approx(np.sum((g - p) ** 2) / np.sum(g**2), rel=1e-12)
    assert nmse(reference=gt, estimate=gt) == 0.0
    assert psnr(reference=gt, estimate=gt) == math.inf


def test_metric_errors():
    gt, pred = _pair((2, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        nmse(reference=gt, estimate=pred[:1])
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        psnr(reference=gt[None], estimate=pred[None])
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(reference=gt[:, :5, :5], estimate=pred[:, :5, :5])
    with pytest.raises(ValueError, match="data_range must be positive"):
        psnr(reference=np.zeros((4, 4)), estimate=np.ones((4, 4)))
    with pytest.raises(TypeError, match="complex"):
        nmse(reference=torch.ones(4, 4, dtype=torch.complex64), estimate=torch.ones(4, 4))


@pytest.mark.parametrize("metric", [nmse, psnr, ssim])
def test_images_are_keyword_only(metric):
    # a swapped positional call would silently score against the wrong data range; it is refused
    gt, pred = _pair((1, 12, 12), seed=3)
    with pytest.raises(TypeError, match="positional"):
        metric(gt, pred)
    with pytest.raises(TypeError, match="positional"):
        metric(gt, estimate=pred)
    # the keywords name the roles, so their order does not matter
    assert metric(estimate=pred, reference=gt) == metric(reference=gt, estimate=pred)
    assert metric(reference=pred, estimate=gt) != metric(reference=gt, estimate=pred)
