"""diffvar against the PyTorch peer, side by side in one run on one machine: prints a table, writes a JSON.

    python benchmarks/bench.py [--workloads=toy2d,digits,mnist] [--seconds=10] [--out=runs/bench.json]
        [--peer | --nopeer] [--peer_threads=0] [--ode [--ode_workdir=runs/digits] [--ode_train_steps=200]]

For each workload, two processes in turn, so that each side's peak memory is its own and they never share
the cores: benchmarks/measure.py (diffvar: the trainer's compiled train step and the evaluation's compiled
ISM ELBO, built from the workload's config; compile seconds apart; FLOPs from XLA's cost analysis against the
fp32 matmul peak measured in that process), then benchmarks/torch_peer.py (the reference implementation's
computation in eager PyTorch, same model and batch sizes). Both time `seconds` of training and seconds / 2 of
ELBO evaluation, steady state after two warm-up calls. Ratios are diffvar / peer (above 1: diffvar faster).
With --ode, also the wall time of the digits test-set probability-flow ODE bpd at rtol = atol = 1e-5 (the code
scripts/evaluate.py runs), in a third process. Both sides inherit this process's environment (MALLOC_*,
XLA_FLAGS, thread settings): the JSON records them. The peer needs torch (pip install -e '.[bench]'); without
it only diffvar's side is measured and the output says the peer was skipped. The peer runs on the CPU only: on
an accelerator its ratios compare devices.

Workloads: toy2d (configs/gmm2d.py, MLP 2+1 -> 128 x 3 -> 2, batch 512), digits (configs/digits.py, batch 64),
mnist (configs/mnist.py, batch 64, synthetic data of MNIST's shape: MNIST is not prepared here), cifar
(configs/cifar10.py, batch 128, synthetic; for accelerators). All with the peer's objective, eps-loss DSM.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("toy2d", "digits", "mnist", "cifar")
ENV_PREFIXES = ("MALLOC_", "XLA_", "JAX_", "OMP_", "MKL_", "TF_CPP_", "OPENBLAS_")

flags.DEFINE_list("workloads", ["toy2d", "digits", "mnist"], f"Workloads to run, from {', '.join(WORKLOADS)}.")
flags.DEFINE_float("seconds", 10.0, "Seconds of timed training per side and workload (ELBO: half of it).")
flags.DEFINE_string("out", "runs/bench.json", "Where to write the JSON results.")
flags.DEFINE_bool("peer", True, "Also run the PyTorch peer (--nopeer: diffvar only).")
flags.DEFINE_integer("peer_threads", 0, "torch.set_num_threads for the peer (0: torch's default, one per core).")
flags.DEFINE_bool("ode", False, "Also time the digits test-set ODE bpd at rtol = atol = 1e-5.")
flags.DEFINE_string(
    "ode_workdir",
    "",
    "--ode on the latest checkpoint of this digits workdir (default: a fresh "
    "configs/digits.py model trained --ode_train_steps steps first).",
)
flags.DEFINE_integer("ode_train_steps", 200, "--ode without --ode_workdir: training steps before the ODE.")
flags.DEFINE_integer("ode_max_examples", 0, "--ode on the first N test examples only (0: the whole test set).")
FLAGS = flags.FLAGS


def child(script, *args):
    """(JSON dict of the last stdout line, None) of `python benchmarks/<script> args`, or (None, error line);
    its stderr goes to ours."""
    cmd = [sys.executable, os.path.join(HERE, script), *map(str, args)]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        return None, f"{' '.join(cmd[1:])} exited with status {res.returncode}"
    try:
        return json.loads(lines[-1]), None
    except ValueError:
        return None, f"{' '.join(cmd[1:])} printed no JSON line: {lines[-1][:200]!r}"


def say(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def machine():
    """What the figures were measured on (no host names)."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu or platform.processor(),
        "cores": cores,
        "load_average_at_start": os.getloadavg()[0],
    }


def ratios(d, p):
    """The workload entry's comparison figures from diffvar's (d) and the peer's (p) dicts."""
    if not (d and p):
        return {
            "train_speed_ratio": None,
            "elbo_speed_ratio": None,
            "peer_train_flops_per_sec": None,
            "peer_train_peak_fraction": None,
        }
    peer_flops = d["train_flops_per_step"] * p["train_steps_per_sec"]  # at diffvar's FLOP count of the step
    return {
        "train_speed_ratio": d["train_steps_per_sec"] / p["train_steps_per_sec"],
        "elbo_speed_ratio": d["elbo_examples_per_sec"] / p["elbo_examples_per_sec"],
        "peer_train_flops_per_sec": peer_flops,
        "peer_train_peak_fraction": peer_flops / d["peak_flops_per_sec"],
    }


def fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def table(res):
    """The results as plain text: one row per side and workload, then the ratios, notes and the ODE."""
    head = (
        "workload",
        "side",
        "train steps/s",
        "ELBO ex/s",
        "GFLOP/step",
        "GFLOP/s",
        "% peak",
        "peak RSS MB",
        "compile s train/ELBO",
    )
    rows = []
    for name, w in res["workloads"].items():
        d, p = w.get("diffvar"), w.get("peer")
        if d:
            rows.append(
                (
                    name,
                    "diffvar",
                    fmt(d["train_steps_per_sec"], ".2f"),
                    fmt(d["elbo_examples_per_sec"], ",.0f"),
                    fmt(d["train_flops_per_step"] / 1e9, ".3f"),
                    fmt(d["train_flops_per_sec"] / 1e9, ".1f"),
                    fmt(100 * d["train_peak_fraction"], ".0f"),
                    fmt(d["max_rss_mb"], ".0f"),
                    f"{d['train_compile_seconds']:.1f} / {d['elbo_compile_seconds']:.1f}",
                )
            )
        if p:
            pf = w["peer_train_flops_per_sec"]
            rows.append(
                (
                    "",
                    "peer",
                    fmt(p["train_steps_per_sec"], ".2f"),
                    fmt(p["elbo_examples_per_sec"], ",.0f"),
                    "",
                    fmt(pf and pf / 1e9, ".1f"),
                    fmt(w["peer_train_peak_fraction"] and 100 * w["peer_train_peak_fraction"], ".0f"),
                    fmt(p.get("max_rss_mb"), ".0f"),
                    f"eager, {p['threads']} thr",
                )
            )
            rows.append(
                (
                    "",
                    "ratio",
                    fmt(w["train_speed_ratio"], ".2f") + "x",
                    fmt(w["elbo_speed_ratio"], ".2f") + "x",
                    "",
                    "",
                    "",
                    "",
                    "",
                )
            )
        if w.get("error"):
            rows.append((name, "error", w["error"][:60], "", "", "", "", "", ""))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(wd) if i < 2 else c.rjust(wd) for i, (c, wd) in enumerate(zip(r, widths)))
    m = res["machine"]
    first = next((w["diffvar"] for w in res["workloads"].values() if w.get("diffvar")), None)
    out = [
        f"{m['cpu']}, {m['cores']} cores, load {m['load_average_at_start']:.1f} at start; "
        + (f"jax {first['jax']} ({first['backend']}, {first['device_kind']})" if first else "jax: -")
        + f"; peer: {res['peer_status']}; {res['seconds']:g} s per measurement",
        line(head),
        "  ".join("-" * wd for wd in widths),
    ] + [line(r) for r in rows]
    for name, w in res["workloads"].items():
        d = w.get("diffvar")
        if d:
            out.append(
                f"{name}: {d['model']}, batch {d['batch']} over {d['num_devices']} {d['backend']} device(s), "
                f"{d['steps_per_call']} step(s)/call; data: "
                f"{d['data']}; fp32 peak {d['peak_flops_per_sec'] / 1e9:.1f} GFLOP/s "
                f"({d['peak_matmul_size']}^2 matmul)"
            )
    out.append(
        "% peak: train FLOP/s (XLA cost analysis of diffvar's step x steps/s; the peer's at the same FLOP "
        "count) over the fp32 matmul peak measured in the diffvar process"
    )
    if res.get("env"):
        out.append("environment: " + " ".join(f"{k}={v}" for k, v in sorted(res["env"].items())))
    if res.get("ode"):
        o = res["ode"]
        out.append(
            f"digits test-set ODE (rtol {o['rtol']:g}, atol {o['atol']:g}, {o['divergence']} trace): "
            f"{o['seconds']:.1f} s + {o['compile_seconds']:.1f} s compile, {o['num_examples']} examples, "
            f"mean NFE {o['nfe']:.0f}, {o['bpd']:.4f} bpd; model: {o['model']}"
        )
    elif res.get("ode_error"):
        out.append(f"digits ODE: {res['ode_error']}")
    return "\n".join(out)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    unknown = [w for w in FLAGS.workloads if w not in WORKLOADS]
    if unknown or not FLAGS.workloads or FLAGS.seconds <= 0:
        raise app.UsageError(
            f"--workloads takes a comma-separated list of {', '.join(WORKLOADS)} (got "
            f"{FLAGS.workloads}) and --seconds a positive number (got {FLAGS.seconds})"
        )
    if not FLAGS.peer:
        peer_status = "not run (--nopeer)"
    elif subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode != 0:
        peer_status = f"skipped: torch is not importable by {sys.executable} (pip install -e '.[bench]')"
    else:
        peer_status = "pytorch eager"
    res = {
        "command": " ".join(["python", "benchmarks/bench.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)},
        "seconds": FLAGS.seconds,
        "peer_status": peer_status,
        "workloads": {},
    }
    if "skipped" in peer_status:
        say(f"the PyTorch peer is {peer_status}; measuring diffvar only")
    failed = False
    for name in FLAGS.workloads:
        say(f"{name}: diffvar ({FLAGS.seconds:g} s train + {FLAGS.seconds / 2:g} s ELBO, after compiling)")
        d, error = child("measure.py", f"--workload={name}", f"--seconds={FLAGS.seconds}")
        p = None
        if peer_status == "pytorch eager" and name != "cifar":  # the peer runs on the CPU only
            say(f"{name}: PyTorch peer")
            p, peer_error = child(
                "torch_peer.py", "--workload", name, "--seconds", FLAGS.seconds, "--threads", FLAGS.peer_threads
            )
            error = "; ".join(e for e in (error, peer_error) if e) or None
        res["workloads"][name] = {"diffvar": d, "peer": p, **ratios(d, p), **({"error": error} if error else {})}
        if name == "cifar":
            res["workloads"][name]["peer_note"] = "not run: the peer runs on the CPU only, cifar is accelerator-sized"
        failed |= bool(error)
    if FLAGS.ode:
        say("digits test-set ODE bpd at rtol = atol = 1e-5")
        res["ode"], ode_error = child(
            "measure.py",
            "--ode",
            f"--ode_workdir={FLAGS.ode_workdir}",
            f"--ode_train_steps={FLAGS.ode_train_steps}",
            f"--ode_max_examples={FLAGS.ode_max_examples}",
        )
        if ode_error:
            res["ode_error"], failed = ode_error, True
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(res, f, indent=1)
    print(table(res))
    print(f"wrote {FLAGS.out}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
