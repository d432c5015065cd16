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
    assert ssim(gt, pred) == pytest.approx(_fastmri_ssim(gt.astype(np.float64), pred.astype(np.float64)), abs=1e-10)


def test_ssim_known_answers_and_torch_input():
    gt, pred = _pair((2, 16, 16), seed=1)
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-12)
    assert ssim(torch.from_numpy(gt), torch.from_numpy(pred)) == pytest.approx(ssim(gt, pred), abs=1e-12)
    # a 2-D image is a one-slice volume
    assert ssim(gt[0], pred[0]) == pytest.approx(ssim(gt[:1], pred[:1]), abs=1e-12)
    # data range is the volume's max, not each slice's
    scaled = gt.copy()
    scaled[1] *= 10
    expected = np.mean([structural_similarity(scaled[s].astype(np.float64), pred[s].astype(np.float64),
                                              data_range=float(scaled.max())) for s in range(2)])
    assert ssim(scaled, pred) == pytest.approx(expected, abs=1e-10)


def test_psnr_nmse_match_independent():
    gt, pred = _pair((4, 12, 9), seed=2)
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    assert psnr(gt, pred) == pytest.approx(peak_signal_noise_ratio(g, p, data_range=g.max()), abs=1e-9)
    assert psnr(gt, pred, data_range=2.0) == pytest.approx(10 * np.log10(4.0 / np.mean((g - p) ** 2)), abs=1e-9)
    assert nmse(gt, pred) == pytest.approx(np.sum((g - p) ** 2) / np.sum(g**2), rel=1e-12)
    assert nmse(gt, gt) == 0.0
    assert psnr(gt, gt) == math.inf


def test_metric_errors():
    gt, pred = _pair((2, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        nmse(gt, pred[:1])
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        psnr(gt[None], pred[None])
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(gt[:, :5, :5], pred[:, :5, :5])
    with pytest.raises(ValueError, match="data_range must be positive"):
        psnr(np.zeros((4, 4)), np.ones((4, 4)))
    with pytest.raises(TypeError, match="complex"):
        nmse(torch.ones(4, 4, dtype=torch.complex64), torch.ones(4, 4))
