"""Test-time adaptation of the prior (``adapt=Adaptation(...)``): exact where it promises to be,
effective on a mis-specified prior, and refusing what it cannot do.

Tiny UNets (16 x 16 complex images, 4 simulated coils) keep every run under a few seconds.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from diffinverse.operators.coils import simulate_coil_maps
from diffinverse.operators.masks import random_lines
from diffinverse.operators.mri import MultiCoilMRI
from diffinverse.priors.gmm import GaussianMixturePrior
from diffinverse.priors.unet import UNet
from diffinverse.samplers import DDS, DPS, REDDiff
from diffinverse.samplers.adaptation import Adaptation

S = 16


def _prior(sigma_data: float = 0.5, seed: int = 0) -> UNet:
    """A tiny UNet with non-trivial weights (its zero-initialised output layer perturbed too),
    frozen as the tasks freeze the shipped priors."""
    torch.manual_seed(seed)
    prior = UNet(channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, sigma_data=sigma_data).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
            p.requires_grad_(False)
    return prior


def _problem(acceleration: int = 4):
    g = torch.Generator().manual_seed(1)
    physics = MultiCoilMRI(random_lines((S, S), acceleration, 0.1, generator=g), simulate_coil_maps(4, (S, S)))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    x = torch.stack([(xx**2 + yy**2 < 0.6).float() + 0.3 * xx, 0.2 * yy])[None]
    return x, physics.A(x), physics


SAMPLERS = {"dds": (DDS, dict(num_steps=8, gamma=1.0)),
            "dps": (DPS, dict(num_steps=8, zeta=0.1)),
            "reddiff": (REDDiff, dict(num_steps=8, lr=0.05))}


def _run(name: str, prior, y, physics, adapt=None, **kwargs):
    cls, kw = SAMPLERS[name]
    sampler = cls(prior, progress=False, adapt=adapt, **{**kw, **kwargs})
    return sampler(y, physics, generator=torch.Generator().manual_seed(3), sigma_start=0.5), sampler


@pytest.mark.parametrize("name, layout", [("dds", {}), ("dps", {}), ("reddiff", {}),
                                          ("dds", {"channels_last": False, "autocast": True})],
                         ids=["dds", "dps", "reddiff", "dds-nchw-bf16"])
def test_zero_learning_rate_reproduces_the_unadapted_run_bit_for_bit(name, layout):
    prior = _prior()
    _, y, physics = _problem()
    ref, plain = _run(name, prior, y, physics, **layout)
    out, sampler = _run(name, prior, y, physics, adapt=Adaptation(lr=0.0, steps=2, rank=3), **layout)
    assert torch.equal(out, ref)
    assert sampler.last_nfe == plain.last_nfe
    record = sampler.last_adaptation
    # the passes were spent (the zero learning rate is not a shortcut): 2 per adapted step, every step
    assert record.adapted_steps == list(range(plain.last_nfe))
    assert record.forward_passes == record.backward_passes == 2 * plain.last_nfe
    assert plain.last_adaptation is None


def test_shipped_weights_are_bit_identical_after_an_adapted_run():
    prior = _prior()
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    flags = [p.requires_grad for p in prior.parameters()]
    _, y, physics = _problem()
    ref, _ = _run("dps", prior, y, physics)
    out, sampler = _run("dps", prior, y, physics, adapt=Adaptation(lr=1e-2, steps=2))
    assert not torch.equal(out, ref)   # the adapters did change the run
    after = prior.state_dict()
    assert before.keys() == after.keys()   # no adapter left behind in the prior
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in prior.parameters())
    assert [p.requires_grad for p in prior.parameters()] == flags
    assert sampler.network.__class__.__name__ == "NetworkCall"   # the sampler's own network is back
    again, _ = _run("dps", prior, y, physics)
    assert torch.equal(again, ref)


def test_adaptation_rescues_a_prior_for_another_intensity_range():
    """The prior was built for images of standard deviation 0.05 (``sigma_data``): its Tweedie
    estimate shrinks a unit-scale image towards zero, so the CG estimate misses the measured data.
    Adapting it to the measurement must lower the data loss within a step and across the run, and
    bring the reconstruction closer to the truth than the same run without adaptation."""
    prior = _prior(sigma_data=0.05)
    x, y, physics = _problem(acceleration=2)
    kw = dict(num_steps=8, gamma=1.0)
    plain = DDS(prior, progress=False, **kw)(y, physics, generator=torch.Generator().manual_seed(3))
    sampler = DDS(prior, progress=False, adapt=Adaptation(lr=3e-2, steps=6, rank=2), **kw)
    out = sampler(y, physics, generator=torch.Generator().manual_seed(3))
    losses = sampler.last_adaptation.losses
    assert losses[0][-1] < 0.95 * losses[0][0]              # Adam lowers the loss within the first step
    assert losses[-1][0] < 0.5 * losses[0][0]               # and over the run (state kept across steps)
    err = lambda z: ((z - x).norm() / x.norm()).item()
    assert err(out) < 0.75 * err(plain), (err(out), err(plain))


def test_which_steps_adapt():
    prior = _prior()
    _, y, physics = _problem()
    _, sampler = _run("dds", prior, y, physics, adapt=Adaptation(lr=1e-3, every=3))
    assert sampler.last_adaptation.adapted_steps == [0, 3, 6][:len(range(0, sampler.last_nfe, 3))]
    levels = DDS(prior, num_steps=8).schedule_for(0.5).tolist()
    window = (0.05, 0.3)
    _, sampler = _run("dds", prior, y, physics, adapt=Adaptation(lr=1e-3, sigma_range=window))
    expected = [i for i, s in enumerate(levels[:-1]) if window[0] <= s <= window[1]]
    assert expected and len(expected) < len(levels) - 1
    assert sampler.last_adaptation.adapted_steps == expected
    assert sampler.last_adaptation.forward_passes == len(expected)


def test_only_the_chosen_layers_get_adapters():
    prior = _prior()
    _, y, physics = _problem()
    _, all_conv = _run("dds", prior, y, physics, adapt=Adaptation(lr=1e-3, every=8))
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in prior.modules())
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in prior.modules())
    assert all_conv.last_adaptation.layers == n_conv
    _, both = _run("dds", prior, y, physics, adapt=Adaptation(lr=1e-3, every=8, layers="conv+linear"))
    assert both.last_adaptation.layers == n_conv + n_linear
    _, up = _run("dds", prior, y, physics, adapt=Adaptation(lr=1e-3, every=8, include=r"^net\.up\."))
    assert 0 < up.last_adaptation.layers < n_conv


def test_a_prior_without_convolutions_is_refused():
    _, y, physics = _problem()
    gmm = GaussianMixturePrior.random(2, (2, S, S), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no trainable conv layers"):
        DDS(gmm, num_steps=4, progress=False, adapt=Adaptation())(y, physics)
    with pytest.raises(ValueError, match="no trainable conv layers matching include"):
        _run("dds", _prior(), y, physics, adapt=Adaptation(include="no_such_layer"))

    def plain_function(x, sigma):
        return x / (1 + sigma**2)

    with pytest.raises(TypeError, match="network prior"):
        DDS(plain_function, num_steps=4, sigma_min=0.01, sigma_max=1.0, progress=False,
            adapt=Adaptation())(y, physics)


def test_a_non_finite_adapted_loss_stops_with_a_clear_error():
    prior = _prior()
    _, y, physics = _problem()
    # an absurd learning rate: the first Adam step sends the adapters to ~1e30, the next loss overflows
    with pytest.raises(FloatingPointError, match=r"adaptation loss is (nan|inf) at step 0 .*Adam step 2"):
        _run("dds", prior, y, physics, adapt=Adaptation(lr=1e30, steps=3))


@pytest.mark.parametrize("options, error", [
    (dict(rank=0), ValueError), (dict(steps=0), ValueError), (dict(every=0), ValueError),
    (dict(lr=-1.0), ValueError), (dict(lr=math.nan), ValueError), (dict(rank=2.0), TypeError),
    (dict(sigma_range=(1.0, 0.1)), ValueError), (dict(layers="attention"), ValueError),
    (dict(include="("), ValueError), (dict(cg_iters=0), ValueError), (dict(gamma=0.0), ValueError),
])
def test_bad_options_are_refused(options, error):
    with pytest.raises(error, match="Adaptation"):
        Adaptation(**options)


def test_bad_combinations_are_refused():
    prior = _prior()
    with pytest.raises(TypeError, match="adapt must be an Adaptation"):
        DDS(prior, adapt={"lr": 1e-3})
    with pytest.raises(ValueError, match="cuda_graph or compile"):
        DPS(prior, adapt=Adaptation(), cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph or compile"):
        DDS(prior, adapt=Adaptation(), compile=True)
    adaptation = Adaptation()
    with pytest.raises(dataclasses.FrozenInstanceError):
        adaptation.lr = 1.0
