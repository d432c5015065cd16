"""``diffinverse-reconstruct`` refuses what it cannot do right, and says so (issue 27).

``--resume`` compares the recorded options; the mask is saved and reusable; the achieved
acceleration is reported and an unreachable one refused; non-finite numbers and options that do
not apply are refused; the output folder is checked before any work; Ctrl-C and failures leave a
file's outputs all there or none. Tiny generated files, baselines only (no network).
"""
import json
import math
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_reconstruct import crop, ifft2c, make_file, read_h5

import diffinverse
import diffinverse.reconstruct as R
from diffinverse.reconstruct import build_parser, main

W = 10  # phase-encode lines of the small files


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for i in range(3):
        make_file(d / f"f{i}.h5", slices=1, shape=(12, W), recon=(8, 8), seed=i)
    return d


def _args(inputs, out, *extra):
    return [str(inputs), "--sampler", "zero-filled", "--center-fraction", "0.3", "--acceleration", "3",
            "--output", str(out), *extra]


def _calls(monkeypatch):
    """Count the pipeline's reconstructions (to check that a refusal comes before any work)."""
    calls = []
    original = R.reconstruct_kspace

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(R, "reconstruct_kspace", counting)
    return calls


# --- item 3: --resume compares options ----------------------------------------------------------
def test_outputs_record_their_options_and_resume_refuses_others(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(data, out)) == 0
    with h5py.File(out / "f0.h5", "r") as f:
        recorded = json.loads(f.attrs["options"])
        assert f.attrs["diffinverse_version"] == diffinverse.__version__
    assert recorded["sampler"] == "zero-filled" and recorded["version"] == diffinverse.__version__
    assert recorded["mask"] == {"type": "random", "acceleration": 3.0, "center_fraction": 0.3}
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["options"] == recorded == summary["files"]["f0"]["options"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    # another method into the same folder: refused before any work, naming what differs
    assert main([*_args(data, out, "--resume")[:2], "tv", *_args(data, out, "--resume")[3:]]) == 2
    err = capsys.readouterr().err
    assert "sampler 'zero-filled' (outputs) vs 'tv' (this run)" in err and "--overwrite" in err
    assert "second_map_set" not in recorded    # zero-filling has no second image to choose for
    assert all(f"f{i}.h5" in err for i in range(3))
    assert main(_args(data, out, "--resume", "--seed", "7")) == 2
    assert "seed 0 (outputs) vs 7 (this run)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # the same options: skipped; outputs of an older version (no options recorded): refused
    assert main(_args(data, out, "--resume")) == 0
    assert "0 reconstructed, 3 skipped" in capsys.readouterr().out
    record = json.loads((out / "f1.metrics.json").read_text())
    del record["options"]
    (out / "f1.metrics.json").write_text(json.dumps(record))
    assert main(_args(data, out, "--resume")) == 2
    assert "f1.h5: --resume found complete outputs made with other options: no options recorded" in \
        capsys.readouterr().err
    # --resume --overwrite recomputes f1 (no options recorded) and skips the others
    assert main(_args(data, out, "--resume", "--overwrite")) == 0
    assert "1 reconstructed, 2 skipped" in capsys.readouterr().out
    assert json.loads((out / "f1.metrics.json").read_text())["options"] == recorded
    # --overwrite recomputes them all
    assert main(_args(data, out, "--overwrite", "--seed", "7")) == 0
    assert json.loads((out / "f1.metrics.json").read_text())["options"]["seed"] == 7


# --- item 4: the mask is saved and reusable -----------------------------------------------------
def test_mask_is_saved_and_reused_under_another_name(tmp_path):
    w = 32  # wide enough for random outer lines (4 central ones at 4x)
    make_file(tmp_path / "f0.h5", slices=1, shape=(12, w), recon=(8, 8))
    retro = ["--sampler", "zero-filled", "--center-fraction", "0.125", "--acceleration", "4"]
    out = tmp_path / "out"
    assert main([str(tmp_path / "f0.h5"), *retro, "--output", str(out)]) == 0
    saved = read_h5(out / "f0.h5")
    mask = saved["mask"]
    assert mask.shape == (w,) and mask.dtype == bool and mask.sum() > 4  # (W,) lines, as fastMRI stores it
    # it is the mask the reconstruction used: zero-filled of the masked k-space, cropped
    with h5py.File(tmp_path / "f0.h5", "r") as f:
        k = f["kspace"][()].astype(np.complex128)
    expected = crop(np.abs(ifft2c(k * mask)), (8, 8))  # column masking commutes with the readout crop
    np.testing.assert_allclose(saved["reconstruction"], expected, rtol=1e-4, atol=1e-6 * expected.max())

    # the same data under another name get another mask (seeded per file name) ...
    (tmp_path / "renamed").mkdir()
    shutil.copy(tmp_path / "f0.h5", tmp_path / "renamed" / "other_name.h5")
    assert main([str(tmp_path / "renamed"), *retro, "--output", str(tmp_path / "plain")]) == 0
    assert not np.array_equal(read_h5(tmp_path / "plain" / "other_name.h5")["mask"], mask)
    # ... unless --mask-file reuses the saved one: then the reconstruction is the same
    assert main([str(tmp_path / "renamed"), "--sampler", "zero-filled", "--mask-file", str(out / "f0.h5"),
                 "--output", str(tmp_path / "reused")]) == 0
    reused = read_h5(tmp_path / "reused" / "other_name.h5")
    np.testing.assert_array_equal(reused["mask"], mask)
    np.testing.assert_array_equal(reused["reconstruction"], saved["reconstruction"])
    options = json.loads((tmp_path / "reused" / "metrics.json").read_text())["options"]
    assert options["mask"]["file"] == str(out / "f0.h5") and len(options["mask"]["sha256"]) == 64


def _mask_file(path, **datasets):
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            if value is None:
                f.create_group(key)
            else:
                f.create_dataset(key, data=value)
    return path


@pytest.mark.parametrize("content, extra, message", [
    ({"reconstruction": np.ones((1, 2, 2))}, [], "no 'mask' dataset (found: ['reconstruction'])"),
    ({"mask": None}, [], "'mask' is an HDF5 group, not a dataset"),
    ({"mask": np.array([0, 1, 2, 0, 1, 1, 0, 0, 1, 0])}, [], "'mask' must hold only 0 and 1"),
    ({"mask": np.zeros(W)}, [], "'mask' samples nothing"),
    ({"mask": np.ones(W - 1, bool)}, [], "holds a mask of shape (9,); this file needs (10,)"),
    ({"mask": np.ones(W, bool)}, ["--acceleration", "2"], "--mask-file gives the mask; --acceleration cannot"),
    (None, [], "--mask-file: "),
])
def test_mask_file_errors_exit_2_before_any_work(data, tmp_path, capsys, monkeypatch, content, extra, message):
    path = tmp_path / "m.h5"
    if content is not None:
        _mask_file(path, **content)
    calls = _calls(monkeypatch)
    out = tmp_path / "out"
    assert main([str(data / "f0.h5"), "--sampler", "zero-filled", "--mask-file", str(path), *extra,
                 "--output", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not calls and (not out.exists() or not list(out.iterdir()))


# --- item 5: labels that lie --------------------------------------------------------------------
def test_achieved_acceleration_is_reported_and_unreachable_ones_refused(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(_args(data / "f0.h5", out)) == 0
    achieved = W / read_h5(out / "f0.h5")["mask"].sum()
    record = json.loads((out / "f0.metrics.json").read_text())
    assert record["acceleration"] == {"requested": 3.0, "achieved": pytest.approx(achieved)}
    assert json.loads((out / "metrics.json").read_text())["acceleration"]["f0"] == pytest.approx(achieved)
    with h5py.File(out / "f0.h5", "r") as f:
        assert f.attrs["acceleration"] == pytest.approx(achieved)
    assert f"3x requested, {achieved:.2f}x achieved" in capsys.readouterr().out

    # 3 central lines of 10 cannot give 1000x (nor 4x): refused, with the largest achievable
    calls = _calls(monkeypatch)
    for requested in ("1000", "4"):
        argv = _args(data / "f0.h5", tmp_path / f"r{requested}")
        argv[argv.index("--acceleration") + 1] = requested
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"cannot reach acceleration {requested}" in err and "largest achievable is 3.33x" in err
    assert not calls


def _float_flags():
    return [a.option_strings[0] for a in build_parser()._actions if a.type is float]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_option_refuses_non_finite_numbers(data, tmp_path, capsys, value):
    flags = _float_flags()
    assert {"--acceleration", "--center-fraction", "--dps-zeta", "--reddiff-lam"} <= set(flags)
    for flag in flags:
        sampler = flag.split("-")[2] if flag.split("-")[2] in R.SAMPLER_DEFAULTS else "zero-filled"
        new = {"--zeta": "--dps-zeta", "--lr": "--reddiff-lr", "--lam": "--reddiff-lam"}.get(flag, flag)
        sampler = {"--zeta": "dps", "--lr": "reddiff", "--lam": "reddiff"}.get(flag, sampler)
        with pytest.warns(FutureWarning) if new != flag else _nothing():
            rc = main([str(data / "f0.h5"), "--sampler", sampler, f"{flag}={value}", "--output", str(tmp_path / "o")])
        assert rc == 2, flag
        assert f"{new} must be a finite number, got {float(value)}" in capsys.readouterr().err, flag


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("sampler", ["tv", "sense", "zero-filled"])
def test_prior_with_a_baseline_is_refused(data, tmp_path, capsys, sampler):
    assert main([str(data / "f0.h5"), "--sampler", sampler, "--prior", "mri-brain",
                 "--output", str(tmp_path / "o")]) == 2
    assert f"--prior applies to the diffusion samplers (dps, reddiff, dds, stsl), not {sampler}" in capsys.readouterr().err


def test_all_zero_kspace_fails_the_file_and_zero_slices_warn(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    make_file(d / "zero.h5", slices=2, shape=(12, W), recon=(8, 8))
    make_file(d / "part.h5", slices=3, shape=(12, W), recon=(8, 8))
    with h5py.File(d / "zero.h5", "r+") as f:
        f["kspace"][...] = 0
    with h5py.File(d / "part.h5", "r+") as f:
        f["kspace"][1] = 0
    with pytest.warns(UserWarning, match=r"part\.h5: the k-space of slice\(s\) 1 is all zero"):
        assert main(_args(d, tmp_path / "out")) == 1
    printed = capsys.readouterr().out
    assert f"failed: zero: FastMRIError: {d / 'zero.h5'}: the k-space of slices 0:2 is all zero" in printed
    assert "warning: " in printed and "part.h5: the k-space of slice(s) 1 is all zero" in printed
    assert not list((tmp_path / "out").glob("zero*"))


# --- errors that should be clear ---------------------------------------------------------------
def test_output_that_is_a_file_or_under_a_file(data, tmp_path, capsys, monkeypatch):
    calls = _calls(monkeypatch)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(_args(data, afile)) == 2
    assert f"--output {afile} is a file, not a directory" in capsys.readouterr().err
    assert main(_args(data, afile / "sub" / "out")) == 2
    assert f"{afile} is a file, so the directory cannot be created" in capsys.readouterr().err
    assert not calls and afile.read_text() == "x"


def _unwritable_dirs(tmp_path):
    dirs = []
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        dirs.append(locked)
    if sys.platform.startswith("linux"):
        dirs.append(Path("/proc/self"))  # a directory nobody, root included, can create files in
    return dirs


def test_unwritable_output_folder_is_found_before_any_work(data, tmp_path, capsys, monkeypatch):
    dirs = _unwritable_dirs(tmp_path)
    if not dirs:
        pytest.skip("no unwritable directory on this platform")
    calls = _calls(monkeypatch)
    for d in dirs:
        assert main(_args(data, d)) == 2
        assert f"--output {d}: cannot write there" in capsys.readouterr().err
    assert not calls


def test_ctrl_c_is_caught_once_and_reported(data, tmp_path, capsys, monkeypatch):
    original = R.reconstruct_kspace
    seen = []

    def interrupted_on_the_second_file(*args, **kwargs):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(R, "reconstruct_kspace", interrupted_on_the_second_file)
    out = tmp_path / "out"
    assert main(_args(data, out, "--format", "h5", "png")) == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C) during f1.h5, whose outputs were not written" in err
    assert "Finished: f0" in err and "Not started: f2.h5" in err and "--resume" in err
    assert sorted(p.name for p in out.iterdir()) == ["f0.h5", "f0.metrics.json", "f0.png", "metrics.json"]
    assert json.loads((out / "metrics.json").read_text())["interrupted"] == ["f1", "f2"]
    monkeypatch.setattr(R, "reconstruct_kspace", original)
    assert main(_args(data, out, "--format", "h5", "png", "--resume")) == 0
    assert "2 reconstructed, 1 skipped" in capsys.readouterr().out


def test_an_interrupt_while_writing_leaves_none_of_the_files_outputs(data, tmp_path, capsys, monkeypatch):
    # the old order wrote the PNG, then the h5: an interrupt in between left a lone PNG
    def interrupted_writer(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "write_submission", interrupted_writer)
    out = tmp_path / "out"
    assert main(_args(data / "f0.h5", out, "--format", "png", "h5")) == 130
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    monkeypatch.undo()

    # an interrupt between the final renames: the ones already moved are taken back
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if Path(dst).parent == out and Path(dst).name == "f0.h5":
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert main(_args(data / "f0.h5", out, "--format", "png", "h5", "--overwrite")) == 130
    assert "f0.png" in calls  # the PNG was in place before the interrupt ...
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]  # ... and was removed again


def test_outputs_get_the_permissions_of_a_plain_write(data, tmp_path):
    old = os.umask(0o027)
    try:
        assert main(_args(data / "f0.h5", tmp_path / "out", "--format", "h5", "png")) == 0
    finally:
        os.umask(old)
    for p in (tmp_path / "out").iterdir():
        assert oct(p.stat().st_mode & 0o777) == oct(0o640), p.name


def test_kspace_group_and_nan_reference_are_named(tmp_path, capsys, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    with h5py.File(d / "group.h5", "w") as f:
        f.create_group("kspace")
    make_file(d / "nanref.h5", slices=2, shape=(12, W), recon=(8, 8))
    with h5py.File(d / "nanref.h5", "r+") as f:
        f["reconstruction_rss"][1, 2, 3] = math.nan
    calls = _calls(monkeypatch)
    assert main(_args(d, tmp_path / "out")) == 1
    failed = json.loads((tmp_path / "out" / "metrics.json").read_text())["failed"]
    assert "'kspace' is an HDF5 group, not a dataset" in failed["group"]
    assert "'reconstruction_rss' holds NaN or Inf values (slice 1)" in failed["nanref"]
    assert not calls  # found on opening, before the reconstruction
