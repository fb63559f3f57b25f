"""diffvar's side of benchmarks/bench.py: one workload (or the digits ODE) in this process; prints one JSON line.

    python benchmarks/measure.py --workload=digits --seconds=10      # train step + ELBO of one workload
    python benchmarks/measure.py --ode [--ode_workdir=runs/digits]   # digits test-set ODE bpd wall time

What is timed is what users run, built from a config by diffvar.experiment.build:
- train: experiment.make_train_step(exp), the trainer's compiled call of training.steps_per_call optimizer steps
  (state donated, EMA, clipping and Adam as configured), on a fixed batch placed as the trainer places it;
  steady state for `seconds` after two warm-up calls, each call synchronised on its losses;
- elbo: experiment.make_elbo_fn(exp) (one-draw ISM, uniform time, Rademacher Hutchinson), the evaluation's function
  (dequantization, one-probe ISM ELBO, bpd), at the workload's batch (the peer's), for seconds / 2;
- compile seconds of each, apart (AOT: fn.lower(...).compile());
- FLOPs of one train step and of one ELBO example, three ways (flops_report):
  * counted (the figure used for FLOP/s and utilisation): the convolutions and matmuls in the step's jaxpr, each
    2 x output size x its contraction (matmul_flops), the backward's included; what tensor cores execute, so it
    is the same on every backend;
  * xla: XLA's cost analysis of the compiled program times the number of devices (the analysis is of one
    device's program; None for steps_per_call > 1, whose loop body it counts once, and a second compile would
    cost a minute on the GPU, where the figure is wrong anyway). On the CPU it counts the convolutions (without
    their taps on zero padding) and elementwise work too; on a GPU it misses the cuDNN convolutions;
  * layers: from the layer shapes alone (layer_flops: conv 2 H' W' kh kw Cin Cout, dense 2 in out, attention
    4 P^2 C per example), x 3 for a train step (forward, input and weight gradients), x 2 for an ELBO draw with
    one probe (primal and JVP tangent);
- achieved FLOP/s = counted FLOPs x steps/s, against the measured peak (the best of several default-precision fp32
  N x N jitted matmuls, N = 2048 on CPU, 8192 else) and, on a card in CARD_PEAKS, its fp32, TF32 and bf16 peaks;
- peak resident memory of this process (ru_maxrss), and on an accelerator its allocator's peak.

    python benchmarks/measure.py --workload=cifar --flops_only     # the FLOP counts alone (compiles, times nothing)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params
from jax.sharding import PartitionSpec as P

from diffvar import (
    config as config_lib,
    config_files,
    data as data_lib,
    distributed,
    evaluator,
    experiment,
    ode as ode_lib,
    passes,
    platform,
)
from diffvar.models.unet import AttnBlock

from timing import rate  # benchmarks/timing.py, shared with the peer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# workload -> (config file, overrides, synthetic data (shape, levels) or None for the dataset's own batches).
# Model sizes and batch sizes are the PyTorch peer's (benchmarks/torch_peer.py); the objective is its eps-loss DSM.
WORKLOADS = {
    "toy2d": (
        "gmm2d",
        {
            "model.hidden": 128,
            "model.depth": 3,
            "model.activation": "softplus",
            "model.time_embedding": "concat",
            "training.batch_size": 512,
        },
        None,
    ),
    "digits": ("digits", {"training.batch_size": 64}, None),
    "mnist": ("mnist", {"training.batch_size": 64}, ((28, 28, 1), 256)),
    "cifar": ("cifar10", {"training.batch_size": 128}, ((32, 32, 3), 256)),  # for accelerators
}
SYNTHETIC_NOTE = (
    "synthetic: random integer levels of {name}'s shape {shape} ({levels} levels), built without "
    "the dataset (benchmarks/measure.py build_synthetic); speed does not depend on pixel values"
)


def workload_config(name, steps_per_call=0, settings=()):
    """The config of a workload: its configs/<file>.py with the peer's sizes and objective dsm (and
    training.steps_per_call, and SECTION.KEY=VALUE settings, where given)."""
    file, overrides, _ = WORKLOADS[name]
    overrides = dict(overrides, **({"training.steps_per_call": steps_per_call} if steps_per_call else {}))
    for setting in settings:
        key, value = setting.split("=", 1)
        overrides[key] = type(config_lib.defaults()[key.split(".")[0]][key.split(".")[1]])(value)
    c = config_files.load_file(os.path.join(ROOT, "configs", f"{file}.py"))
    c.objective.name = "dsm"
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def build_synthetic(config, shape, levels):
    """experiment.build(config) for an image dataset that is not prepared here (mnist).

    build() reads only the dataset's metadata from disk (diffvar.data.get_info); this supplies it, a DataInfo
    of `shape` and `levels`, and everything else is built by build() itself, unchanged."""
    info = data_lib.DataInfo(config.data.name, tuple(shape), levels, num_train=60000, num_test=10000)
    with mock.patch.object(data_lib, "get_info", lambda cfg: info):
        return experiment.build(config)


def train_batches(exp, name, k):
    """A float32 numpy batch [K, B, *shape]: the dataset's first K training batches, or synthetic levels."""
    c, synthetic = exp.config, WORKLOADS[name][2]
    b = c.training.batch_size
    if synthetic:
        shape, levels = synthetic
        return np.random.default_rng(0).integers(0, levels, (k, b) + shape).astype(np.float32)
    it = data_lib.make_train_iter(c.data, b, c.seed)
    return np.stack([next(it) for _ in range(k)])


# Dense (no 2:4 sparsity) peak FLOP/s by jax's device_kind: NVIDIA's H100 / H200 SXM datasheet (the H200 is the
# H100 SXM's GH100 with more memory). Its headline TF32 989 and BF16 1,979 TFLOP/s are with sparsity: halved here.
CARD_PEAKS = {
    "NVIDIA H200": {"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "NVIDIA H100 80GB HBM3": {"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12},
}


def matmul_flops(jaxpr):
    """FLOPs of the convolutions and matmuls in a (closed) jaxpr, sub-jaxprs included: 2 x output size x the
    contraction (dot_general: the contracted sizes; conv_general_dilated: kernel window x input features per
    group / the input dilation, so that a strided convolution's input gradient, a convolution of the output
    gradient dilated with zeros, counts the products with its nonzero entries only: as much as the forward). A
    scan's body counts `length` times, a cond's costliest branch once, a while body once."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name, out = eqn.primitive.name, eqn.outvars[0].aval if eqn.outvars else None
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            total += 2 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs, spec = eqn.invars[1].aval, eqn.params["dimension_numbers"].rhs_spec  # (out, in, *window)
            window = math.prod(rhs.shape[d] for d in spec[2:])
            total += 2 * math.prod(out.shape) * rhs.shape[spec[1]] * window // math.prod(eqn.params["lhs_dilation"])
        subs = [matmul_flops(j) for j in jaxprs_in_params(eqn.params)]
        if name == "scan":
            total += eqn.params["length"] * sum(subs)
        elif name == "cond":
            total += max(subs, default=0)
        else:
            total += sum(subs)
    return total


def layer_flops(exp):
    """Forward FLOPs of the network for one example, from its layers' shapes: nn.Conv 2 H' W' kh kw Cin Cout,
    nn.Dense 2 x (positions) x in x out, AttnBlock's two products 4 P^2 C (P = H W positions). The batch-of-1
    shapes come from flax's method interception of one forward pass (abstract: nothing is computed)."""
    total = [0]

    def count(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module, x = context.module, args[0] if args else None
        if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
            kernel = module.variables["params"]["kernel"]
            total[0] += 2 * math.prod(out.shape[:-1]) * math.prod(kernel.shape[:-1]) * kernel.shape[-1]
        elif context.method_name == "__call__" and isinstance(module, AttnBlock):
            _, h, w, c = x.shape
            total[0] += 4 * (h * w) ** 2 * c
        return out

    def forward(params):
        with nn.intercept_methods(count):
            return exp.apply(params, jnp.zeros((1,) + exp.info.shape), jnp.ones((1,)))

    params = jax.eval_shape(lambda: experiment.init_state(exp, 0).params)
    jax.eval_shape(forward, params)
    return total[0]


def flops_report(exp, state, one_batch, x, key, train_xla_flops):
    """The FLOPs of one train step and of one ELBO example: counted from the jaxprs of the trainer's step on
    one_batch [1, B, ...] and of the evaluation's one-draw ISM ELBO on x [B, ...], XLA's (train_xla_flops, given),
    and from the layers (the module docstring)."""
    b = exp.config.training.batch_size
    forward = layer_flops(exp)
    elbo_fn = experiment.make_elbo_fn(exp)
    return {
        "train_flops_per_step": matmul_flops(jax.make_jaxpr(experiment.make_train_step(exp))(state, one_batch)),
        "train_flops_per_step_xla": train_xla_flops,
        "train_flops_per_step_layers": 3 * forward * b,
        "elbo_flops_per_example": matmul_flops(jax.make_jaxpr(elbo_fn)(state.params, x, key)) / x.shape[0],
        "elbo_flops_per_example_layers": 2 * forward,
        "forward_flops_per_example_layers": forward,
    }


def utilisation(flops_per_sec, dtype, device_kind):
    """{"share_of_<peak>_peak": share} of the card's dense peaks (CARD_PEAKS: fp32 and TF32 for dtype float32,
    bf16 for bfloat16); {} for a device not in CARD_PEAKS (the CPU) or no FLOP/s."""
    peaks = CARD_PEAKS.get(device_kind, {})
    names = ("bf16",) if dtype == "bfloat16" else ("fp32", "tf32")
    return {f"share_of_{n}_peak": flops_per_sec / peaks[n] for n in names if n in peaks and flops_per_sec}


def flops_of(compiled):
    """FLOPs XLA's cost analysis counts in a compiled function (NaN when it gives none)."""
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float((ca or {}).get("flops", math.nan))


def peak_flops(repeats=10):
    """(best FLOP/s of an N x N fp32 jitted matmul over `repeats` timed calls, N)."""
    n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b).lower(a, a).compile()
    f(a, a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best, n


def param_count(state):
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(state.params)))


def max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prepare(name, steps_per_call=0, settings=()):
    """(exp, mesh, host batches [K, B, ...]) of a workload, in a process tuned as the scripts tune theirs."""
    config = workload_config(name, steps_per_call, settings)
    platform.setup(config.model.name)  # as the scripts do (under bench.py's tuning): before jax starts
    synthetic = WORKLOADS[name][2]
    exp = build_synthetic(config, *synthetic) if synthetic else experiment.build(config)
    return exp, distributed.make_mesh(), train_batches(exp, name, config.training.steps_per_call)


def compile_workload(exp, mesh, host):
    """The trainer's train call and the evaluation's ELBO, compiled for a fixed batch: a dict with do_train()
    (one call, state donated and carried), do_elbo() (one batch, on the current parameters), the compiled
    train call and the current state, the compiled ELBO with its (x, key), and both compile times."""
    batches = distributed.global_array(mesh, host, P(None, "data"))
    state = jax.device_put(experiment.init_state(exp, exp.config.seed), distributed.replicated(mesh))
    train, train_compile = evaluator.compile_ahead(experiment.make_train_step(exp), state, batches)
    x = distributed.global_array(mesh, host[0])
    key = jax.random.PRNGKey(1)
    elbo_fn = experiment.make_elbo_fn(exp)
    elbo, elbo_compile = evaluator.compile_ahead(elbo_fn, state.params, x, key)
    w = {
        "train": train,
        "state": state,
        "elbo": elbo,
        "elbo_args": (x, key),
        "train_compile_seconds": train_compile,
        "elbo_compile_seconds": elbo_compile,
    }

    def do_train():
        w["state"], losses = train(w["state"], batches)
        losses.block_until_ready()

    w["do_train"] = do_train
    w["do_elbo"] = lambda: elbo(w["state"].params, x, key).block_until_ready()
    return w


def measure_workload(name, seconds, steps_per_call=0, settings=(), flops_only=False):
    """The diffvar figures of one workload (see the module docstring); flops_only: the FLOP counts alone."""
    exp, mesh, host = prepare(name, steps_per_call, settings)
    config, synthetic = exp.config, WORKLOADS[name][2]
    k, b = config.training.steps_per_call, config.training.batch_size
    m = config.model
    out = {
        "workload": name,
        "config": f"configs/{WORKLOADS[name][0]}.py",
        "overrides": dict(WORKLOADS[name][1], **{"objective.name": "dsm"}),
        "settings": list(settings),
        "data": SYNTHETIC_NOTE.format(
            name=config.data.name, shape="x".join(map(str, synthetic[0])), levels=synthetic[1]
        )
        if synthetic
        else f"{config.data.name} training batches",
        "model": (
            f"mlp hidden={m.hidden} depth={m.depth} {m.activation} time={m.time_embedding}"
            if m.name == "mlp"
            else f"unet ch={m.ch} ch_mult={tuple(m.ch_mult)} attn={tuple(m.attn_resolutions)} dropout={m.dropout}"
        ),
        "dtype": m.dtype,
        "batch": b,
        "steps_per_call": k,
        "seconds": seconds,
    }
    one = distributed.global_array(mesh, host[:1], P(None, "data"))
    x, key = distributed.global_array(mesh, host[0]), jax.random.PRNGKey(1)
    if flops_only:
        state = jax.device_put(experiment.init_state(exp, config.seed), distributed.replicated(mesh))
        xla = flops_of(experiment.make_train_step(exp).lower(state, one).compile()) * mesh.size
        return {**out, "params": param_count(state), **flops_report(exp, state, one, x, key, xla), **runtime()}
    w = compile_workload(exp, mesh, host)
    flops = flops_report(exp, w["state"], one, x, key, flops_of(w["train"]) * mesh.size if k == 1 else None)
    out["params"] = param_count(w["state"])
    train_calls = rate(w["do_train"], seconds)
    elbo_calls = rate(w["do_elbo"], seconds / 2)
    peak, n = peak_flops()
    steps_per_sec = train_calls * k
    achieved = flops["train_flops_per_step"] * steps_per_sec
    return {
        **out,
        "train_steps_per_sec": steps_per_sec,
        "train_compile_seconds": w["train_compile_seconds"],
        "elbo_examples_per_sec": elbo_calls * b,
        "elbo_compile_seconds": w["elbo_compile_seconds"],
        **flops,
        "train_flops_per_sec": achieved,
        "elbo_flops_per_sec": flops["elbo_flops_per_example"] * elbo_calls * b,
        "peak_flops_per_sec": peak,
        "peak_matmul_size": n,
        "train_peak_fraction": achieved / peak,
        **utilisation(achieved, m.dtype, jax.devices()[0].device_kind),
        "max_rss_mb": max_rss_mb(),
        **runtime(),
    }


def measure_ode(workdir="", train_steps=200, max_examples=0, rtol=1e-5, atol=1e-5):
    """Digits test-set ODE bpd wall time, through scripts/evaluate.py's code (evaluator.split_batches,
    experiment.make_ode_fn, passes.ode_pass; the trace it picks for 'auto'): on the EMA parameters of the latest
    checkpoint in `workdir` when given, else on configs/digits.py's model trained `train_steps` steps here (its NFE,
    and so its time, is then lower than a fully trained model's: pass a trained workdir for the real figure)."""
    platform.setup("unet")  # the digits U-Net, as scripts/evaluate.py does: before jax starts
    mesh = distributed.make_mesh()
    if workdir:
        from diffvar import checkpoints

        exp, params, step, _ = checkpoints.restore_params(workdir, "latest", mesh)
        model = f"checkpoint {workdir} step {step} (EMA parameters)"
    else:
        config = config_files.load_file(os.path.join(ROOT, "configs", "digits.py"))
        exp = experiment.build(config)
        state = jax.device_put(experiment.init_state(exp, config.seed), distributed.replicated(mesh))
        it = data_lib.make_train_iter(config.data, config.training.batch_size, config.seed)
        step_fn = experiment.make_train_step(exp)
        for _ in range(train_steps):
            state, _ = step_fn(state, distributed.global_array(mesh, next(it)[None], P(None, "data")))
        params = state.params  # after a few hundred steps the EMA (decay 0.999) is still mostly the initialisation
        model = (
            f"configs/digits.py model, freshly initialised and trained {train_steps} steps here (raw, not "
            f"EMA, parameters)"
            if train_steps
            else "configs/digits.py model, freshly initialised"
        )
    e = exp.config.eval
    divergence = ode_lib.trace_estimator("auto", exp.dim)
    batch_size = evaluator.batch_size(e.batch_size, max_examples, len(jax.devices()), exp.info.size("test"))
    batches = evaluator.split_batches(exp, mesh, "test", batch_size, max_examples)
    key = evaluator.pass_key(exp.config.seed + 1, 0, "ode")
    fn = experiment.make_ode_fn(exp, ode_lib.OdeOptions(rtol, atol, divergence, e.ode_probe))
    compiled, compile_seconds = evaluator.compile_ahead(fn, params, batches[0][0], key)
    est = passes.ode_pass(compiled, params, key, batches)
    return {
        "model": model,
        "rtol": rtol,
        "atol": atol,
        "divergence": divergence,
        "batch": batch_size,
        "num_examples": est["num_examples"],
        "bpd": est["mean"],
        "bpd_stderr": est["stderr"],
        "nfe": est["nfe"],
        "nfe_max": est["nfe_max"],
        "seconds": est["seconds"],
        "compile_seconds": compile_seconds,
        "max_rss_mb": max_rss_mb(),
        **runtime(),
    }


def runtime():
    """The jax version and device; on an accelerator, the peak memory its allocator held for arrays (MB)."""
    d = jax.devices()[0]
    stats = d.memory_stats() or {}  # None on the CPU
    peak = stats.get("peak_bytes_in_use")
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": d.device_kind,
        "num_devices": len(jax.devices()),
        "device_peak_mb": peak / 2**20 if peak else None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="digits")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--steps_per_call", type=int, default=0, help="training.steps_per_call (0: the config's)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a config setting on top of the workload's (repeatable), e.g. sde.name=learned_vp",
    )
    p.add_argument("--flops_only", action="store_true", help="the FLOP counts alone (compiles, times nothing)")
    p.add_argument("--ode", action="store_true", help="the digits test-set ODE instead of a workload")
    p.add_argument("--ode_workdir", default="", help="a digits training workdir whose latest checkpoint to use")
    p.add_argument("--ode_train_steps", type=int, default=200, help="without --ode_workdir: steps trained first")
    p.add_argument("--ode_max_examples", type=int, default=0, help="only the first N test examples (0: all)")
    args = p.parse_args()
    if args.ode:
        out = measure_ode(args.ode_workdir, args.ode_train_steps, args.ode_max_examples)
    else:
        out = measure_workload(args.workload, args.seconds, args.steps_per_call, args.set, args.flops_only)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
