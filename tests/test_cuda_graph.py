"""``cuda_graph=True``: a sampler's whole step captured as a CUDA graph and replayed.

Without a GPU (CI has none) these check the errors, the key that decides when a capture is
reused, and the loop around the graph with the capture replaced by re-running the step; the
replays themselves need one (on a CUDA machine: ``python -m pytest tests/test_cuda_graph.py``).
"""
from __future__ import annotations

import copy

import pytest
import torch
from deepinv.physics import LinearPhysics, Physics

from diffinverse.operators.masks import random_lines
from diffinverse.operators.mri import SingleCoilMRI
from diffinverse.priors.unet import UNet
from diffinverse.samplers import cuda_graph
from diffinverse.samplers.cuda_graph import StepGraphs, capture_key
from diffinverse.samplers.dps import DPS
from diffinverse.samplers.reddiff import REDDiff

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SAMPLERS = {"DPS": lambda net, **kw: DPS(net, **{"zeta": 1.0, "progress": False, "sigma_start": None,
                                                  "squared_norm": False, **kw}),
            "REDDiff": lambda net, **kw: REDDiff(net, **{"progress": False, "sigma_start": None, **kw})}


def _unet(device="cpu") -> UNet:
    torch.manual_seed(0)
    net = UNet(channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, data_range=(0.0, 1.0))
    for p in net.net.parameters():  # the output convolutions start at zero: give them weights
        p.data.normal_(0, 0.1)
    return net.to(device).eval()


def _mri(size: int, batch: int, device) -> tuple[SingleCoilMRI, torch.Tensor]:
    mask = random_lines((size, size), 4, 0.08, generator=torch.Generator().manual_seed(0)).to(device)
    physics = SingleCoilMRI(mask)
    x = torch.rand(batch, 2, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    return physics, physics.A(x)


def _tanh(size: int, device) -> tuple[Physics, torch.Tensor, torch.Tensor]:
    """A nonlinear physics (no adjoint: warm starts from x_init), its measurements and x_init."""
    physics = Physics(A=torch.tanh)
    y = physics.A(torch.rand(2, 2, size, size, generator=torch.Generator().manual_seed(1)).to(device))
    return physics, y, torch.full_like(y, 0.5)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator("cuda").manual_seed(seed)


def test_refused_where_it_cannot_work():
    net = _unet()
    with pytest.raises(ValueError, match="compile or cuda_graph, not both"):
        REDDiff(net, num_steps=4, compile=True, cuda_graph=True, sigma_start=None)
    with pytest.raises(ValueError, match="warmup >= 1"):
        StepGraphs(warmup=0)
    physics, y = _mri(16, 1, "cpu")
    for name in SAMPLERS:
        with pytest.raises(ValueError, match="CUDA device, got cpu"):
            SAMPLERS[name](net, num_steps=4, cuda_graph=True)(y, physics)


def test_when_a_capture_is_reused():
    """The key that decides whether a call replays a captured step (checked without a GPU): it
    follows what the graph reads at fixed addresses and what it holds as constants, and ignores
    what each call copies in afresh."""
    net = _unet()
    physics, y = _mri(16, 2, "cpu")
    sampler = DPS(net, num_steps=4, progress=False, sigma_start=None, squared_norm=False)

    def key(s=sampler, phys=physics, meas=y):
        x = phys.A_adjoint(meas)
        return capture_key(s, x, meas, phys, s.init_state(x, meas, phys), torch.zeros(5, dtype=torch.float64), [True] * 4)

    first = key()
    sampler(y, physics, generator=torch.Generator().manual_seed(0))   # changes last_nfe, not the key
    assert key() == first
    assert key(meas=y.transpose(-1, -2).contiguous().transpose(-1, -2)) == first   # copied in: any layout
    with torch.no_grad():
        physics._mask.mul_(1.0)                    # in place: the graph reads the same memory
        net.net.conv_out.weight.mul_(2.0)
    assert key() == first
    assert key(meas=y[:1]) != first                # another batch size
    assert key(phys=SingleCoilMRI(physics.mask)) != first      # another operator, equal or not
    sampler.clip_x0 = True                         # a setting the capture holds as a constant
    assert key() != first
    sampler.clip_x0 = False
    net.net.conv_out.weight = torch.nn.Parameter(net.net.conv_out.weight.detach().clone())
    assert key() != first                          # moved weights
    moved = key()
    physics._mask = physics._mask.clone()          # a reassigned mask
    assert key() != moved
    moved = key()
    weight = net.net.conv_out.weight
    weight.data = weight.data.clone()              # swapped in its Parameter (no registration)
    assert key() != moved
    moved = key()
    net.net.conv_out = copy.deepcopy(net.net.conv_out)   # a replaced submodule
    assert key() != moved


def _rerun_instead_of_capture(step, device, *, warmup, reset):
    """A CPU stand-in for the CUDA capture: a 'replay' runs the step again and writes its output
    where the captured one was, as a graph's replay would."""
    reset()
    out = step()

    def replay():
        new = step()
        with torch.inference_mode():   # RED-Diff's estimate is an inference tensor
            out.copy_(new)
    return replay, out


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_the_loop_around_the_graph_equals_the_eager_loop(name, monkeypatch):
    """The buffers, the step counter, the noise refills and the copies in and out, on the CPU: with
    the capture replaced by re-running the step, the results equal the eager loop's bit for bit.
    (Whether CUDA captures the step faithfully is for the GPU tests below.)"""
    monkeypatch.setattr(cuda_graph, "capture_graph", _rerun_instead_of_capture)
    net = _unet()
    physics, y = _mri(16, 2, "cpu")
    seen = {"eager": [], "graph": []}
    eager = SAMPLERS[name](net, num_steps=6, callback=lambda i, s, x, x0: seen["eager"].append((i, s, x.clone())))
    graphed = SAMPLERS[name](net, num_steps=6, cuda_graph=True,
                             callback=lambda i, s, x, x0: seen["graph"].append((i, s, x.clone())))
    g_eager, g_graph = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = eager(y, physics, generator=g_eager)
    b = graphed(y, physics, generator=g_graph)
    assert torch.equal(b, a) and graphed.last_nfe == eager.last_nfe == 6
    assert torch.equal(torch.randn(3, generator=g_eager), torch.randn(3, generator=g_graph))   # same draws
    assert [(i, s) for i, s, _ in seen["graph"]] == [(i, s) for i, s, _ in seen["eager"]]
    assert all(torch.equal(g[2], e[2]) for g, e in zip(seen["graph"], seen["eager"]))
    c = graphed(y, physics, generator=torch.Generator().manual_seed(1))   # replays the same capture
    assert len(graphed._graphs) == 1 and torch.equal(b, a) and not torch.equal(c, a)
    warm = [s(y, physics, generator=torch.Generator().manual_seed(2), sigma_start=0.5) for s in (eager, graphed)]
    assert torch.equal(warm[1], warm[0]) and graphed.last_nfe == eager.last_nfe < 6
    post = [s.posterior(y, physics, num_samples=3, max_batch=4, generator=torch.Generator().manual_seed(3))
            for s in (eager, graphed)]
    assert torch.equal(post[1].samples, post[0].samples) and graphed.last_nfe == eager.last_nfe == 12   # 2 chunks
    assert len(graphed._graphs) == 3   # + the warm start's shorter grid, + the 2-sample chunk's batch


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_the_loop_around_the_graph_with_a_nonlinear_physics(name, monkeypatch):
    """As above for a nonlinear physics: the data gradient by autograd inside the step, and for
    RED-Diff a per-run state with an empty entry (no A^H y)."""
    monkeypatch.setattr(cuda_graph, "capture_graph", _rerun_instead_of_capture)
    net = _unet()
    physics, y, x_init = _tanh(16, "cpu")
    eager = SAMPLERS[name](net, num_steps=6, sigma_start=0.5)
    graphed = SAMPLERS[name](net, num_steps=6, sigma_start=0.5, cuda_graph=True)
    a, b = (s(y, physics, x_init=x_init, generator=torch.Generator().manual_seed(0)) for s in (eager, graphed))
    assert torch.equal(b, a) and not torch.equal(a, x_init)


@cuda
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_replayed_equals_eager_and_captures_once_per_shape(name):
    dev = torch.device("cuda")
    net = _unet(dev)
    physics, y = _mri(32, 2, dev)
    seen = {"eager": [], "graph": []}
    eager = SAMPLERS[name](net, num_steps=8, callback=lambda i, s, x, x0: seen["eager"].append((i, s, x.clone())))
    graphed = SAMPLERS[name](net, num_steps=8, cuda_graph=True,
                             callback=lambda i, s, x, x0: seen["graph"].append((i, s, x.clone())))
    g_eager, g_graph = _gen(0), _gen(0)
    a = eager(y, physics, generator=g_eager)
    b = graphed(y, physics, generator=g_graph)
    c = graphed(y, physics, generator=_gen(0))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert torch.equal(b, c)   # a replay is deterministic
    assert len(graphed._graphs) == 1 and graphed.last_nfe == eager.last_nfe == 8
    assert not torch.equal(b, physics.A_dagger(y))   # the steps did move the estimate
    # the same draws in the same order: both generators end in the same state
    assert torch.equal(torch.randn(3, generator=g_eager, device=dev), torch.randn(3, generator=g_graph, device=dev))
    first_call = seen["graph"][:8]   # (the second call's steps follow)
    assert [s[:2] for s in first_call] == [s[:2] for s in seen["eager"]]
    torch.testing.assert_close(first_call[3][2], seen["eager"][3][2], rtol=1e-5, atol=1e-5)
    # a warm start is a shorter grid: its own graph
    warm_e = eager(y, physics, generator=_gen(1), sigma_start=0.5)
    warm_g = graphed(y, physics, generator=_gen(1), sigma_start=0.5)
    torch.testing.assert_close(warm_g, warm_e, rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs) == 2 and graphed.last_nfe == eager.last_nfe < 8
    # posterior(): chunks of 2 samples (4 images) and of 1 sample (2 images) -> one graph more
    pe = eager.posterior(y, physics, num_samples=3, max_batch=4, generator=_gen(1))
    pg = graphed.posterior(y, physics, num_samples=3, max_batch=4, generator=_gen(1))
    torch.testing.assert_close(pg.samples, pe.samples, rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs) == 3


@cuda
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_replayed_equals_eager_with_a_nonlinear_physics(name):
    """A nonlinear physics: the data gradient's autograd runs inside the captured step."""
    dev = torch.device("cuda")
    net = _unet(dev)
    physics, y, x_init = _tanh(32, dev)
    eager = SAMPLERS[name](net, num_steps=8, sigma_start=0.5)
    graphed = SAMPLERS[name](net, num_steps=8, sigma_start=0.5, cuda_graph=True)
    a, b, c = (s(y, physics, x_init=x_init, generator=_gen(0)) for s in (eager, graphed, graphed))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert torch.equal(b, c) and len(graphed._graphs) == 1
    assert (b - x_init).abs().max() > 1e-2   # the steps did move the estimate


@cuda
def test_a_cpu_generator_gives_the_eager_draws():
    dev = torch.device("cuda")
    net = _unet(dev)
    physics, y = _mri(32, 2, dev)
    a = DPS(net, num_steps=6, progress=False, sigma_start=None, squared_norm=False)(y, physics, generator=torch.Generator().manual_seed(0))
    b = DPS(net, num_steps=6, progress=False, cuda_graph=True, sigma_start=None, squared_norm=False)(y, physics, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@cuda
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_graphs_follow_the_physics_and_the_weights(name):
    """Changes in place reach the replayed graph; a reassigned mask or weight, or another physics,
    make it capture anew instead of reading the old addresses."""
    dev = torch.device("cuda")
    net = _unet(dev)
    physics, y = _mri(32, 2, dev)
    eager = SAMPLERS[name](net, num_steps=6)
    graphed = SAMPLERS[name](net, num_steps=6, cuda_graph=True)

    def both(phys):
        return graphed(y, phys, generator=_gen(0)), eager(y, phys, generator=_gen(0))

    before, _ = both(physics)
    with torch.no_grad():
        net.net.conv_out.weight.mul_(2.0)                          # in place: the same graph sees it
    got, want = both(physics)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs) == 1 and not torch.allclose(got, before)
    net.net.conv_out.weight = torch.nn.Parameter(net.net.conv_out.weight.detach() * 0.5)   # moved
    got, want = both(physics)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, before, rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs) == 2
    physics._mask = physics._mask.roll(1, dims=-1).clone()          # a reassigned mask
    got, want = both(physics)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs) == 3
    other, _ = _mri(32, 2, dev)                                     # another physics object
    got, want = both(other)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs) == 4


@cuda
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_graph_captured_under_autocast_survives_memory_reuse(name):
    """Captured with bf16 autocast inside the step, the graph holds its own weight casts: memory
    churn between calls must not change later replays."""
    dev = torch.device("cuda")
    net = _unet(dev)
    physics, y = _mri(32, 2, dev)
    eager = SAMPLERS[name](net, num_steps=6, autocast=True)
    graphed = SAMPLERS[name](net, num_steps=6, autocast=True, cuda_graph=True)
    a = eager(y, physics, generator=_gen(0))
    b = graphed(y, physics, generator=_gen(0))
    churn = [torch.full((1 << 16,), float(i), device=dev) for i in range(64)]   # reuse freed memory
    c = graphed(y, physics, generator=_gen(0))
    del churn
    torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-2)   # bf16 network
    assert torch.equal(b, c)


class _Synchronising(LinearPhysics):
    """A linear operator that reads a value back to the host (cannot be captured)."""

    def A(self, x, **kwargs):
        return x * float(x.abs().amax())

    def A_adjoint(self, y, **kwargs):
        return y


@cuda
def test_a_physics_that_cannot_be_captured_is_named():
    dev = torch.device("cuda")
    net = _unet(dev)
    y = torch.rand(1, 2, 16, 16, device=dev)
    with pytest.raises(RuntimeError, match="could not capture a step of DPS with _Synchronising"):
        DPS(net, num_steps=4, progress=False, cuda_graph=True, sigma_start=None, squared_norm=False)(y, _Synchronising(), generator=_gen(0))
    # the failed capture leaves the device usable
    x = DPS(net, num_steps=4, progress=False, sigma_start=None, squared_norm=False)(y, _Synchronising(), generator=_gen(0))
    assert torch.isfinite(x).all()
