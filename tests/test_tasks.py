"""The task table of :mod:`diffinverse.tasks`: validation, determinism, read-only settings, samplers by name.

The tasks' numbers (samplers against baselines) are asserted in ``tests/test_end_to_end.py``; these
tests check the module's contract on tiny problems.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from diffinverse.samplers import SAMPLERS
from diffinverse.tasks import TASKS, frozen_priors, get_task, image_scores, scores


def test_every_task_names_known_samplers_with_a_sigma_start():
    assert len(TASKS) == 13 and all(name == task.name for name, task in TASKS.items())
    for task in TASKS.values():
        assert task.settings and set(task.settings) <= set(SAMPLERS)
        assert all("sigma_start" in kw for kw in task.settings.values())
        assert task.baseline in ("adjoint", "tv") and task.init in ("adjoint", "tv")


def test_a_task_refuses_unknown_samplers_and_incomplete_settings():
    task = TASKS["ct_60_views"]
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        dataclasses.replace(task, settings={"nope": {"sigma_start": 0.1}})
    with pytest.raises(ValueError, match="lack 'sigma_start'"):
        dataclasses.replace(task, settings={"dps": {"zeta": 1.0}})
    with pytest.raises(ValueError, match="init must be"):
        dataclasses.replace(task, init="fbp")
    with pytest.raises(ValueError, match="unknown task 'ct_61_views'"):
        get_task("ct_61_views")
    assert get_task("ct_60_views") is task


def test_settings_are_read_only():
    task = TASKS["mri_8coil_4x_random"]
    with pytest.raises(TypeError):
        task.settings["dps"]["zeta"] = 1.0
    with pytest.raises(TypeError):
        task.settings["new"] = {}
    # the shared DPS entry of the MRI tasks is copied into each task, not aliased
    assert task.settings["dps"] is not TASKS["mri_1coil_4x_random"].settings["dps"]


@pytest.mark.parametrize("name", ["mri_8coil_4x_random", "inpaint_box"])
def test_problems_are_seeded_and_x_replaces_only_the_images(name):
    task = TASKS[name]
    a, b, c = task.problem(2, 32, 3), task.problem(2, 32, 3), task.problem(2, 32, 4)
    assert a.task is task and a.x.shape[0] == 2 and a.x.shape[-2:] == (32, 32)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x) and not torch.equal(a.y, c.y)
    # the same seed with other images: same operator and noise draw, so y changes only through A x
    d = task.problem(2, 32, 3, x=c.x)
    assert torch.equal(d.x, c.x)
    assert torch.allclose(d.y - a.y, d.physics.A(c.x) - a.physics.A(a.x), atol=1e-5)


def test_sampler_comes_from_the_table_with_the_task_settings_and_overrides():
    task = TASKS["ct_30_views"]
    prior = frozen_priors([task])[task.prior]
    assert not any(p.requires_grad for p in prior.parameters())
    for method, kw in task.settings.items():
        sampler, sigma_start = task.sampler(method, prior)
        assert type(sampler) is SAMPLERS[method].cls and sigma_start == kw["sigma_start"]
    sampler, sigma_start = task.sampler("dps", prior, sigma_start=0.2, zeta=1e-3)
    assert sigma_start == 0.2 and sampler.zeta == 1e-3
    with pytest.raises(KeyError, match="no settings for sampler 'stsl'"):
        task.sampler("stsl", prior)


def test_scores_are_the_means_of_the_per_image_scores():
    x = TASKS["ct_60_views"].images(3, 32, torch.Generator().manual_seed(0))
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    per_image = image_scores(x, noisy)
    assert len(per_image) == 3
    p, s = scores(x, noisy)
    assert p == pytest.approx(sum(q for q, _ in per_image) / 3)
    assert s == pytest.approx(sum(t for _, t in per_image) / 3)
    assert scores(x, x + 0.01)[0] > p
