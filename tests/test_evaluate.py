"""Checkpoint evaluation and sampling on a tiny gmm2d run: the three estimators, the exact-score ground truth,
repeats to a target standard error, read-only checkpoints, one-line errors, the sample and plot scripts; and
scripts/evaluate.py's labels on a tiny digits (image) run."""

import glob
import hashlib
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from diffvar import (
    checkpoints,
    config_files,
    distributed,
    evaluate as ev,
    evaluator,
    experiment,
    passes,
    train as train_lib,
)
from diffvar.data import toy
from diffvar.errors import OptionError
from diffvar.mixture import GaussianMixture, score_fn_for
from diffvar.ode import OdeOptions
from tests.helpers import assert_one_error_line, load_config, run_script, tiny_config, within

STEPS = 200


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("evaluate") / "run")
    config = tiny_config(
        **{
            "training.num_steps": STEPS,
            "training.steps_per_call": 50,
            "training.log_every": 50,
            "training.ckpt_every": 100,
            "training.keep": 3,
            "eval.every": 100,
            "eval.max_examples": 1024,
            "sampling.num": 16,
            "sampling.steps": 5,
            "optim.warmup_steps": 20,
            "optim.schedule": "cosine",
        }
    )
    train_lib.train(config, workdir)
    return workdir


def script(name, *flags):
    return run_script(name, *flags, timeout=300)


def listing(path):
    """{relative path: (sha256, size, mtime_ns)} of every file and (mtime_ns) of every directory under path."""
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = os.stat(os.path.join(root, d)).st_mtime_ns
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = (
                    hashlib.sha256(fh.read()).hexdigest(),
                    os.path.getsize(p),
                    os.stat(p).st_mtime_ns,
                )
    return out


def test_evaluate_reports_three_estimates_that_agree_and_leaves_checkpoints_alone(run):
    before, entries = listing(os.path.join(run, "checkpoints")), set(os.listdir(run))
    r = script(
        "evaluate",
        f"--workdir={run}",
        "--max_examples=1024",
        "--batch_size=512",
        "--repeats=8",
        "--ode_rtol=1e-4",
        "--ode_atol=1e-4",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ISM-form ELBO" in r.stdout and "ODE" in r.stdout and "exact -log p(x)" in r.stdout  # progress + table
    assert listing(os.path.join(run, "checkpoints")) == before
    assert set(os.listdir(run)) == entries | {"eval"}
    with open(os.path.join(run, "eval", f"{STEPS}.json")) as f:
        res = json.load(f)
    assert res["unit"].startswith("nats") and res["step"] == STEPS and res["num_examples"] == 1024
    for key in (
        "nats_elbo",
        "nats_elbo_stderr",
        "nats_elbo_ism",
        "nats_elbo_ism_stderr",
        "nats_elbo_dsm",
        "nats_elbo_dsm_stderr",
        "nats_ode",
        "nats_ode_stderr",
        "nfe",
        "seconds_elbo_ism",
        "seconds_elbo_dsm",
        "seconds_ode",
        "exact_nll_nats",
    ):
        assert np.isfinite(res[key]), key
    assert not any(k.startswith("bpd") for k in res)  # the toy's values are nats, and named so
    assert all(res[k]["label"]["bound"] for k in ("elbo_ism", "elbo_dsm", "ode"))
    assert res["nats_elbo"] == res["nats_elbo_ism"] and res["elbo_ism"]["repeats"] == 8
    assert res["nats_elbo_stderr"] > 0 and res["nats_ode_stderr"] > 0 and 20 < res["nfe"] < 6 * 4096
    diffs = res["differences"]
    # The two forms estimate the same number for any score.
    assert within(diffs["ism-dsm"]), diffs["ism-dsm"]
    # Every estimate is a cross-entropy (or a bound above one) of the model: not below the data's entropy.
    # (The ODE's likelihood is that of a different model than the ELBO bounds, so neither bounds the other.)
    for name in ("ism", "dsm", "ode"):
        assert diffs[f"{name}-exact"]["mean"] > -4 * diffs[f"{name}-exact"]["stderr"], (name, diffs)


@pytest.mark.parametrize("step", [100, STEPS])
def test_trainer_logged_metric_is_what_evaluate_reports(run, step):
    """One code path: the test nats the trainer logged at a step and evaluate's ISM ELBO of that checkpoint,
    with the run's options and seed, are the same number."""
    logged = [
        r
        for r in map(json.loads, open(os.path.join(run, "metrics.jsonl")))
        if r.get("step") == step and "test_nats" in r
    ]
    assert len(logged) == 1
    res = ev.run_eval(run, step, forms=("ism",), ode=False, max_examples=1024, write=False, progress=False)
    assert res["nats_elbo"] == logged[0]["test_nats"] and res["nats_elbo_stderr"] == logged[0]["test_nats_stderr"]
    # ... and a different seed gives a different draw (the equality above is not vacuous).
    other = ev.run_eval(
        run, step, forms=("ism",), ode=False, max_examples=1024, seed=12345, write=False, progress=False
    )
    assert other["nats_elbo"] != res["nats_elbo"]


def test_exact_score_through_the_evaluation_path_gives_the_exact_density(run):
    mix = GaussianMixture.create(toy.GMM2D_WEIGHTS, toy.GMM2D_MEANS, toy.GMM2D_COVS)
    exp, params, step, _ = checkpoints.restore_params(run)
    assert step == STEPS
    score = lambda p: score_fn_for(mix, exp.schedule.reference)
    batches = evaluator.split_batches(exp, distributed.make_mesh(), "test", 1024, 2048)
    exact = evaluator.exact_nll(exp, batches)
    fn = experiment.make_ode_fn(exp, OdeOptions(rtol=1e-5, atol=1e-5), score=score)
    key = jax.random.PRNGKey(0)
    ode = passes.ode_pass(evaluator.compile_ahead(fn, params, batches[0][0], key)[0], params, key, batches)
    err = ode["values"] - exact["values"]
    assert np.max(np.abs(err)) < 0.01 and abs(err.mean()) < 1e-3, (np.max(np.abs(err)), err.mean())
    before = listing(run)
    res = ev.run_eval(run, score=score, repeats=32, max_examples=2048, batch_size=1024, write=False, progress=False)
    assert listing(run) == before and "path" not in res  # write=False writes nothing
    d = res["differences"]
    assert abs(d["ode-exact"]["mean"]) < 2e-3, d
    for form in ("ism", "dsm"):  # the ELBO with the exact score is log p(x) up to the (< 1e-3 nats) prior gap
        assert within(d[f"{form}-exact"], slack=0.01), (form, d)
        assert d[f"{form}-exact"]["stderr"] < 0.1  # and the comparison has power
    assert res["num_examples"] == 2048


def test_repeats_continue_to_a_target_standard_error(run):
    kw = dict(forms=("ism",), ode=False, repeats=1, max_examples=1024, write=False, progress=False)
    one = ev.run_eval(run, **kw)["elbo_ism"]
    target = one["stderr"] / 2
    est = ev.run_eval(run, target_stderr=target, **kw)["elbo_ism"]
    if est["target_reached"]:
        assert est["repeats"] > 1 and est["stderr"] <= target
    else:  # only when the examples' own spread makes the target unreachable
        assert "floor" in est["stop_reason"] and est["floor_stderr"] > target
    # A target far below the floor stops early and says so, instead of running to max_repeats.
    low = ev.run_eval(run, target_stderr=1e-4, max_repeats=50, **kw)["elbo_ism"]
    assert not low["target_reached"] and "floor" in low["stop_reason"] and low["repeats"] < 50


def test_errors_are_one_line_and_leave_the_workdir_unchanged(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_error_line(script("evaluate", f"--workdir={empty}"), "no config.json")
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(os.path.join(run, "config.json"), config_only)
    assert_one_error_line(script("evaluate", f"--workdir={config_only}"), "no checkpoint")
    assert os.listdir(config_only) == ["config.json"]
    assert_one_error_line(
        script("evaluate", f"--workdir={run}", "--checkpoint_step=12345"),
        "no checkpoint at step 12345",
        f"available steps: 100, {STEPS}",
    )
    assert_one_error_line(script("evaluate", f"--workdir={run}", "--form=elbo"), "--form='elbo'", "ism, dsm, both")
    # A truncated data file inside checkpoints/<step>/state.
    corrupt = str(tmp_path / "corrupt")
    shutil.copytree(run, corrupt)
    shutil.rmtree(os.path.join(corrupt, "eval"), ignore_errors=True)
    data_files = glob.glob(os.path.join(corrupt, "checkpoints", str(STEPS), "state", "**", "d", "*"), recursive=True)
    biggest = max(data_files, key=os.path.getsize)
    os.truncate(biggest, 100)
    before = listing(os.path.join(corrupt, "checkpoints"))
    assert_one_error_line(
        script("evaluate", f"--workdir={corrupt}", f"--checkpoint_step={STEPS}"),
        f"checkpoint at step {STEPS}",
        "cannot be read",
    )
    assert listing(os.path.join(corrupt, "checkpoints")) == before
    assert not os.path.exists(os.path.join(corrupt, "eval"))
    # Bytes overwritten in place (same size): orbax keeps no checksums, but the values give it away.
    rng = np.random.default_rng(0)
    with open(biggest, "wb") as f:  # restore a full-size file, then overwrite its middle with random bytes
        f.write(open(os.path.join(run, os.path.relpath(biggest, corrupt)), "rb").read())
    size = os.path.getsize(biggest)
    with open(biggest, "r+b") as f:
        f.seek(size // 4)
        f.write(rng.bytes(size // 2))
    assert_one_error_line(
        script("evaluate", f"--workdir={corrupt}", f"--checkpoint_step={STEPS}"),
        f"checkpoint at step {STEPS}",
        "corrupt",
    )
    # The other, intact checkpoint still evaluates.
    assert checkpoints.restore_params(corrupt, 100)[2] == 100


def test_old_configs_get_new_keys_from_the_defaults(run, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    del config["sampling"]["every"]
    with open(old / "config.json", "w") as f:
        json.dump(config, f)
    exp, filled = checkpoints.load_experiment(str(old))
    cfg = exp.config
    assert filled == ["sampling.every"] and cfg.sampling.every == 0 and cfg.model.hidden == 32
    assert config_files.from_workdir(str(old))[1] == filled


def test_sample_writes_a_scatter_and_npz_and_rejects_bad_flags(run, tmp_path):
    out = str(tmp_path / "lam1")
    r = script("sample", f"--workdir={run}", "--lam=1.0", "--steps=20", "--num=64", f"--out={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    with np.load(out + ".npz") as z:
        assert z["samples"].shape == (64, 2) and np.all(np.isfinite(z["samples"]))
        assert float(z["lam"]) == 1.0 and int(z["steps"]) == 20 and int(z["step"]) == STEPS
    assert os.path.getsize(out + ".png") > 1000
    r = script("sample", f"--workdir={run}", "--ode", "--num=16")
    assert r.returncode == 0, r.stdout + r.stderr
    default = os.path.join(run, "samples", f"sample_{STEPS:08d}_ode")
    with np.load(default + ".npz") as z:
        assert z["samples"].shape == (16, 2) and int(z["nfe"]) > 0
    assert os.path.exists(default + ".png")
    assert_one_error_line(script("sample", f"--workdir={run}", "--lam=1.5"), "--lam=1.5", "[0, 1]")
    assert_one_error_line(script("sample", f"--workdir={run}", "--lam=-0.1"), "--lam=-0.1")
    assert_one_error_line(script("sample", f"--workdir={run}", "--steps=0"), "--steps=0", ">= 1")


def test_plot_script(run, tmp_path):
    out = str(tmp_path / "curves.png")
    r = script("plot", f"--workdir={run}", f"--out={out}")
    assert r.returncode == 0 and os.path.getsize(out) > 1000, r.stdout + r.stderr
    assert_one_error_line(script("plot", f"--workdir={tmp_path}"), "no metrics.jsonl")


def test_option_checks_name_the_flag():
    with pytest.raises(OptionError, match=r"--time_sampling='log' is not allowed; choose one of uniform, importance"):
        ev.check_options(time_sampling="log")
    with pytest.raises(OptionError, match=r"--target_stderr=-1 must be a number >= 0"):
        ev.check_options(target_stderr=-1)
    with pytest.raises(OptionError, match=r"--batch_size=6 must be divisible by the number of devices \(4\)"):
        ev.check_options(batch_size=6, num_devices=4)
    with pytest.raises(OptionError, match=r"--checkpoint_step='first'"):
        checkpoints.parse_step("first")
    assert checkpoints.parse_step("Best") == "best" and checkpoints.parse_step("300") == 300
    assert math.isfinite(checkpoints.MAX_PARAM_MAGNITUDE)


# ----------------------------------------------------------------------------------------------
# scripts/evaluate.py on a tiny trained digits (image) checkpoint, as a user runs it: truncated-normal
# dequantization, the ODE's importance-weighted bound over K = 2 samples (exact trace), the ELBO's plain
# bound with stratified draws; the printed table says how each number was computed and that each is a
# bound, and eval/<step>.json holds the same labels.

IMAGE_STEPS = 20


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits U-Net of two channels per level trained for 20 steps (seconds): only the evaluation is tested."""
    workdir = str(tmp_path_factory.mktemp("evaluate_images") / "run")
    c = load_config("digits")
    c.model.ch, c.model.ch_mult, c.model.num_res_blocks, c.model.attn_resolutions = 8, (1,), 1, ()
    c.training.num_steps, c.training.ckpt_every, c.training.log_every = IMAGE_STEPS, IMAGE_STEPS, 10
    c.optim.warmup_steps, c.eval.every, c.eval.max_examples, c.eval.final_repeats = 5, 0, 16, 1
    c.sampling.num, c.sampling.steps = 4, 5
    train_lib.train(c, workdir)
    return workdir


def test_evaluate_truncated_normal_importance_weighted_prints_and_writes_labels(digits_run):
    r = run_script(
        "evaluate",
        f"--workdir={digits_run}",
        "--dequantization=truncated_normal",
        "--importance_samples=2",
        "--draws=2",
        "--stratified",
        "--form=ism",
        "--max_examples=8",
        "--ode_rtol=1e-3",
        "--ode_atol=1e-3",
        "--quiet",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "how each number was computed:" in out, out
    for words in (
        "ISM: ELBO ISM form from t=0.001",
        "mean of 2 stratified draw(s) per unit",
        "truncated_normal dequantization, plain bound (K=1), 17 levels, logit transform",
        "truncated_normal dequantization, importance-weighted over K=2, 17 levels, logit transform",
        "ODE: ODE Tsit5",
        "exact trace",
        "no log2 L, no Jacobian",
        "a lower bound on the probability-flow ODE's discrete log P(x)",
        "a lower bound on the plug-in reverse SDE's discrete log P(x)",
    ):
        assert words in out, (words, out)
    path = os.path.join(digits_run, "eval", f"{IMAGE_STEPS}.json")
    assert f"wrote {path}" in out
    res = json.load(open(path))
    assert res["num_examples"] == 8 and res["dataset"]["name"] == "digits"
    for key, k in (("elbo_ism", 1), ("ode", 2)):
        label = res[key]["label"]
        assert (label["dequantization"], label["importance_samples"], label["checkpoint_step"], label["bound"]) == (
            "truncated_normal",
            k,
            IMAGE_STEPS,
            True,
        )
    assert res["ode"]["label"]["divergence"] == "exact"  # auto is the exact trace when K > 1
    assert res["elbo_ism"]["label"]["stratified"] is True and res["elbo_ism"]["label"]["draws"] == 2
    assert res["elbo_ism"]["label"]["t_min"] == pytest.approx(1e-3)
    assert res["ode"]["label"]["t_min"] == pytest.approx(1e-3)
    assert res["bpd_ode"] > 0 and res["bpd_elbo_ism"] > 0  # bits/dim of 17-level data: above 0, finite


def test_importance_weighting_with_a_hutchinson_trace_is_refused_in_one_line(digits_run):
    r = run_script(
        "evaluate",
        f"--workdir={digits_run}",
        "--dequantization=truncated_normal",
        "--importance_samples=2",
        "--ode_divergence=hutchinson",
        "--max_examples=8",
        "--quiet",
    )
    assert_one_error_line(r, "--importance_samples=2", "Hutchinson", "not a bound", "exact trace")
