import json
import os

import pytest
import torch

from diffinverse.priors import train as T
from diffinverse.priors.unet import UNet


class Blobs:
    """Tiny structured data: a bright square of random position and level on a dark background."""

    def sample(self, n, *, generator):
        x = torch.full((n, 1, 16, 16), -0.5)
        pos = torch.randint(0, 8, (n, 2), generator=generator)
        level = 0.5 + 0.5 * torch.rand(n, generator=generator)
        for i in range(n):
            r, c = pos[i].tolist()
            x[i, :, r:r + 8, c:c + 8] = level[i]
        return x


def _prior():
    torch.manual_seed(0)
    return UNet(channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)


def _fixed_loss(prior):
    g = torch.Generator().manual_seed(123)
    x0 = Blobs().sample(64, generator=g)
    sigma = T.sample_sigma(64, P_mean=-1.2, P_std=1.2, generator=g)
    with torch.no_grad():
        return T.edm_loss(prior, x0, sigma, torch.randn(x0.shape, generator=g), prior.sigma_data).item()


def _run(out, steps, **kw):
    return T.train(_prior(), Blobs(), steps=steps, out_dir=out, batch_size=8, lr=2e-3, warmup=1,
                   checkpoint_every=5, log_every=2, seed=3, device="cpu", progress=False, **kw)



def test_loss_decreases_and_final_file_loads(tmp_path):
    from diffinverse.priors.checkpoints import load

    prior = _prior()
    before = _fixed_loss(prior)
    assert abs(before - 1.0) < 0.2  # zero-initialised output layer: D = c_skip x, loss ~ 1
    ema = T.train(prior, Blobs(), steps=40, out_dir=tmp_path, batch_size=16, lr=3e-3, warmup=1,
                  ema_decay=0.9, checkpoint_every=100, log_every=10, seed=0, device="cpu", progress=False)
    assert _fixed_loss(prior) < 0.6 * before
    loaded = load(tmp_path / T.FINAL)
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x, 0.3), ema(x, 0.3))
    log = [json.loads(line) for line in (tmp_path / T.LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40]


def test_resume_is_bit_identical(tmp_path):
    full = _run(tmp_path / "full", 10)
    _run(tmp_path / "split", 4)  # checkpoints at step 4 (end of run)
    resumed = _run(tmp_path / "split", 10)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    ck_full = T.load_checkpoint(tmp_path / "full" / T.CHECKPOINT)
    ck_res = T.load_checkpoint(tmp_path / "split" / T.CHECKPOINT)
    assert ck_full["step"] == ck_res["step"] == 10
    for k, v in ck_full["model"].items():
        assert torch.equal(v, ck_res["model"][k])
    assert torch.equal(ck_full["rng"], ck_res["rng"])


def test_resume_rejects_other_config(tmp_path):
    _run(tmp_path, 2)
    other = UNet(channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=2)
    with pytest.raises(ValueError, match="checkpoint was written for"):
        T.train(other, Blobs(), steps=4, out_dir=tmp_path, batch_size=2, device="cpu", progress=False)


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    _run(tmp_path, 5)
    path = tmp_path / T.CHECKPOINT
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(T.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        _run(tmp_path, 10)
    assert path.read_bytes() == before
    assert T.load_checkpoint(path)["step"] == 5
    assert sorted(os.listdir(tmp_path)) == sorted([T.CHECKPOINT, T.FINAL, T.LOSS_LOG])


def test_corrupt_checkpoint_names_file(tmp_path):
    bad = tmp_path / T.CHECKPOINT
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="checkpoint.safetensors"):
        T.load_checkpoint(bad)


def test_ema_update_formula():
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    old = [p.detach().clone() for p in ema.parameters()]
    T.ema_update(ema, model, 0.9)
    for e, o, m in zip(ema.parameters(), old, model.parameters()):
        torch.testing.assert_close(e, 0.9 * o + 0.1 * m)
    T.ema_update(ema, model, 0.0)
    for e, m in zip(ema.parameters(), model.parameters()):
        assert torch.equal(e, m)
    with pytest.raises(ValueError, match="decay must be in"):
        T.ema_update(ema, model, 1.5)


def test_edm_loss_weighting():
    x0 = torch.zeros(2, 1, 4, 4)
    noise = torch.ones(2, 1, 4, 4)
    sigma = torch.tensor([0.5, 2.0])
    # identity denoiser: error = sigma * n, weighted loss = (s^2 + sd^2) / sd^2
    loss = T.edm_loss(lambda x, s: x, x0, sigma, noise, 0.5)
    expected = ((sigma**2 + 0.25) / 0.25).mean()
    torch.testing.assert_close(loss, expected)


def test_cli_folder_end_to_end(tmp_path):
    import numpy as np

    from diffinverse.priors.checkpoints import load

    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(data / f"{i}.npy", rng.random((20, 24)).astype(np.float32))
    before = torch.random.get_rng_state()
    T.main(["--data", f"folder:{data}", "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2",
            "--crop", "16", "--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
            "--device", "cpu", "--no-progress"])
    assert torch.equal(torch.random.get_rng_state(), before)
    prior = load(tmp_path / "run" / T.FINAL)
    assert prior.channels == 1 and prior.config["base_channels"] == 8


def _npy_folder(path, n=3, shape=(20, 24)):
    import numpy as np

    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(path / f"{i}.npy", rng.random(shape).astype(np.float32))
    return path


def test_cli_fine_tunes_from_init_with_natural_mix(tmp_path):
    from diffinverse.priors.checkpoints import load

    data = _npy_folder(tmp_path / "imgs")
    common = ["--data", f"folder:{data}", "--batch-size", "4", "--crop", "16", "--device", "cpu", "--no-progress"]
    T.main([*common, "--out", str(tmp_path / "a"), "--steps", "2", "--base-channels", "8", "--channel-mult", "1,2",
            "--num-res-blocks", "1"])
    first = tmp_path / "a" / T.FINAL
    T.main([*common, "--out", str(tmp_path / "b"), "--steps", "3", "--init", str(first), "--mix-natural", "0.5",
            "--p-mean", "-2.5", "--p-std", "0.5", "--lr", "1e-3", "--warmup", "1"])
    a, b = load(first), load(tmp_path / "b" / T.FINAL)
    assert b.config == a.config and b.sigma_data == a.sigma_data   # the network of --init, not the CLI's default
    diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert 0 < diff < 0.1  # trained further from --init's weights, not re-initialised


def test_cli_init_rejects_wrong_channels(tmp_path):
    data = _npy_folder(tmp_path / "imgs")
    net = UNet(channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)
    from diffinverse.priors import checkpoints

    checkpoints.save(net, tmp_path / "two.safetensors")
    with pytest.raises(ValueError, match="1-channel UNet"):
        T.main(["--data", f"folder:{data}", "--out", str(tmp_path / "run"), "--steps", "1", "--crop", "16",
                "--init", str(tmp_path / "two.safetensors"), "--device", "cpu", "--no-progress"])


def test_mixture_draws_each_source_in_proportion():
    class Const:
        def __init__(self, v):
            self.v = v

        def sample(self, n, *, generator):
            return torch.full((n, 1, 4, 4), float(self.v))

    mix = T.Mixture([Const(0), Const(1)], [0.75, 0.25])
    x = mix.sample(4000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4000, 1, 4, 4)
    frac = x[:, 0, 0, 0].mean().item()
    assert abs(frac - 0.25) < 0.03            # binomial std 0.007
    assert 0 < x[:20, 0, 0, 0].sum() < 20     # shuffled, not source-ordered
    with pytest.raises(ValueError, match="one non-negative weight per source"):
        T.Mixture([Const(0)], [0.5, 0.5])


def test_mixture_rejects_sources_of_different_shapes():
    class Shape:
        def __init__(self, s):
            self.s = s

        def sample(self, n, *, generator):
            return torch.zeros(n, 1, self.s, self.s)

    with pytest.raises(ValueError, match="different item shapes"):
        T.Mixture([Shape(4), Shape(8)], [1, 1]).sample(64, generator=torch.Generator().manual_seed(0))


def test_cli_brain_magnitude_and_noise_reach_the_data_and_the_metadata(tmp_path):
    import json

    from safetensors import safe_open

    T.main(["--data", "mri-brain", "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "2", "--crop", "16",
            "--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1", "--device", "cpu",
            "--no-progress", "--brain-magnitude", "0.4", "--brain-noise", "0.01,0.1"])
    with safe_open(str(tmp_path / "run" / T.FINAL), framework="pt") as f:
        meta = json.loads(f.metadata()["config"])["metadata"]
    assert meta["brain_magnitude"] == "0.4" and meta["brain_noise"] == "[0.01, 0.1]"
    source, _ = T._build_data("mri-brain", crop=16, image_size=256, axis=2, device="cpu", brain_magnitude=1.0)
    assert source.magnitude_fraction == 1.0 and torch.equal(source.sample(3)[:, 1], torch.zeros(3, 16, 16))
    for bad in ("0.01", "low,high"):
        with pytest.raises(ValueError, match="--brain-noise"):
            T.main(["--data", "mri-brain", "--out", str(tmp_path / "bad"), "--brain-noise", bad])
