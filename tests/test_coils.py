"""ESPIRiT coil maps on simulated 8-coil k-space of a real brain image; RSS; SENSE combination."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffinverse.operators.coils import estimate_coil_maps, rss, sense_combine, simulate_coil_maps
from diffinverse.operators.masks import equispaced_lines
from diffinverse.operators.mri import MultiCoilMRI, fft2c, ifft2c, to_channels, to_complex


@pytest.fixture(scope="module")
def brain():
    """A real T1 brain slice with a smooth phase, 96x96: MNI152 (1 mm) as shipped inside nilearn.

    The NIfTI file is read with nibabel from nilearn's package data (what
    ``nilearn.datasets.load_mni152_template`` loads), which avoids importing nilearn itself.
    """
    import importlib.util
    import os

    import nibabel

    root = os.path.dirname(importlib.util.find_spec("nilearn").origin)
    vol = nibabel.load(os.path.join(root, "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    img = torch.tensor(np.rot90(np.asarray(vol.dataobj[:, :, 90], dtype=np.float32)).copy())
    img = F.interpolate(img[None, None], size=(96, 96), mode="area")[0, 0]
    img = img.clamp_min(0) / img.max()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 96), torch.linspace(-1, 1, 96), indexing="ij")
    return img * torch.exp(1j * torch.pi * 0.5 * (xx + 0.3 * yy))


@pytest.fixture(scope="module")
def coil_data(brain):
    maps = simulate_coil_maps(8, brain.shape)
    return maps, fft2c(maps * brain)


def test_espirit_maps_and_combination_reproduce_image(brain, coil_data):
    true_maps, ksp = coil_data
    maps = estimate_coil_maps(ksp, num_maps=1, calib_width=24, kernel_width=6)
    assert maps.shape == (1, 8, 96, 96) and maps.dtype == torch.complex64
    support = brain.abs() > 0.05
    # the estimated map is the normalised true sensitivity up to a per-pixel phase
    normalised = true_maps / rss(true_maps, dim=0)
    corr = (maps[0].conj() * normalised).sum(0).abs()
    assert corr[support].min() > 0.999
    # SENSE combination of the fully sampled coil images reproduces |x| (measured: 1e-5)
    combined = sense_combine(ifft2c(ksp), maps[0])
    err = (combined.abs() - brain.abs())[support].norm() / brain.abs()[support].norm()
    assert err < 1e-3
    # RSS of the coil images is |x| weighted by the RSS of the sensitivities
    torch.testing.assert_close(rss(ifft2c(ksp), dim=0), brain.abs() * rss(true_maps, dim=0), atol=1e-5, rtol=1e-4)


def test_espirit_sense_from_undersampled_data(brain, coil_data):
    _, ksp = coil_data
    mask = equispaced_lines((96, 96), 2, 0.25, offset=0)  # 24 centre lines = calibration block
    y = to_channels((ksp * mask)[None]).contiguous()
    maps = estimate_coil_maps(ksp * mask, num_maps=1, calib_width=24)
    op = MultiCoilMRI(mask, maps, cg_lambda=1e-4, cg_iters=100)
    x = to_complex(op.A_dagger(y))[0]
    support = brain.abs() > 0.05
    gt = brain.abs()[support]
    sense_err = ((x.abs()[support] - gt).norm() / gt.norm()).item()
    zf = rss(ifft2c(ksp * mask), dim=0) / rss(ifft2c(ksp), dim=0).clamp_min(1e-6)
    zf_err = ((zf[support] * gt - gt).norm() / gt.norm()).item()
    assert sense_err < 0.01 < zf_err  # noise-free 2x SENSE is ~exact; zero-filling aliases


def test_two_maps_explain_a_wrapped_field_of_view(brain):
    # object 96 wide seen through a 64-wide FOV: the right 32 columns fold onto the left ones
    maps = simulate_coil_maps(8, (96, 96))
    coil = maps * brain
    wrapped = coil[..., :64].clone()
    wrapped[..., :32] += coil[..., 64:]
    ksp = fft2c(wrapped)
    residual = []
    for m in (1, 2):
        est = estimate_coil_maps(ksp, num_maps=m, calib_width=24, crop=0.8)
        proj = (est.transpose(0, 1) * sense_combine(wrapped, est)[None]).sum(1)  # sum_m S_m S_m^H x
        residual.append(((proj - wrapped).norm() / wrapped.norm()).item())
    assert residual[1] < 0.2 * residual[0]  # measured: 0.033 (one map) vs 0.0033 (two)


def test_batched_slices_two_maps_are_orthonormal(coil_data):
    _, ksp = coil_data
    stack = torch.stack([ksp, 3 * ksp.flip(-1)])
    maps = estimate_coil_maps(stack, num_maps=2, calib_width=20, kernel_width=5, crop=0.0)
    assert maps.shape == (2, 2, 8, 96, 96)
    # slices are processed independently: slice 0 equals the unbatched estimate
    torch.testing.assert_close(maps[0], estimate_coil_maps(ksp, num_maps=2, calib_width=20, kernel_width=5,
                                                            crop=0.0), atol=1e-4, rtol=1e-4)
    gram = torch.einsum("smchw,snchw->smnhw", maps.conj(), maps)
    torch.testing.assert_close(gram, torch.eye(2, dtype=gram.dtype)[None, :, :, None, None].expand_as(gram),
                               atol=1e-4, rtol=0)
    # the coil-0 phase reference makes coil 0 real and non-negative
    assert maps[:, :, 0].imag.abs().max() < 1e-5 and maps[:, :, 0].real.min() >= 0


def test_rss_and_sense_combine_known_answers():
    x = torch.tensor([[3 + 4j, 0j], [0j, 1j]])[:, :, None]  # (C=2, H=2, W=1)
    torch.testing.assert_close(rss(x, dim=0), torch.tensor([[5.0], [1.0]]))
    maps = torch.zeros(2, 2, 2, 1, dtype=torch.complex64)
    maps[0, 0], maps[1, 1] = 1, 1j
    out = sense_combine(x.to(torch.complex64), maps)
    assert out.shape == (2, 2, 1)
    torch.testing.assert_close(out[:, :, 0], torch.tensor([[3 + 4j, 0], [0, 1]], dtype=torch.complex64))


def test_bad_inputs(coil_data):
    _, ksp = coil_data
    with pytest.raises(TypeError, match="complex"):
        estimate_coil_maps(ksp.real)
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(S, C, H, W\)"):
        estimate_coil_maps(ksp[0, 0])
    with pytest.raises(ValueError, match="num_maps must be in"):
        estimate_coil_maps(ksp, num_maps=9)
    with pytest.raises(ValueError, match="calib_width"):
        estimate_coil_maps(ksp, calib_width=4, kernel_width=6)
    bad = ksp.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        estimate_coil_maps(bad)
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(M, C, H, W\)"):
        sense_combine(ksp, ksp[:3])
