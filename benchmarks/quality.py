"""Time to quality: `make train`'s run against the PyTorch peer trained for the same wall clock; test bpd.

    python benchmarks/quality.py [--seeds=0,1] [--workdir=runs/quality] [--out=runs/quality.json]
    python benchmarks/quality.py --config=fashion_mnist_cpu --minutes=50 --workdir=runs/quality_fashion \
        --out=runs/quality_fashion.json

--config: configs/<name>.py (digits, or a 28x28 config with the peer's MNIST U-Net: fashion_mnist_cpu, mnist).
--minutes=M: both sides train at the same time for M minutes each (diffvar: training.max_minutes = M), each
pinned to one of the two cores, so that whatever else the machine does slows both alike; then both are
evaluated as below. Without it, for each seed, one after the other (never sharing the cores):
1. diffvar: scripts/train.py --config=configs/digits.py --config.seed=SEED, the run `make train` starts, timed
   from process start to exit: W seconds (compilation, periodic evaluations, checkpoints, samples included).
2. the peer: benchmarks/torch_peer.py trains the reference's digits U-Net on the same training split for W
   seconds (or --peer_seconds), as the reference trains: the same model space (uniform dequantization, logit
   with a = 0.05), eps-loss DSM, Adam at the reference's lr 1e-4, batch 64, no EMA, no schedule.
3. both evaluated here by the trainer's final evaluation, on the same test examples with the same keys (the
   ISM ELBO, uniform time, one Rademacher probe per draw, eval.final_repeats = 8 passes of eval.draws = 4
   stratified draws per example): diffvar on its EMA parameters (so its bpd is exactly the one its run
   printed), the peer on its weights copied into diffvar's U-Net (peer_params; model.time_scale = 1, since the
   peer embeds t in [0, 1] directly). The difference is paired (same examples and draws): its standard error
   is that of the difference.

Prints a line per seed and writes a JSON: W, each side's steps and test bpd +- s.e., the paired difference.
Each finished run is recorded in --workdir (diffvar_seed<S>.json, peer_seed<S>_lr<LR>[_<T>s].json with the
weights beside it; _<T>s when --peer_seconds=T is given) and reused by a later invocation with the same settings:
an interrupted benchmark re-runs only what it had not finished, and --peer_lr=2e-3 or --peer_seconds=T give the
peer another learning rate or time against the same diffvar runs.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from diffvar import platform

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

flags.DEFINE_string("config", "digits", "configs/<config>.py: digits, or 28x28 with the MNIST U-Net.")
flags.DEFINE_float(
    "minutes",
    0.0,
    "Train both sides at once for this many minutes, one core each (0: one after "
    "the other, the peer for as long as diffvar's whole run took).",
)
flags.DEFINE_list("seeds", ["0"], "Seeds: one diffvar run and one peer run each.")
flags.DEFINE_string("workdir", "runs/quality", "Where the runs go (diffvar workdirs, the peer's weights).")
flags.DEFINE_string("out", "runs/quality.json", "Where to write the JSON results.")
flags.DEFINE_list(
    "overrides",
    [],
    "Extra --config.KEY=VALUE for diffvar's run (e.g. training.num_steps=20 for a "
    "smoke run); the same model space and evaluation apply to both sides.",
)
flags.DEFINE_float("peer_lr", 1e-4, "The peer's Adam learning rate (the reference's 1e-4).")
flags.DEFINE_float(
    "peer_seconds",
    0.0,
    "The peer's training time in seconds; 0: W, as long as diffvar's run took "
    "(another value asks how the peer does with more or less time, or makes a smoke run short).",
)
FLAGS = flags.FLAGS


def peer_params(weights, model, shape):
    """The peer's U-Net weights (name -> np array, its state_dict order) as parameters of diffvar's U-Net `model`
    for examples of `shape` [H, W, C]: both networks create their layers in the same order, so the i-th torch
    module is the i-th flax module (model.init's dict keeps that order; jax.tree functions would sort it).
    Conv2d [O, I, kh, kw] -> kernel [kh, kw, I, O] (a 1x1 Conv2d in attention -> Dense kernel [I, O]);
    Linear [O, I] -> kernel [I, O]; GroupNorm weight -> scale."""
    import jax
    import jax.numpy as jnp

    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(shape)), jnp.ones((1,)))["params"]
    modules = {}
    for name, value in weights.items():
        module, field = name.rsplit(".", 1)
        modules.setdefault(module, {})[field] = np.asarray(value, np.float32)

    def flax_modules(tree, path=()):
        if all(not isinstance(v, dict) for v in tree.values()):
            yield path, tree
            return
        for key, value in tree.items():
            yield from flax_modules(value, path + (key,))

    targets = list(flax_modules(template))
    if len(targets) != len(modules):
        raise ValueError(f"the peer has {len(modules)} parameterised modules, diffvar's U-Net {len(targets)}")
    out = {}
    for (torch_name, m), (path, leaves) in zip(modules.items(), targets):
        w = m["weight"]
        if "kernel" in leaves:
            kernel = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
            if kernel.ndim == 4 and leaves["kernel"].ndim == 2:
                kernel = kernel[0, 0]
            new = {"kernel": kernel, "bias": m["bias"]}
        else:
            new = {"scale": w, "bias": m["bias"]}
        for key, value in new.items():
            if value.shape != leaves[key].shape:
                raise ValueError(
                    f"peer {torch_name} -> {'/'.join(path)}/{key}: shape {value.shape}, expected {leaves[key].shape}"
                )
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = new
    return out


PEER_WORKLOADS = {"digits": "digits", "mnist": "mnist", "fashion_mnist": "mnist"}  # data.name -> its U-Net


def start(cmd, log_path, core=None):
    """(Popen of cmd with its output to log_path, pinned to CPU `core` if given, start time)."""
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin), time.time()


def finish(proc_start, log_path):
    """Waits for a start()ed command; (seconds from its start to exit, its last line)."""
    proc, began = proc_start
    code = proc.wait()
    seconds = time.time() - began
    if code:
        sys.exit(f"quality: {' '.join(proc.args[1:])} exited with status {code}; see {log_path}")
    with open(log_path) as log:
        lines = log.read().strip().splitlines()
    return seconds, lines[-1] if lines else ""


def run(cmd, log_path):
    """Runs cmd with its output (stdout and stderr) to log_path; (seconds from start to exit, its last line)."""
    return finish(start(cmd, log_path), log_path)


def evaluate_both(diffvar_workdir, peer_weights):
    """Test-set ELBO (bpd) of diffvar's EMA parameters and of the peer's weights, same examples and keys."""
    import jax

    from diffvar import checkpoints, distributed, evaluator, experiment, passes

    mesh = distributed.make_mesh()
    exp, params, step, _ = checkpoints.restore_params(diffvar_workdir, "latest", mesh)
    config = exp.config
    peer_config = config.copy_and_resolve_references()
    peer_config.model.time_scale = 1.0
    peer_exp = experiment.build(peer_config)
    network = peer_params(peer_weights, peer_exp.model, exp.info.shape)
    peer = jax.device_put({"network": network, "schedule": {}}, distributed.replicated(mesh))  # a fixed schedule
    e = config.eval  # the trainer's final evaluation, key included: diffvar's bpd is the one its run printed
    spec, repeats = evaluator.EvalSpec.from_config(config), e.final_repeats or e.repeats
    out = {
        name: evaluator.Evaluator(ex, mesh, spec).run(p, step, repeats)[e.form]
        for name, ex, p in (("diffvar", exp, params), ("peer", peer_exp, peer))
    }
    d, se = passes.paired_difference(out["peer"]["values"], out["diffvar"]["values"])
    return {
        "diffvar_step": step,
        "form": e.form,
        "repeats": repeats,
        "num_examples": out["diffvar"]["num_examples"],
        "diffvar_bpd": out["diffvar"]["mean"],
        "diffvar_bpd_stderr": out["diffvar"]["stderr"],
        "peer_bpd": out["peer"]["mean"],
        "peer_bpd_stderr": out["peer"]["stderr"],
        "peer_minus_diffvar_bpd": d,
        "peer_minus_diffvar_bpd_stderr": se,
    }


def cached(path, key, make):
    """make()'s dict, recorded in the JSON file `path` under `key` (the inputs it depends on): a later call with
    the same key returns the record instead of making it again."""
    from diffvar.files import write_json_atomic

    if os.path.exists(path):
        with open(path) as f:
            record = json.load(f)
        if record.get("key") == key:
            print(f"quality: reusing {path}", file=sys.stderr, flush=True)
            return record
    record = dict(make(), key=key)
    write_json_atomic(path, record)
    return record


def one_seed(seed, workdir):
    """diffvar's run, the peer's run for as long, both evaluated; each run is recorded in workdir and reused by
    a later call with the same settings (an interrupted benchmark re-runs only what it had not finished)."""
    from diffvar import config_files, data as data_lib

    config_path = os.path.join(ROOT, "configs", f"{FLAGS.config}.py")
    config = config_files.load_file(config_path)
    wd = os.path.join(workdir, f"diffvar_seed{seed}")
    minutes = [f"--config.training.max_minutes={FLAGS.minutes}"] if FLAGS.minutes else []
    overrides = [f"--config.seed={seed}"] + [f"--config.{o}" for o in FLAGS.overrides] + minutes
    diffvar_cmd = [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        f"--config={config_path}",
        f"--workdir={wd}",
        *overrides,
    ]
    diffvar_log = os.path.join(workdir, f"diffvar_seed{seed}.log")
    peer_seconds = FLAGS.peer_seconds or 60 * FLAGS.minutes
    name = f"peer_seed{seed}_lr{FLAGS.peer_lr:g}" + (f"_{peer_seconds:g}s" if peer_seconds else "")
    weights_path, peer_log = os.path.join(workdir, f"{name}.npz"), os.path.join(workdir, f"{name}.log")

    def peer_cmd(seconds):
        levels_path = os.path.join(workdir, f"{config.data.name}_train_levels.npy")
        np.save(levels_path, data_lib.load_split(config.data, "train"))
        return [
            sys.executable,
            os.path.join(HERE, "torch_peer.py"),
            f"--workload={PEER_WORKLOADS[config.data.name]}",
            f"--train_data={levels_path}",
            f"--levels={data_lib.get_info(config.data).levels}",
            f"--logit_alpha={config.data.logit_alpha}",
            f"--train_seconds={seconds}",
            f"--lr={FLAGS.peer_lr}",
            f"--seed={seed}",
            f"--save={weights_path}",
        ]

    def train_diffvar():
        # From scratch: train.py would resume an interrupted run, and its wall time would be only a part.
        shutil.rmtree(wd, ignore_errors=True)
        return {"wall_seconds": run(diffvar_cmd, diffvar_log)[0]}

    def train_both():  # --minutes: at once, one core each
        shutil.rmtree(wd, ignore_errors=True)
        diffvar, peer = start(diffvar_cmd, diffvar_log, core=0), start(peer_cmd(peer_seconds), peer_log, core=1)
        _, line = finish(peer, peer_log)
        return {"wall_seconds": finish(diffvar, diffvar_log)[0], "peer": json.loads(line)}

    key = [*overrides, FLAGS.config]
    if FLAGS.minutes:
        both = cached(os.path.join(workdir, f"both_seed{seed}.json"), key + [FLAGS.peer_lr], train_both)
        seconds, peer = both["wall_seconds"], both["peer"]
    else:
        seconds = cached(os.path.join(workdir, f"diffvar_seed{seed}.json"), key, train_diffvar)["wall_seconds"]
        peer_seconds = peer_seconds or seconds
        peer = cached(
            os.path.join(workdir, f"{name}.json"),
            [peer_seconds, FLAGS.peer_lr],
            lambda: json.loads(run(peer_cmd(peer_seconds), peer_log)[1]),
        )
    with np.load(weights_path) as f:
        weights = {k: f[k] for k in f.files}
    res = evaluate_both(wd, weights)
    with open(os.path.join(wd, "status.json")) as f:
        res["diffvar_bpd_printed_by_its_run"] = json.load(f)["result"]["test_bpd"]
    return dict(
        seed=seed,
        wall_seconds=seconds,
        peer_seconds=peer_seconds,
        peer_steps=peer["steps"],
        peer_lr=peer["lr"],
        peer_threads=peer["threads"],
        concurrent=bool(FLAGS.minutes),
        **res,
    )


def main(argv):
    del argv
    platform.setup("unet")  # this process evaluates the digits U-Net, as scripts/evaluate.py would
    os.makedirs(FLAGS.workdir, exist_ok=True)
    rows = []
    for seed in map(int, FLAGS.seeds):
        print(
            f"quality: seed {seed}: diffvar's run, then the peer for as long (logs: {FLAGS.workdir}/*.log)",
            file=sys.stderr,
            flush=True,
        )
        rows.append(one_seed(seed, FLAGS.workdir))
        r = rows[-1]
        print(
            f"seed {seed}: {r['wall_seconds']:.0f} s / {r['peer_seconds']:.0f} s | "
            f"diffvar {r['diffvar_step']} steps, "
            f"{r['diffvar_bpd']:.4f} +- {r['diffvar_bpd_stderr']:.4f} bpd | peer {r['peer_steps']} steps, "
            f"{r['peer_bpd']:.4f} +- {r['peer_bpd_stderr']:.4f} bpd | peer - diffvar "
            f"{r['peer_minus_diffvar_bpd']:+.4f} +- {r['peer_minus_diffvar_bpd_stderr']:.4f}",
            flush=True,
        )
    res = {
        "command": " ".join(["python"] + sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "XLA_"))},
        "seeds": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
