"""``diffinverse-reconstruct --sampler ads``: ADS chooses each slice's lines of a fully sampled file
and the outputs say which (``mask`` one row per slice, ``order``, ``<name>.order.png``).

Tiny generated files (16 phase-encode lines) and a tiny untrained UNet prior, 2 particles, a few
steps: these check the wiring (lines, outputs, determinism, refusals, ``--resume``), not quality.
"""
import json

import h5py
import numpy as np
import pytest
import torch
from test_reconstruct import make_file, read_h5

from diffinverse.pipelines.active import ActiveKspaceReconstruction, save_acquisition_order
from diffinverse.reconstruct import main

W = 16                       # phase-encode lines of the files
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    from diffinverse.priors.checkpoints import save
    from diffinverse.priors.unet import UNet

    path = tmp_path_factory.mktemp("priors") / "p2.safetensors"
    return str(save(UNet(channels=2, base_channels=4, channel_mult=(1,), num_res_blocks=1), path))


def _ads(inputs, out, prior, *extra):
    return [*map(str, inputs), "--sampler", "ads", "--prior", prior, "--steps", "8", "--ads-particles", "2",
            "--output", str(out), *extra]


def _centre(n_low):
    start = (W - n_low + 1) // 2            # as fastMRI's mask functions place the centre
    return set(range(start, start + n_low))


@pytest.mark.parametrize("coils, acceleration, center_fraction", [(0, 4, 0.08), (3, 2, 0.25)])
def test_ads_writes_each_slices_mask_order_and_png(tmp_path, prior, coils, acceleration, center_fraction):
    make_file(tmp_path / "f.h5", coils=coils, slices=2, shape=(20, W), recon=(16, 16))
    out = tmp_path / "out"
    assert main(_ads([tmp_path / "f.h5"], out, prior, "--acceleration", str(acceleration),
                     "--center-fraction", str(center_fraction))) == 0
    h5 = read_h5(out / "f.h5")
    lines, centre = round(W / acceleration), _centre(max(1, round(W * center_fraction)))
    assert set(h5) == {"reconstruction", "std", "mask", "order"}
    assert h5["reconstruction"].shape == h5["std"].shape == (2, 16, 16) and (h5["std"] >= 0).all()
    assert h5["mask"].shape == (2, W) and h5["order"].shape == (2, lines - len(centre))
    for mask, order in zip(h5["mask"], h5["order"]):
        chosen = set(np.flatnonzero(mask))
        assert len(chosen) == lines and centre <= chosen
        assert len(set(order.tolist())) == len(order) and set(order.tolist()) == chosen - centre
    with h5py.File(out / "f.h5", "r") as f:
        assert f.attrs["mask_layout"] == "slices" and f.attrs["acceleration"] == pytest.approx(W / lines)
    assert (out / "f.order.png").read_bytes()[:8] == PNG
    record = json.loads((out / "f.metrics.json").read_text())
    assert record["acceleration"] == {"requested": acceleration, "achieved": W / lines, "per_slice": [W / lines] * 2}
    assert set(record["metrics"]["reconstruction_rss"]) == {"ads", "zero-filled", *(("sense",) if coils else ())}
    assert record["options"]["ads"]["num_particles"] == 2 and record["options"]["mask"]["type"] == "ads"
    assert record["options"]["ads"]["predict"] == "consistent"
    assert record["method"].startswith("ads (2 dds particles, 8 steps") and record["nfe"] > 0
    # the per-slice mask is not one mask for all slices: --mask-file refuses it
    assert main([str(tmp_path / "f.h5"), "--sampler", "zero-filled", "--mask-file", str(out / "f.h5"),
                 "--output", str(tmp_path / "again")]) == 2


def test_one_slices_chosen_lines_are_reused_by_mask_file(tmp_path, prior):
    make_file(tmp_path / "f.h5", slices=1, shape=(16, W), recon=(16, 16))
    assert main(_ads([tmp_path / "f.h5"], tmp_path / "ads", prior)) == 0
    chosen = read_h5(tmp_path / "ads" / "f.h5")["mask"]                            # (1, W)
    assert main([str(tmp_path / "f.h5"), "--sampler", "zero-filled", "--mask-file", str(tmp_path / "ads" / "f.h5"),
                 "--output", str(tmp_path / "zf")]) == 0
    assert np.array_equal(read_h5(tmp_path / "zf" / "f.h5")["mask"], chosen[0])


def test_ads_is_deterministic_and_the_particle_sampler_is_chosen(tmp_path, prior):
    make_file(tmp_path / "d.h5", slices=2, shape=(16, W), recon=(16, 16))
    runs = []
    for name in ("a", "b"):
        assert main(_ads([tmp_path / "d.h5"], tmp_path / name, prior, "--seed", "3")) == 0
        runs.append(read_h5(tmp_path / name / "d.h5"))
    for key in ("mask", "order", "reconstruction", "std"):
        np.testing.assert_array_equal(runs[0][key], runs[1][key])
    # another particle sampler, its own option, a cold start, bf16, the paper's predictions: all reach
    # the run and its record
    out = tmp_path / "reddiff"
    assert main(_ads([tmp_path / "d.h5"], out, prior, "--ads-sampler", "reddiff", "--reddiff-lr", "0.01",
                     "--sigma-start", "none", "--bf16", "--ads-predict", "tweedie", "--format", "png")) == 0
    options = json.loads((out / "d.metrics.json").read_text())["options"]
    assert options["ads"]["sampler"] == "reddiff" and options["sampler_options"]["lr"] == 0.01
    assert options["ads"]["predict"] == "tweedie"
    assert options["bf16"] is True and options["warm_start"] is None and options["sigma_start"] is None
    assert sorted(p.name for p in out.iterdir()) == ["d.metrics.json", "d.order.png", "d.png", "metrics.json"]


@pytest.mark.parametrize("extra, message", [
    (["--mask", "random"], "--sampler ads chooses each slice's lines; --mask cannot be used with it"),
    (["--mask-file", "m.h5"], "--mask-file cannot be used with it"),
    (["--num-samples", "2"], "--num-samples cannot be used with --sampler ads"),
    (["--warm-start", "tv"], "--warm-start tv cannot be used with --sampler ads"),
    (["--adapt"], "--adapt cannot be used with --sampler ads"),
    (["--second-map-set", "sense"], "--second-map-set does not apply to --sampler ads"),
    (["--ads-particles", "1"], "--ads-particles must be >= 2"),
    (["--acceleration", "1"], "--sampler ads needs --acceleration > 1"),
    (["--acceleration", "12"], "x.h5: --acceleration 12 with --center-fraction 0.08: acceleration 12 measures 1 "
                               "of 16 lines, no more than the 1 centre lines: nothing left to choose"),
    (["--ads-sampler", "dps", "--dds-gamma", "3"],
     "--dds-gamma applies to --sampler dds (or --sampler ads --ads-sampler dds), not --sampler ads --ads-sampler dps"),
    (["--sampler", "dps", "--ads-particles", "4"], "--ads-particles appl(ies) to --sampler ads, not dps"),
    (["--sampler", "sense", "--ads-sampler", "dps"], "--ads-sampler appl(ies) to --sampler ads, not sense"),
    (["--sampler", "dps", "--ads-predict", "tweedie"], "--ads-predict appl(ies) to --sampler ads, not dps"),
])
def test_ads_configuration_errors_exit_2_before_writing(tmp_path, capsys, prior, extra, message):
    make_file(tmp_path / "x.h5", slices=1, shape=(16, W), recon=(16, 16))
    out = tmp_path / "out"
    argv = _ads([tmp_path / "x.h5"], out, prior)
    if "--ads-particles" in extra or "--sampler" in extra:  # the case's own --ads-particles / sampler
        argv = [a for a in argv if a not in ("--ads-particles", "2")]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not list(out.iterdir())


def test_a_file_with_its_own_mask_fails_and_the_others_go_on(tmp_path, capsys, prior):
    data = tmp_path / "data"
    data.mkdir()
    mask = np.zeros(W, bool)
    mask[[1, 5, 7, 8, 9, 12]] = True
    make_file(data / "under.h5", slices=1, shape=(16, W), recon=(16, 16), mask=mask)
    make_file(data / "full.h5", slices=1, shape=(16, W), recon=(16, 16), seed=1)
    out = tmp_path / "out"
    assert main(_ads([data], out, prior)) == 1
    printed = capsys.readouterr().out
    assert "under.h5: the file has its own mask (undersampled k-space); --sampler ads" in printed
    assert "needs a fully sampled file" in printed
    assert (out / "full.h5").exists() and not list(out.glob("under*"))
    assert list(json.loads((out / "metrics.json").read_text())["failed"]) == ["under"]


def test_resume_skips_complete_ads_outputs_and_refuses_other_settings(tmp_path, capsys, prior):
    make_file(tmp_path / "r.h5", slices=1, shape=(16, W), recon=(16, 16))
    out = tmp_path / "out"
    argv = _ads([tmp_path / "r.h5"], out, prior)
    assert main(argv) == 0
    before = (out / "r.h5").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv, "--resume", "--batch-size", "2"]) == 0      # the batch size changes nothing for ads
    assert "0 reconstructed, 1 skipped" in capsys.readouterr().out
    assert (out / "r.h5").stat().st_mtime_ns == before
    # the acquisition-order PNG is part of a complete output: without it the file is redone
    (out / "r.order.png").unlink()
    assert main([*argv, "--resume"]) == 0
    assert "1 reconstructed, 0 skipped" in capsys.readouterr().out and (out / "r.order.png").exists()
    assert main([*argv[:-4], "--ads-particles", "3", "--output", str(out), "--resume"]) == 2
    assert "ads.num_particles 2 (outputs) vs 3 (this run)" in capsys.readouterr().err


def test_save_acquisition_order_draws_one_row_per_result(tmp_path):
    def result(order, width=W):
        mask = torch.zeros(width)
        mask[[7, 8, *order]] = 1
        empty = torch.empty(0)
        return ActiveKspaceReconstruction(image=empty, std=empty, complex_image=empty, baselines={}, mask=mask,
                                          order=tuple(order), initial_lines=(7, 8), entropies=empty, sampler="dds",
                                          nfe=0, window=(0.0, 0.8))

    rows = [result([1, 12, 4]), result([15, 0, 3]), result([2, 9, 10])]
    save_acquisition_order(tmp_path / "rows.png", rows, first_slice=5)
    save_acquisition_order(tmp_path / "one.png", rows[:1])            # a sequence of one: the bars
    assert all((tmp_path / n).read_bytes()[:8] == PNG for n in ("rows.png", "one.png"))
    with pytest.raises(ValueError, match="at least one result"):
        save_acquisition_order(tmp_path / "none.png", [])
    with pytest.raises(ValueError, match="different widths"):
        save_acquisition_order(tmp_path / "mixed.png", [rows[0], result([1], width=20)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "rows.png"]
