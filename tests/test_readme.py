"""The README's Python blocks run as written, and what they show holds.

1. The library pipeline on the bundled demo file (``reconstruct_kspace``): RED-Diff beats SENSE.
2. Operator, prior and sampler by hand on a held-out slice: DPS beats SENSE by at least 2 dB.
3. Sparse-view CT with every sampler at its defaults: RED-Diff and DDS beat FBP by at least 1 dB,
   the mean of DPS samples beats it too.
"""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 3, "expected three python blocks in the README: the pipeline, the sampler by hand, CT"
    return blocks


def _run(block: str) -> dict:
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    return scope


def test_readme_command_blocks_ci_depends_on():
    text = README.read_text()
    assert 'pip install -q -e ".[test]" && python -m pytest -n 2 -q' in text  # .ci/run greps for it
    assert "pip install -e . && diffinverse-reconstruct --demo" in text


def test_readme_pipeline_block_runs_and_reddiff_beats_sense(capsys):
    scope = _run(_blocks()[0])
    from diffinverse.metrics import psnr

    rec, target = scope["rec"], scope["target"]
    assert rec.image.shape == target.shape and rec.method == "reddiff" and rec.nfe > 0
    assert psnr(reference=target, estimate=rec.image.numpy()) > psnr(reference=target, estimate=rec.baselines["sense"].numpy())
    assert "RED-Diff" in capsys.readouterr().out


def test_readme_sampler_block_runs_and_dps_beats_sense(capsys):
    scope = _run(_blocks()[1])
    from diffinverse.imaging import magnitude
    from diffinverse.metrics import psnr

    x, x_sense, x_dps = scope["x"], scope["x_sense"], scope["x_dps"]
    assert (psnr(reference=magnitude(x), estimate=magnitude(x_dps))
            > psnr(reference=magnitude(x), estimate=magnitude(x_sense)) + 2.0)
    assert "SENSE" in capsys.readouterr().out


def test_readme_ct_block_runs_and_the_defaults_beat_fbp(capsys):
    scope = _run(_blocks()[2])
    from diffinverse.metrics import psnr

    x = scope["x"]
    score = {name: psnr(reference=x[0], estimate=image[0].clamp(0, 1)) for name, image in scope["results"].items()}
    assert score["REDDiff"] > score["FBP"] + 1.0 and score["DDS"] > score["FBP"] + 1.0, score
    assert score["DPS mean of 4"] > score["FBP"], score
    assert "FBP" in capsys.readouterr().out


def test_readme_command_line_flags_exist_and_exit_statuses_match():
    from diffinverse import reconstruct as R

    text = README.read_text()
    section = text[text.index("## Reconstructing fastMRI files"):text.index("## On your own tensors")]
    known = {s for a in R.build_parser()._actions for s in a.option_strings}
    flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", section)) - {"--nproc"}  # --nproc_per_node: torchrun's
    assert {"--mask-file", "--resume", "--overwrite", "--acceleration"} <= flags
    assert flags <= known, sorted(flags - known)
    bad_input = section[section.index("**Bad input.**"):]
    for status in (R.EXIT_CONFIG, R.EXIT_FAILED, R.EXIT_INTERRUPTED, R.EXIT_OK):
        assert f"status {status}" in bad_input or f"exit status is {status}" in bad_input, status
    assert "exit status: 0 done; 1 some file failed" in R.build_parser().format_help().replace("\n", " ").replace("  ", " ")
