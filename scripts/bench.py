"""Speed of diffvar's training step and ELBO evaluation on the PyTorch peer's workloads; prints one JSON line.

    python scripts/bench.py --workload=digits --seconds=20 [--peer=/path/to/python-with-torch]

Workloads are those of the PyTorch peer script given by --peer_script (same model sizes and batch sizes): the train step is
the eps-loss DSM step with Adam, the evaluation is the one-probe ISM ELBO (Rademacher, one JVP). With --peer,
the peer runs right after diffvar on the same machine and the ratios diffvar / peer are reported.
"""
import json
import subprocess
import time

from absl import app, flags

flags.DEFINE_enum("workload", "digits", ["toy2d", "digits", "mnist", "cifar"], "Peer workload to run.")
flags.DEFINE_float("seconds", 20.0, "Seconds of timing per measurement.")
flags.DEFINE_string("peer", "", "Python interpreter with torch installed: also run the PyTorch peer, report ratios.")
flags.DEFINE_string("peer_script", "", "Path of the PyTorch peer script (torch_peer.py), needed with --peer.")
FLAGS = flags.FLAGS

WORKLOADS = {  # data name, model overrides, batch
    "toy2d": ("gmm2d", dict(name="mlp", hidden=128, depth=3, activation="softplus", time_embedding="concat"), 512),
    "digits": ("digits", dict(name="unet", ch=32, ch_mult=(1, 2), attn_resolutions=(4,)), 64),
    "mnist": ("mnist", dict(name="unet", ch=32, ch_mult=(1, 2, 2), attn_resolutions=(16,)), 64),
    "cifar": ("cifar10", dict(name="unet", ch=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,)), 128),
}
SHAPES = {"gmm2d": (2,), "digits": (8, 8, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def rate(fn, seconds):
    fn()
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def bench_diffvar(workload, seconds):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from diffvar import likelihood
    from diffvar.models import make_model
    from diffvar.models.param import make_score_fn
    from diffvar.objectives import get_objective
    from diffvar.sde import VPSDE
    from diffvar.experiment import make_optimizer
    import ml_collections

    data, model_cfg, batch = WORKLOADS[workload]
    shape = SHAPES[data]
    model = make_model(ml_collections.ConfigDict(model_cfg), shape)
    sde = VPSDE()
    x = jax.random.normal(jax.random.PRNGKey(0), (batch,) + shape)
    params = model.init(jax.random.PRNGKey(1), x, jnp.ones((batch,)))["params"]
    score = make_score_fn(lambda p, y, t: model.apply({"params": p}, y, t), sde, "drift")
    loss_fn = get_objective("dsm", sde)
    tx, _ = make_optimizer(ml_collections.ConfigDict(dict(name="adam", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8,
                                                          weight_decay=0.0, warmup_steps=0, schedule="constant",
                                                          grad_clip=0.0)), 1)
    state = (params, tx.init(params), jax.random.PRNGKey(2))

    @jax.jit
    def train_step(state):
        p, o, k = state
        k, sub = jax.random.split(k)
        grads = jax.grad(lambda p: jnp.mean(loss_fn(lambda y, t: score(p, y, t), x, sub)))(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, k

    @jax.jit
    def eval_step(p, k):
        return jnp.sum(likelihood.elbo(lambda y, t: score(p, y, t), sde, x, k))

    holder = {"s": state}

    def do_train():
        holder["s"] = train_step(holder["s"])
        jax.block_until_ready(holder["s"][2])

    def do_eval():
        eval_step(params, jax.random.PRNGKey(3)).block_until_ready()

    return {
        "impl": "diffvar-jax", "jax": jax.__version__, "backend": jax.default_backend(),
        "workload": workload, "batch": batch,
        "params": int(sum(np.prod(a.shape) for a in jax.tree.leaves(params))),
        "train_steps_per_sec": rate(do_train, seconds),
        "elbo_examples_per_sec": batch * rate(do_eval, seconds / 2),
    }


def main(argv):
    del argv
    out = {"diffvar": bench_diffvar(FLAGS.workload, FLAGS.seconds)}
    if FLAGS.peer:
        res = subprocess.run([FLAGS.peer, FLAGS.peer_script, "--workload", FLAGS.workload,
                              "--seconds", str(FLAGS.seconds)], capture_output=True, text=True, check=True)
        peer = json.loads(res.stdout.strip().splitlines()[-1])
        out["peer"] = peer
        out["train_speed_ratio"] = out["diffvar"]["train_steps_per_sec"] / peer["train_steps_per_sec"]
        out["elbo_speed_ratio"] = out["diffvar"]["elbo_examples_per_sec"] / peer["elbo_examples_per_sec"]
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
