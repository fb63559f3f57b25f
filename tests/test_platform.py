"""The CPU platform's process setup (diffvar/platform.py): applied on the CPU only, the user's choices win."""
import os

import pytest

from diffvar import platform
from tests.helpers import train_script


@pytest.fixture
def plain_env(monkeypatch):
    for key in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS", "DIFFVAR_TUNE", "JAX_PLATFORMS", *platform.ALLOCATOR_ENV):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_the_platform_is_known_before_jax_starts(plain_env):
    plain_env.setattr(platform, "accelerator_installed", lambda: False)
    assert platform.is_cpu()
    plain_env.setattr(platform, "accelerator_installed", lambda: True)  # jax would pick the accelerator
    assert not platform.is_cpu()
    for platforms, cpu in [("cpu", True), ("CPU", True), ("cpu,cuda", True), ("cuda", False), ("tpu,cpu", False)]:
        plain_env.setenv("JAX_PLATFORMS", platforms)
        assert platform.is_cpu() == cpu, platforms


def test_tune_process_reexecutes_once_on_the_cpu_only(plain_env):
    calls = []
    plain_env.setattr(os, "execve", lambda path, argv, env: calls.append(env))
    plain_env.setenv("MALLOC_ARENA_MAX", "4")  # the user's value wins
    plain_env.setenv("JAX_PLATFORMS", "cpu")
    platform.tune_process()
    (env,) = calls
    assert env["DIFFVAR_TUNE"] == "done" and env["MALLOC_ARENA_MAX"] == "4"
    assert env["MALLOC_MMAP_THRESHOLD_"] == platform.ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]
    assert "XLA_FLAGS" not in env  # no XLA flags of its own
    for key, value in [("DIFFVAR_TUNE", "done"), ("DIFFVAR_TUNE", "0"), ("JAX_PLATFORMS", "cuda")]:
        plain_env.setenv("DIFFVAR_TUNE", "")
        plain_env.setenv("JAX_PLATFORMS", "cpu")
        plain_env.setenv(key, value)
        platform.tune_process()
    assert len(calls) == 1


def test_scripts_make_one_cpu_device_per_core(tmp_path, plain_env):
    """Under the CPU tuning a U-Net's batch is split over one CPU device per usable core, at most
    MAX_CPU_DEVICES; the MLPs, the user's own choice, DIFFVAR_TUNE=0 or another platform leave jax's default
    of one. (A digits run of scripts/train.py on one device per core is checked by test_bench's quality smoke
    run, which makes one.)"""
    r = train_script(str(tmp_path / "gmm2d"), "--config.training.num_steps=20")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on 1 cpu device(s) in 1 process(es)" in r.stdout.splitlines()[0], r.stdout  # the toys' MLPs keep one
    plain_env.setenv("DIFFVAR_TUNE", "done")
    plain_env.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert platform.cpu_devices("unet") == platform.MAX_CPU_DEVICES and platform.cpu_devices("mlp") == 0
    assert platform.cpu_devices(None) == 0
    plain_env.setattr(os, "sched_getaffinity", lambda pid: {3})  # a sweep trial pinned to one core
    assert platform.cpu_devices("unet") == 1
    plain_env.setenv("JAX_NUM_CPU_DEVICES", "4")
    assert platform.cpu_devices("unet") == 0
    plain_env.delenv("JAX_NUM_CPU_DEVICES")
    plain_env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert platform.cpu_devices("unet") == 0
    plain_env.setenv("XLA_FLAGS", "")
    plain_env.setenv("DIFFVAR_TUNE", "0")  # also what a GPU or TPU process has: tune_process left it alone
    assert platform.cpu_devices("unet") == 0
