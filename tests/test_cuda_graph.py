"""``cuda_graph=True``: the network's forward pass replayed as a CUDA graph.

The errors are checked everywhere; the replay itself needs a GPU (CI has none; on a CUDA machine:
``python -m pytest tests/test_cuda_graph.py``).
"""
from __future__ import annotations

import pytest
import torch

from diffinverse.operators.masks import random_lines
from diffinverse.operators.mri import SingleCoilMRI
from diffinverse.priors.unet import UNet
from diffinverse.samplers.cuda_graph import GraphedNetwork
from diffinverse.samplers.dps import DPS
from diffinverse.samplers.reddiff import REDDiff

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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


def test_refused_where_it_cannot_work():
    net = _unet()
    with pytest.raises(ValueError, match="DPS differentiates through the network"):
        DPS(net, num_steps=4, cuda_graph=True)
    with pytest.raises(ValueError, match="compile or cuda_graph, not both"):
        REDDiff(net, num_steps=4, compile=True, cuda_graph=True)
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        GraphedNetwork(net, warmup=0)
    physics, y = _mri(16, 1, "cpu")
    with pytest.raises(ValueError, match="CUDA device, got cpu"):
        REDDiff(net, num_steps=4, cuda_graph=True, progress=False)(y, physics)
    # a wrong channel count is reported as such (the graph runs denoise(), not the checked call)
    with pytest.raises(ValueError, match="expects 2 channel"):
        GraphedNetwork(net)(torch.zeros(1, 3, 16, 16), 0.5)


@cuda
def test_reddiff_replayed_equals_eager_and_captures_once_per_shape():
    dev = torch.device("cuda")
    net = _unet(dev)
    physics, y = _mri(32, 2, dev)
    eager = REDDiff(net, num_steps=8, progress=False)
    graphed = REDDiff(net, num_steps=8, progress=False, cuda_graph=True)
    a = eager(y, physics, generator=torch.Generator(dev).manual_seed(0))
    b = graphed(y, physics, generator=torch.Generator(dev).manual_seed(0))
    c = graphed(y, physics, generator=torch.Generator(dev).manual_seed(0))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert torch.equal(b, c)   # a replay is deterministic
    assert len(graphed._network._captures) == 1 and graphed.last_nfe == eager.last_nfe == 8
    assert not torch.equal(b, physics.A_dagger(y))   # the steps did move the estimate
    # posterior(): chunks of 2 samples (4 images) and of 1 sample (2 images) -> one graph per shape
    pe = eager.posterior(y, physics, num_samples=3, max_batch=4, generator=torch.Generator(dev).manual_seed(1))
    pg = graphed.posterior(y, physics, num_samples=3, max_batch=4, generator=torch.Generator(dev).manual_seed(1))
    torch.testing.assert_close(pg.samples, pe.samples, rtol=1e-5, atol=1e-5)
    assert len(graphed._network._captures) == 2


@cuda
def test_graphed_network_outputs_are_fresh_tensors_and_equal_the_network():
    dev = torch.device("cuda")
    net = _unet(dev)
    graphed = GraphedNetwork(net)
    x1, x2 = torch.randn(2, 3, 2, 16, 16, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.inference_mode():
        # the graph runs the network in channels-last layout (its default): compare in that layout,
        # since a different layout picks different convolution kernels (differences ~1e-5)
        want1, want2 = (net(x.contiguous(memory_format=torch.channels_last), s) for x, s in ((x1, 0.3), (x2, 0.7)))
        got1 = graphed(x1, 0.3)
        got2 = graphed(x2, 0.7)   # the second replay must not overwrite the first output
        got3 = graphed(x2, torch.tensor([0.7, 0.7, 0.7], device=dev))
    for got, want in ((got1, want1), (got2, want2), (got3, want2)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got1, got2)
    with pytest.raises(ValueError, match="finite and non-negative"):
        graphed(x1, float("nan"))
    with pytest.raises(RuntimeError, match="without autograd"):
        graphed(x1.clone().requires_grad_(True), 0.3)


@cuda
def test_graphs_follow_the_network_weights():
    """In-place weight changes reach the replayed graph; moved weights (a reassigned parameter)
    make it capture anew instead of reading the old addresses."""
    dev = torch.device("cuda")
    net = _unet(dev)
    graphed = GraphedNetwork(net)
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(0)).to(dev)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    conv = net.net.conv_out

    def both():
        with torch.inference_mode():
            return graphed(x, 0.5), net(nhwc, 0.5)

    before, _ = both()
    with torch.no_grad():
        conv.weight.mul_(2.0)                                    # in place: the same graph sees it
    in_place, want = both()
    torch.testing.assert_close(in_place, want, rtol=1e-5, atol=1e-5)
    assert len(graphed._captures) == 1 and not torch.allclose(in_place, before)
    conv.weight = torch.nn.Parameter(conv.weight.detach() * 0.5)  # moved: captured anew
    moved, want = both()
    torch.testing.assert_close(moved, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moved, before, rtol=1e-5, atol=1e-5)


@cuda
def test_graph_captured_under_autocast_survives_the_autocast_region():
    """Captured under bf16 autocast, the graph must hold its own weight casts: memory churn after
    the autocast region (which frees autocast's cache) must not change later replays."""
    dev = torch.device("cuda")
    net = _unet(dev)
    physics, y = _mri(32, 2, dev)
    eager = REDDiff(net, num_steps=6, progress=False, autocast=True)
    graphed = REDDiff(net, num_steps=6, progress=False, autocast=True, cuda_graph=True)
    a = eager(y, physics, generator=torch.Generator(dev).manual_seed(0))
    b = graphed(y, physics, generator=torch.Generator(dev).manual_seed(0))
    churn = [torch.full((1 << 16,), float(i), device=dev) for i in range(64)]   # reuse freed memory
    c = graphed(y, physics, generator=torch.Generator(dev).manual_seed(0))
    del churn
    torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-2)   # bf16 network
    assert torch.equal(b, c)
