"""Both ESPIRiT map sets under the model: the stack prior and the pipeline's ``second_map_set``."""
import pytest
import torch

from diffinverse.baselines import tv_objective
from diffinverse.imaging import prior_range_scale
from diffinverse.operators import simulate_coil_maps
from diffinverse.operators.coils import estimate_coil_maps
from diffinverse.operators.mri import MultiCoilMRI, fft2c, to_channels
from diffinverse.pipelines import reconstruct_kspace, retrospective_mask
from diffinverse.pipelines.fastmri import TV_LAMBDA, calibration_width
from diffinverse.priors import ImageStackPrior, UNet
from diffinverse.priors.stack import from_planes, to_planes
from test_pipeline import multicoil_kspace, smooth_image


def wrapped_kspace(seed=0, size=48, extra=24, coils=8):
    """``(C, size, size)`` k-space of an object ``size + extra`` wide seen through a ``size``-wide
    field of view: its right ``extra`` columns fold onto the left ones (ESPIRiT then finds a
    second map set there)."""
    h, w = size, size + extra
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    obj = ((yy**2 / 0.8 + xx**2) < 1).float() * (1 + 0.5 * smooth_image(h, w, seed=seed).abs())
    coil = simulate_coil_maps(coils, (h, w)) * (obj * torch.exp(1j * (0.5 * xx + 0.3 * yy)))
    folded = coil[..., :size].clone()
    folded[..., :extra] += coil[..., size:]
    return fft2c(folded.to(torch.complex64))


@pytest.fixture(scope="module")
def wrapped():
    """Two wrapped slices, a 2x mask whose centre is wide enough for the second map set, the maps."""
    k = torch.stack([wrapped_kspace(seed=s) for s in range(2)])
    mask = retrospective_mask((48, 48), acceleration=2, center_fraction=0.42, generator=torch.Generator().manual_seed(0))
    calib = calibration_width(mask)
    maps = estimate_coil_maps(k * mask, num_maps=2, calib_width=calib, kernel_width=min(6, max(2, calib // 2)))
    support = maps[:, 1].abs().amax(1) > 0
    assert 0.02 < support.float().mean() < 0.5      # the data have what these tests are about
    return k, mask, maps, support


def test_stack_prior_denoises_each_image_on_its_own_at_its_items_sigma():
    prior = tiny_prior()
    stack = ImageStackPrior(prior)
    assert (stack.channels, stack.sigma_max, stack.data_range) == (prior.channels, prior.sigma_max, prior.data_range)
    x = torch.randn(2, 2, 3, 16, 16)
    sigma = torch.tensor([0.3, 1.5])
    with torch.no_grad():
        out = stack(x, sigma)
        for b in range(2):
            for s in range(3):
                torch.testing.assert_close(out[b, :, s], prior(x[b:b + 1, :, s], sigma[b:b + 1])[0])
        torch.testing.assert_close(stack(x[:, :, 0], sigma), prior(x[:, :, 0], sigma), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(B, C, S, H, W\)"):
        stack(torch.randn(1, 2, 3, 4, 8, 8), 0.1)


@pytest.mark.parametrize("axis", [2, 3, 4])
def test_planes_fold_and_unfold(axis):
    x = torch.randn(2, 3, 4, 5, 6)
    flat = to_planes(x, axis)
    assert flat.shape == (2 * x.shape[axis], 3, *[n for d, n in enumerate(x.shape) if d not in (0, 1, axis)])
    torch.testing.assert_close(flat[x.shape[axis] + 1], x[1].select(axis - 1, 1))   # item 1, plane 1
    torch.testing.assert_close(from_planes(flat, x, axis), x, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["tv", "dds"])
def test_without_a_second_map_set_both_modes_are_the_same(method):
    # a field of view that does not wrap: the second set is empty and modelling it changes nothing
    k = multicoil_kspace(slices=1, coils=4, shape=(32, 32))
    mask = retrospective_mask((32, 32), acceleration=2, center_fraction=0.3, generator=torch.Generator().manual_seed(1))
    kw = {} if method == "tv" else {"num_steps": 6, "prior": tiny_prior()}
    runs = [reconstruct_kspace(k, mask, method=method, second_map_set=mode, **kw,
                               **({} if method == "tv" else {"generator": torch.Generator().manual_seed(0)}))
            for mode in ("model", "sense")]
    torch.testing.assert_close(runs[0].image, runs[1].image, rtol=0, atol=0)


def tiny_prior():
    """An untrained 2-channel UNet (the tests check the plumbing, not the prior)."""
    torch.manual_seed(0)
    return UNet(channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1).eval()


def test_tv_of_both_images_lowers_the_joint_objective(wrapped):
    # "model" minimises ||A1 x1 + A2 x2 - y||^2 / 2 + lam (TV(x1) + TV(x2)) over both images; "sense"
    # fixes x2 at SENSE's: the first can be no worse on that objective (both run to convergence)
    k, mask, maps, support = wrapped
    model, sense = (reconstruct_kspace(k, mask, method="tv", second_map_set=mode) for mode in ("model", "sense"))
    x_sense = reconstruct_kspace(k, mask, method="sense").complex_image
    lam = TV_LAMBDA * prior_range_scale(x_sense[:, :, 0])          # the pipeline's weight in the data's units
    y = to_channels(k * mask)
    objective = {}
    for name, rec in (("model", model), ("sense", sense)):
        objective[name] = torch.stack([
            tv_objective(rec.complex_image[i:i + 1], y[i:i + 1], MultiCoilMRI(mask, maps[i:i + 1]), float(lam[i]),
                         spatial_dims=2) for i in range(2)]).squeeze(1)
    assert (objective["model"] < objective["sense"]).all(), objective
    # the second image is defined where its maps are; zero elsewhere, as in SENSE
    second = model.complex_image[:, :, 1].abs().amax(1)
    assert (second[~support] == 0).all() and (second[support] > 0).any()
    assert not torch.equal(model.complex_image[:, :, 1], sense.complex_image[:, :, 1])


def test_a_sampler_reconstructs_both_images_with_one_network_call_per_step(wrapped):
    k, mask, _, support = wrapped
    prior = tiny_prior()
    runs = {mode: reconstruct_kspace(k, mask, method="dds", prior=prior, num_steps=8, second_map_set=mode,
                                     generator=torch.Generator().manual_seed(0)) for mode in ("model", "sense")}
    model = runs["model"]
    assert torch.isfinite(model.image).all() and model.complex_image.shape == (2, 2, 2, 48, 48)
    assert model.nfe == runs["sense"].nfe                      # the stack goes through the network at once
    second = model.complex_image[:, :, 1].abs().amax(1)
    assert (second[~support] == 0).all() and (second[support] > 0).any()
    # the first map set's image is not the same as with SENSE's second image held fixed
    assert not torch.equal(model.complex_image[:, :, 0], runs["sense"].complex_image[:, :, 0])


def test_bad_second_map_set_settings_are_refused():
    k = multicoil_kspace(slices=1, coils=4, shape=(32, 32))
    with pytest.raises(ValueError, match="second_map_set must be one of model, sense"):
        reconstruct_kspace(k, method="tv", acceleration=2, second_map_set="both")
    with pytest.raises(ValueError, match="needs a pixel prior"):
        reconstruct_kspace(k, method="stsl", acceleration=2, second_map_set="model")


def test_one_rule_resolves_the_map_set_mode_for_the_pipeline_and_the_command_line():
    from diffinverse.priors import load
    from diffinverse.pipelines.fastmri import resolve_second_map_set

    latent = load("mri-brain-latent")
    assert resolve_second_map_set(None, None) == "model" and resolve_second_map_set(tiny_prior(), "sense") == "sense"
    assert resolve_second_map_set(latent, None) == "sense"      # a latent prior models one image
    with pytest.raises(ValueError, match="needs a pixel prior"):
        resolve_second_map_set(latent, "model")


def test_adaptation_include_patterns_name_the_2d_priors_layers_inside_the_stack():
    from diffinverse.samplers.adaptation import Adaptation, lora_targets

    prior = tiny_prior()
    plain = lora_targets(prior, Adaptation(include="^net"))
    stacked = lora_targets(ImageStackPrior(prior), Adaptation(include="^net"))
    assert [f"prior.{name}" for name, _ in plain] == [name for name, _ in stacked]
    assert all(a is b for (_, a), (_, b) in zip(plain, stacked))


def test_adaptation_runs_on_both_map_sets_images(wrapped):
    from diffinverse.samplers.adaptation import Adaptation

    k, mask, _, _ = wrapped
    prior = tiny_prior()
    before = {n: p.clone() for n, p in prior.state_dict().items()}
    runs = [reconstruct_kspace(k[:1], mask, method="dds", prior=prior, num_steps=4, adapt=adapt,
                               generator=torch.Generator().manual_seed(0))
            for adapt in (None, Adaptation(lr=1e-2, every=1))]
    assert torch.isfinite(runs[1].image).all() and not torch.equal(runs[0].image, runs[1].image)
    assert all(torch.equal(before[n], p) for n, p in prior.state_dict().items())   # weights untouched
