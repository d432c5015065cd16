"""The shipped priors: load by name, stay small, denoise held-out data, and sample like their data.

Model-card figures (denoising PSNR next to Gaussian filtering and BM3D, on held-out synthetic and
real images) come from ``benchmarks/eval_priors.py``; these tests keep the cheap, seed-fixed
parts of those claims from regressing.
"""
import math
from pathlib import Path

import pytest
import torch

from diffinverse.datasets.images import random_crop
from diffinverse.priors import available, load, sample_heun

WEIGHTS = Path(__file__).resolve().parents[1] / "diffinverse" / "weights"


def _heldout(name: str, n: int, g: torch.Generator) -> torch.Tensor:
    if name.startswith("mri-brain"):
        from diffinverse.datasets.brain import BrainSlices

        return random_crop(BrainSlices("test", generator=g).sample(n), 96, generator=g)
    from diffinverse.datasets.ct_slices import synthetic_ct_slices

    return synthetic_ct_slices(n, 96, generator=g)


def _training(name: str, n: int, g: torch.Generator) -> torch.Tensor:
    if name == "mri-brain":
        from diffinverse.datasets.brain import BrainSlices

        return random_crop(BrainSlices("train", generator=g).sample(n), 64, generator=g)
    from diffinverse.datasets.ct_slices import synthetic_ct_slices

    return random_crop(synthetic_ct_slices(n, 128, generator=g), 64, generator=g)


def _magnitude(x: torch.Tensor) -> torch.Tensor:
    return x.square().sum(1).sqrt()


def test_shipped_names_files_and_metadata():
    assert available() == ["ct-ellipses", "ct-ellipses-v2", "mri-brain", "mri-brain-latent", "mri-brain-v2"]
    for name, channels in (("mri-brain", 2), ("ct-ellipses", 1), ("ct-ellipses-v2", 1), ("mri-brain-latent", 2),
                           ("mri-brain-v2", 2)):
        path = WEIGHTS / f"{name}.safetensors"
        assert path.stat().st_size < 4 * 2**20, f"{path} exceeds 4 MB"
        assert (WEIGHTS / f"{name}.md").is_file(), f"{name} has no model card"
        prior = load(name, channels=channels)
        assert prior.channels == channels and not prior.training


@pytest.mark.parametrize("name", ["mri-brain", "mri-brain-v2", "ct-ellipses", "ct-ellipses-v2"])
def test_denoises_heldout_images_well_beyond_the_noisy_input(name):
    g = torch.Generator().manual_seed(5)
    prior = load(name)
    x = _heldout(name, 4, g)
    for sigma, gain_db in ((0.1, 8.0), (0.5, 10.0)):
        noisy = x + sigma * torch.randn(x.shape, generator=g)
        with torch.inference_mode():
            err_out = (prior(noisy, sigma) - x).square().mean().item()
        err_in = (noisy - x).square().mean().item()
        # measured (eval_priors.py, 8 images): 10-20 dB over the noisy input at these levels
        assert 10 * math.log10(err_in / err_out) > gain_db, (name, sigma)


@pytest.mark.parametrize("name", ["mri-brain", "ct-ellipses"])
def test_unconditional_samples_match_training_intensity_statistics(name):
    g = torch.Generator().manual_seed(0)
    prior = load(name)
    samples = _magnitude(sample_heun(prior, (8, prior.channels, 64, 64), num_steps=12, generator=g))
    data = _magnitude(_training(name, 64, g))
    # measured with benchmarks/prior_samples.py (16 samples, 32 levels): mean ratio 0.78 (mri) and
    # 0.95 (ct), std ratio 0.84 and 1.17; the bounds allow for 8 samples' sampling error
    assert 0.55 < samples.mean() / data.mean() < 1.45
    assert 0.65 < samples.std() / data.std() < 1.35
    assert samples.max() < 2 * data.max()


def _assert_second_denoises_better(x: torch.Tensor, first: str, second: str) -> None:
    """Prior ``second`` has the smaller denoising error than ``first`` on ``x`` at sigma 0.05 and 0.1
    (the same noise draw for both)."""
    errors = {}
    for name in (first, second):
        prior = load(name)
        errors[name] = []
        for sigma in (0.05, 0.1):
            noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                errors[name].append((prior(noisy, sigma) - x).square().mean().item())
    assert all(b < a for a, b in zip(errors[first], errors[second])), errors


FIGSHARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "mri_brain_figshare_cheng2017_jpg"


@pytest.mark.skipif(not FIGSHARE.is_dir(), reason="needs ../shared/data/train (the real training images)")
def test_v2_denoises_held_out_real_head_images_better_than_v1():
    # mri-brain-v2 was fine-tuned on real head images; on patients held out of its training it must
    # denoise better than the template-trained mri-brain (its model card has the full table)
    from diffinverse.datasets.brain import smooth_random_phase
    from diffinverse.datasets.real_images import RealImages
    from diffinverse.imaging import to_prior_range

    images = RealImages(FIGSHARE, split="heldout", modality="MR")
    g = torch.Generator().manual_seed(0)
    batch = []
    for i in (0, len(images) // 2, len(images) - 1):
        x = random_crop(images.read(i)[None], 128, generator=g)[0]
        phase = smooth_random_phase(1, tuple(x.shape[-2:]), generator=g)
        scaled, _ = to_prior_range(torch.cat([x * phase.cos(), x * phase.sin()])[None])
        batch.append(scaled[0])
    _assert_second_denoises_better(torch.stack(batch), "mri-brain", "mri-brain-v2")


COVID_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "ct_covid19_ny_sbu_axial"


@pytest.mark.skipif(not COVID_CT.is_dir(), reason="needs ../shared/data/train (the real training images)")
def test_ct_v2_denoises_held_out_real_ct_better_than_ct_ellipses():
    # ct-ellipses-v2 was fine-tuned on real CT slices; on the patient held out of its training it
    # must denoise better than the phantom-trained ct-ellipses (its model card has the full table)
    from diffinverse.datasets.real_images import RealImages

    images = RealImages(COVID_CT, split="heldout", ct=True, modality="CT", max_side=256)
    g = torch.Generator().manual_seed(0)
    x = torch.stack([random_crop(images[i][None], 128, generator=g)[0] for i in range(len(images))])
    _assert_second_denoises_better(x, "ct-ellipses", "ct-ellipses-v2")
