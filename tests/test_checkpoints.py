"""Save/load round trips and clear errors; foreign networks wrapped with the VP/range maths."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffinverse.priors import checkpoints
from diffinverse.priors.base import Prior, RangeAdapter, VPDenoiser
from diffinverse.priors.unet import UNet


class Tiny(Prior):
    """A minimal prior with a config, to test our format independently of UNet."""

    def __init__(self, *, channels=1, width=3):
        super().__init__()
        self.channels = channels
        self.config = {"channels": channels, "width": width}
        self.conv = torch.nn.Conv2d(channels, channels, width, padding=width // 2)

    def denoise(self, x, sigma):
        return x + sigma.view(-1, 1, 1, 1) * self.conv(x)


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module


def _tiny_unet():
    return _randomise(UNet(channels=2, base_channels=4, channel_mult=(1, 2), num_res_blocks=1,
                           sigma_max=20.0, data_range=(-2.0, 2.0)))


def test_unet_round_trip_is_exact(tmp_path):
    prior = _tiny_unet().eval()
    path = checkpoints.save(prior, tmp_path / "p.safetensors", metadata={"steps": 12, "data": "phantoms"})
    loaded = checkpoints.load(path, channels=2)
    assert isinstance(loaded, UNet) and loaded.config == prior.config
    assert loaded.sigma_max == 20.0 and loaded.data_range == (-2.0, 2.0)
    for k, v in prior.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([0.1, 3.0])), prior(x, torch.tensor([0.1, 3.0])))
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["config"])
    assert header["class"] == "UNet" and header["metadata"] == {"steps": 12, "data": "phantoms"}


def test_own_classes_and_channel_check(tmp_path):
    prior = _randomise(Tiny(channels=1, width=3))
    path = checkpoints.save(prior, tmp_path / "t.safetensors")
    loaded = checkpoints.load(path, classes={"Tiny": Tiny})
    assert torch.equal(loaded.conv.weight, prior.conv.weight)
    with pytest.raises(ValueError, match=r"unknown prior class 'Tiny'; known: (.*, )?UNet\b"):
        checkpoints.load(path)
    with pytest.raises(ValueError, match=r"t\.safetensors: the prior has 1 channel\(s\), expected 2"):
        checkpoints.load(path, classes={"Tiny": Tiny}, channels=2)


def test_missing_unknown_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        checkpoints.load(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match=r"unknown prior name 'no-such-prior'; known names: "):
        checkpoints.load("no-such-prior")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="bad.safetensors: not a readable safetensors file"):
        checkpoints.load(bad)
    good = checkpoints.save(_randomise(Tiny()), tmp_path / "good.safetensors")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ValueError, match="trunc.safetensors: not a readable safetensors file"):
        checkpoints.load(truncated, classes={"Tiny": Tiny})
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="plain.safetensors: no diffinverse config"):
        checkpoints.load(plain)


def _rewrite(src, dst, *, tensors=None, header=None):
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["config"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    state = tensors(state) if tensors else state
    meta = header(meta) if header else meta
    save_file(state, str(dst), metadata={"config": json.dumps(meta)})
    return dst


def test_mismatched_keys_and_shapes_are_named(tmp_path):
    src = checkpoints.save(_tiny_unet(), tmp_path / "u.safetensors")
    first = next(iter(_tiny_unet().state_dict()))
    missing = _rewrite(src, tmp_path / "m.safetensors", tensors=lambda s: {k: v for k, v in s.items() if k != first})
    with pytest.raises(ValueError, match=rf"m\.safetensors: checkpoint does not match UNet; missing keys: {first}"):
        checkpoints.load(missing)
    extra = _rewrite(src, tmp_path / "e.safetensors", tensors=lambda s: {**s, "stray.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected keys: stray.weight"):
        checkpoints.load(extra)
    wider = _rewrite(src, tmp_path / "w.safetensors",
                     header=lambda h: {**h, "kwargs": {**h["kwargs"], "base_channels": 8, "emb_channels": 32}})
    with pytest.raises(ValueError, match=r"w\.safetensors: .*shape mismatches: .*file \(4, 2, 3, 3\) vs model \(8, 2, 3, 3\)"):
        checkpoints.load(wider)
    wrong_kw = _rewrite(src, tmp_path / "k.safetensors", header=lambda h: {**h, "kwargs": {**h["kwargs"], "depth": 3}})
    with pytest.raises(ValueError, match=r"k\.safetensors: cannot build UNet from the stored kwargs"):
        checkpoints.load(wrong_kw)
    version = _rewrite(src, tmp_path / "v.safetensors", header=lambda h: {**h, "version": 99})
    with pytest.raises(ValueError, match="format version 99"):
        checkpoints.load(version)


def test_save_needs_a_config(tmp_path):
    class NoConfig(Prior):
        def denoise(self, x, sigma):
            return x

    with pytest.raises(TypeError, match="needs a prior with a dict .config"):
        checkpoints.save(NoConfig(), tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="JSON-able"):
        checkpoints.save(Tiny(), tmp_path / "x.safetensors", metadata={"bad": object()})


def _tiny_diffusers(out_channels=1):
    from diffusers import UNet2DModel

    return _randomise(UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, layers_per_block=1,
                                  block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4), seed=3).eval()


def test_diffusers_unet_with_v_scheduler_matches_hand_maths(tmp_path):
    from diffusers import DDIMScheduler

    unet = _tiny_diffusers()
    unet.save_pretrained(tmp_path / "model")
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    sched.save_pretrained(tmp_path / "model" / "scheduler")
    prior = checkpoints.load(tmp_path / "model", channels=1)
    assert isinstance(prior, VPDenoiser) and prior.prediction == "v" and prior.data_range == (-1.0, 1.0)
    abar = sched.alphas_cumprod.double()
    t = torch.tensor([5, 60])
    sigma = ((1 - abar[t]) / abar[t]).sqrt().float()  # on the grid: the timesteps are exactly t
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    a = (1 + sigma**2).rsqrt().view(-1, 1, 1, 1)
    with torch.no_grad():
        v = unet(a * x, t.float()).sample
        expected = a * (a * x) - sigma.view(-1, 1, 1, 1) * a * v
        torch.testing.assert_close(prior(x, sigma), expected, rtol=1e-4, atol=1e-5)


def test_diffusers_without_scheduler_is_ddpm_eps(tmp_path):
    unet = _tiny_diffusers(out_channels=2)  # learned variance: second half ignored
    unet.save_pretrained(tmp_path / "bare")
    prior = checkpoints.load(tmp_path / "bare")
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    sigma = ((1 - abar[400]) / abar[400]).sqrt().float().reshape(1)
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    a = (1 + sigma**2).rsqrt()
    with torch.no_grad():
        eps = unet(a * x, torch.tensor([400.0])).sample[:, :1]
        torch.testing.assert_close(prior(x, sigma), x - sigma * eps, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"the prior has 1 channel\(s\), expected 2"):
        checkpoints.load(tmp_path / "bare", channels=2)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        checkpoints.load(tmp_path)


def _tiny_ncsnpp():
    from deepinv.models import NCSNpp

    cfg = dict(model_type="ddpm", img_resolution=8, in_channels=1, out_channels=1, model_channels=32,
               channel_mult=(1, 1), num_blocks=1, attn_resolutions=(), augment_dim=0)
    return cfg, _randomise(NCSNpp(**cfg, pretrained=None), seed=6).eval()


def test_deepinv_ncsnpp_from_weights_only_checkpoint(tmp_path):
    cfg, net = _tiny_ncsnpp()
    path = tmp_path / "ncsn.pt"
    torch.save(net.state_dict(), path)
    prior = checkpoints.load(path, architecture="NCSNpp", config=cfg)
    assert isinstance(prior, RangeAdapter) and prior.channels == 1 and prior.data_range == (0.0, 1.0)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    sigma = torch.tensor([0.05, 0.4])
    with torch.no_grad():
        torch.testing.assert_close(prior(x, sigma), net(x, sigma))
    # the same weights as safetensors; and a config that does not fit the weights
    st = tmp_path / "ncsn.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(st))
    with torch.no_grad():
        torch.testing.assert_close(checkpoints.load(st, architecture="NCSNpp", config=cfg)(x, sigma), net(x, sigma))
    with pytest.raises(ValueError, match=r"ncsn\.pt: checkpoint does not match NCSNpp; .*shape mismatches"):
        checkpoints.load(path, architecture="NCSNpp", config={**cfg, "model_channels": 64})


def test_deepinv_refuses_pickles_and_unknown_architectures(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": Tiny}, path)
    with pytest.raises(ValueError, match="evil.pt: refused to load, not a weights-only checkpoint"):
        checkpoints.load(path, architecture="NCSNpp")
    with pytest.raises(ValueError, match="unknown deepinv architecture 'ResNet'; known: DiffUNet, NCSNpp"):
        checkpoints.load(path, architecture="ResNet")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.pt: "):
        checkpoints.load(junk, architecture="NCSNpp")


def test_deepinv_diffunet_wrapping_and_mismatch(tmp_path):
    """DiffUNet has a fixed ~94M-parameter architecture (no small variant), so instead of a full
    file round trip this checks the construction path's error and the eps wrapper's maths."""
    from deepinv.models import DiffUNet

    wrong = tmp_path / "diffunet.safetensors"
    save_file({"input_blocks.0.0.weight": torch.zeros(128, 2, 3, 3)}, str(wrong))
    with pytest.raises(ValueError, match=r"diffunet\.safetensors: checkpoint does not match DiffUNet; missing keys: .*"
                                         r"shape mismatches: input_blocks\.0\.0\.weight: file \(128, 2, 3, 3\)"):
        checkpoints.load(wrong, architecture="DiffUNet", config={"in_channels": 1, "out_channels": 1})
    net = DiffUNet(in_channels=1, out_channels=1, pretrained=None).eval()
    _randomise(net.out, seed=8)  # the last convolution is zero-initialised
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    prior = VPDenoiser(checkpoints._DiffUNetNetwork(net), abar, prediction="eps", channels=1)
    sigma = ((1 - abar[250]) / abar[250]).sqrt().float().reshape(1)
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    a = (1 + sigma**2).rsqrt()
    with torch.no_grad():
        eps = net.forward_diffusion(torch.nn.functional.pad(a * x, (16, 0, 16, 0), mode="circular"),
                                    torch.tensor([250.0]))[..., 16:, 16:]
        torch.testing.assert_close(prior(x, sigma), x - sigma * eps, rtol=1e-4, atol=1e-5)


def test_missing_cuda_device_is_named(tmp_path):
    path = checkpoints.save(_randomise(Tiny()), tmp_path / "t.safetensors")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    absent = f"cuda:{count}"  # one past the last visible device, on any machine
    expected = "has no CUDA device" if count == 0 else rf"has {count} CUDA device\(s\)"
    with pytest.raises(ValueError, match=rf"device '{absent}' requested but this machine {expected}"):
        checkpoints.load(path, classes={"Tiny": Tiny}, device=absent)
    if count == 0:
        with pytest.raises(ValueError, match=r"'cuda' requested but this machine has no CUDA device"):
            checkpoints.load(path, classes={"Tiny": Tiny}, device="cuda")
        with pytest.raises(ValueError, match="no CUDA device"):
            checkpoints.load("no-such-prior", device="cuda")  # checked before the name
    assert checkpoints.load(path, classes={"Tiny": Tiny}, device="cpu").conv.weight.device.type == "cpu"
