"""The CPU platform's process setup (diffvar/platform.py): applied on the CPU only, the user's choices win."""

import os

import pytest

from diffvar import platform
from tests.helpers import train_script


@pytest.fixture
def plain_env(monkeypatch):
    for key in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS", "DIFFVAR_TUNE", "JAX_PLATFORMS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(platform, "accelerator_installed", lambda: False)
    return monkeypatch


def test_the_platform_is_known_before_jax_starts(plain_env):
    assert platform.is_cpu()
    plain_env.setattr(platform, "accelerator_installed", lambda: True)  # jax would pick the accelerator
    assert not platform.is_cpu()
    for platforms, cpu in [("cpu", True), ("CPU", True), ("cpu,cuda", True), ("cuda", False), ("tpu,cpu", False)]:
        plain_env.setenv("JAX_PLATFORMS", platforms)
        assert platform.is_cpu() == cpu, platforms


def cores(monkeypatch, n):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(100, 100 + n)))


def test_one_cpu_device_per_core_that_divides_the_batches(plain_env):
    """A U-Net's batch is split over one CPU device per core this process may use: as many as divide the
    batch sizes (config.validate's rule), from the affinity mask, with no ceiling."""
    for n, batches, devices in [
        (2, (64, 256), 2),
        (8, (64, 256), 8),
        (64, (64, 256), 64),
        (6, (64, 256), 4),
        (3, (64, 256), 2),
        (5, (60, 256), 4),
        (7, (), 7),
        (1, (64,), 1),
        (4, (63,), 3),
    ]:
        cores(plain_env, n)
        assert platform.cpu_devices("unet", batches) == devices, (n, batches)
    cores(plain_env, 8)
    assert platform.cpu_devices("mlp", (64,)) == 0 and platform.cpu_devices(None) == 0  # the toys keep one


def test_the_users_choice_and_other_platforms_leave_jax_alone(plain_env):
    cores(plain_env, 8)
    for key, value in [
        ("JAX_NUM_CPU_DEVICES", "4"),
        ("XLA_FLAGS", "--xla_force_host_platform_device_count=3"),
        ("DIFFVAR_TUNE", "0"),
        ("JAX_PLATFORMS", "cuda"),
    ]:
        plain_env.setenv(key, value)
        assert platform.cpu_devices("unet", (64,)) == 0, key
        plain_env.delenv(key)
    assert platform.cpu_devices("unet", (64,)) == 8


def test_the_library_leaves_the_process_alone(plain_env):
    """No re-exec and no environment of its own: setup() only tells jax its device count."""
    plain_env.setattr(os, "execve", lambda *a: pytest.fail("re-executed"))
    plain_env.setattr(os, "execv", lambda *a: pytest.fail("re-executed"))
    before = dict(os.environ)
    platform.setup("mlp", (64,))
    assert dict(os.environ) == before


def test_scripts_keep_one_device_for_the_toys(tmp_path):
    """The 2-D toys' MLPs keep jax's default of one device (a digits run of scripts/train.py on one device per
    core is checked by test_bench's quality smoke run, which makes one)."""
    r = train_script(str(tmp_path / "gmm2d"), "--config.training.num_steps=20")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on 1 cpu device(s) in 1 process(es)" in r.stdout.splitlines()[0], r.stdout
