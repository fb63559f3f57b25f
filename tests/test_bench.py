"""Smoke runs of the benchmarks (bench.py, quality.py), each as short as it goes: every figure is there and
finite. No timing is asserted (timings are bench figures, never test results)."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, load_benchmark

FIGURES = (
    "train_steps_per_sec",
    "elbo_examples_per_sec",
    "train_compile_seconds",
    "elbo_compile_seconds",
    "train_flops_per_step",
    "train_flops_per_sec",
    "peak_flops_per_sec",
    "train_peak_fraction",
    "max_rss_mb",
)
COMPARISON = ("train_speed_ratio", "elbo_speed_ratio", "peer_train_flops_per_sec", "peer_train_peak_fraction")


def test_bench_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "bench.py"),
            "--workloads=toy2d",
            "--seconds=1",
            "--nopeer",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert {"command", "date", "machine", "env", "seconds", "peer_status", "workloads"} <= set(res)
    assert "--nopeer" in res["peer_status"]
    w = res["workloads"]["toy2d"]
    d = w["diffvar"]
    for key in FIGURES:
        assert isinstance(d[key], (int, float)) and math.isfinite(d[key]) and d[key] > 0, (key, d[key])
    assert d["batch"] == 512 and d["steps_per_call"] == 50 and d["model"].startswith("mlp hidden=128 depth=3")
    assert w["peer"] is None and all(w[key] is None for key in COMPARISON)
    assert "toy2d" in r.stdout and "diffvar" in r.stdout and f"wrote {out}" in r.stdout


def test_quality_smoke_run_trains_and_evaluates_both_sides(tmp_path):
    """benchmarks/quality.py with diffvar's run cut to 4 steps and the peer's to 5 s (by default it trains as long as
    diffvar's run took), both evaluated on the whole digits test set, diffvar's bpd being the one its run printed."""
    pytest.importorskip("torch", reason="the bench extra (pip install -e '.[bench]') provides torch")
    out = tmp_path / "quality.json"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "quality.py"),
            f"--workdir={tmp_path / 'runs'}",
            f"--out={out}",
            "--peer_seconds=5",
            "--overrides=training.num_steps=4,training.log_every=2,training.ckpt_every=4,eval.every=4,"
            "eval.repeats=1,eval.final_repeats=1,sampling.num=4,sampling.steps=4,optim.warmup_steps=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (res,) = json.loads(out.read_text())["seeds"]
    assert res["diffvar_step"] == 4 and res["peer_steps"] > 0 and res["peer_lr"] == 1e-4 and res["peer_seconds"] == 5
    assert res["num_examples"] == 297 and res["repeats"] == 1 and res["wall_seconds"] > 0
    for key in ("diffvar_bpd", "diffvar_bpd_stderr", "peer_bpd", "peer_bpd_stderr", "peer_minus_diffvar_bpd_stderr"):
        assert math.isfinite(res[key]) and res[key] > 0, (key, res[key])
    assert res["peer_minus_diffvar_bpd"] == pytest.approx(res["peer_bpd"] - res["diffvar_bpd"], abs=1e-9)
    assert res["diffvar_bpd"] == pytest.approx(res["diffvar_bpd_printed_by_its_run"], abs=1e-9)
    assert all((tmp_path / "runs" / f).exists() for f in ("diffvar_seed0.json", "peer_seed0_lr0.0001_5s.npz"))
    # scripts/train.py, tuned as `make train` runs it, split the digits U-Net's batch over one CPU device per core
    from diffvar import platform

    devices = platform.cpu_devices("unet", (64, 256))  # configs/digits.py's training and evaluation batches
    log = (tmp_path / "runs" / "diffvar_seed0.log").read_text()
    assert f"on {devices} cpu device(s) in 1 process(es)" in log, log


def test_quality_reuses_a_recorded_run_only_for_the_same_settings(tmp_path):
    quality = load_benchmark("quality")
    made = []

    def make():
        made.append(1)
        return {"wall_seconds": float(len(made))}

    path = str(tmp_path / "run.json")
    assert quality.cached(path, ["--config.seed=0"], make)["wall_seconds"] == 1.0
    assert quality.cached(path, ["--config.seed=0"], make)["wall_seconds"] == 1.0 and len(made) == 1
    assert quality.cached(path, ["--config.seed=1"], make)["wall_seconds"] == 2.0 and len(made) == 2


def test_counted_flops_are_the_layer_shapes_flops(monkeypatch):
    """measure.py's counted FLOPs: a convolution's are 2 H W kh kw Cin Cout per example, a strided one's input
    gradient costs what its forward does, and a small U-Net's train step is 3x the forward from its layer shapes
    less the input gradients never computed (of the first convolution and of the time embedding's first Dense)."""
    import jax
    import jax.numpy as jnp

    from diffvar import experiment
    from tests.helpers import load_config

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    measure = load_benchmark("measure")

    def conv(x, k, stride):
        return jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 5))
    assert measure.matmul_flops(jax.make_jaxpr(conv, static_argnums=2)(x, k, 1)) == 2 * 2 * 8 * 8 * 9 * 3 * 5
    forward = measure.matmul_flops(jax.make_jaxpr(conv, static_argnums=2)(x, k, 2))
    input_grad = jax.grad(lambda x: jnp.sum(jnp.sin(conv(x, k, 2))))
    assert measure.matmul_flops(jax.make_jaxpr(input_grad)(x)) == 2 * forward  # the forward and its transpose

    c = load_config("digits")
    c.model.ch, c.model.ch_mult, c.model.num_res_blocks, c.training.batch_size = 8, (1, 2), 1, 4
    exp = experiment.build(c)
    state = jax.eval_shape(lambda: experiment.init_state(exp, 0))
    batch = jax.ShapeDtypeStruct((1, 4, 8, 8, 1), jnp.float32)
    counted = measure.matmul_flops(jax.make_jaxpr(experiment.make_train_step(exp))(state, batch))
    never = 4 * (2 * 8 * 8 * 9 * 1 * 8 + 2 * 8 * 32)  # conv_in's and the first time Dense's input gradients
    assert counted == 3 * 4 * measure.layer_flops(exp) - never
