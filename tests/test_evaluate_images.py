"""scripts/evaluate.py on a tiny trained digits (image) checkpoint, as a user runs it: truncated-normal
dequantization, the ODE's importance-weighted bound over K = 2 samples (exact trace), the ELBO's plain bound with
stratified draws; the printed table says how each number was computed and that each is a bound, and
eval/<step>.json holds the same labels."""
import json
import os

import pytest

from diffvar import train as train_lib
from tests.helpers import assert_one_error_line, load_config, run_script

STEPS = 20


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits U-Net of two channels per level trained for 20 steps (seconds): only the evaluation is tested."""
    workdir = str(tmp_path_factory.mktemp("evaluate_images") / "run")
    c = load_config("digits")
    c.model.ch, c.model.ch_mult, c.model.num_res_blocks, c.model.attn_resolutions = 8, (1,), 1, ()
    c.training.num_steps, c.training.ckpt_every, c.training.log_every = STEPS, STEPS, 10
    c.optim.warmup_steps, c.eval.every, c.eval.max_examples, c.eval.final_repeats = 5, 0, 16, 1
    c.sampling.num, c.sampling.steps = 4, 5
    train_lib.train(c, workdir)
    return workdir


def test_evaluate_truncated_normal_importance_weighted_prints_and_writes_labels(digits_run):
    r = run_script("evaluate", f"--workdir={digits_run}", "--dequantization=truncated_normal",
                   "--importance_samples=2", "--draws=2", "--stratified", "--form=ism",
                   "--max_examples=8", "--ode_rtol=1e-3", "--ode_atol=1e-3", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "how each number was computed:" in out, out
    for words in ("ISM: ELBO ISM form from t=0.001", "mean of 2 stratified draw(s) per unit",
                  "truncated_normal dequantization, plain bound (K=1), 17 levels, logit transform",
                  "truncated_normal dequantization, importance-weighted over K=2, 17 levels, logit transform",
                  "ODE: ODE Tsit5", "exact trace", "no log2 L, no Jacobian",
                  "a lower bound on the probability-flow ODE's discrete log P(x)",
                  "a lower bound on the plug-in reverse SDE's discrete log P(x)"):
        assert words in out, (words, out)
    path = os.path.join(digits_run, "eval", f"{STEPS}.json")
    assert f"wrote {path}" in out
    res = json.load(open(path))
    assert res["num_examples"] == 8 and res["dataset"]["name"] == "digits"
    for key, k in (("elbo_ism", 1), ("ode", 2)):
        label = res[key]["label"]
        assert (label["dequantization"], label["importance_samples"], label["checkpoint_step"], label["bound"]) == (
            "truncated_normal", k, STEPS, True)
    assert res["ode"]["label"]["divergence"] == "exact"  # auto is the exact trace when K > 1
    assert res["elbo_ism"]["label"]["stratified"] is True and res["elbo_ism"]["label"]["draws_per_pass"] == 2
    assert res["elbo_ism"]["label"]["t_min"] == pytest.approx(1e-3)
    assert res["ode"]["t_min"] == res["ode"]["label"]["t_min"] == pytest.approx(1e-3)
    assert res["bpd_ode"] > 0 and res["bpd_elbo_ism"] > 0  # bits/dim of 17-level data: above 0, finite


def test_importance_weighting_with_a_hutchinson_trace_is_refused_in_one_line(digits_run):
    r = run_script("evaluate", f"--workdir={digits_run}", "--dequantization=truncated_normal",
                   "--importance_samples=2", "--ode_divergence=hutchinson", "--max_examples=8", "--quiet")
    assert_one_error_line(r, "--importance_samples=2", "Hutchinson", "not a bound", "exact trace")
