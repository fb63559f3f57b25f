"""8-component 2-D Gaussian mixture with an exact log density: the ELBO's gap to it is reported in nats."""

from diffvar.config import defaults


def get_config():
    c = defaults()
    c.data.name = "gmm2d"
    c.model.name = "mlp"
    c.model.hidden = 128
    c.model.depth = 3
    c.model.activation = "softplus"
    c.model.time_embedding = "sinusoidal"
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 200
    c.training.batch_size = 512
    c.training.num_steps = 20000
    c.training.steps_per_call = 50
    c.training.ckpt_every = 2000
    c.training.log_every = 500
    c.eval.every = 5000
    c.eval.batch_size = 8192
    c.eval.repeats = 12  # passes of eval.draws = 4 stratified draws: 48 draws per example
    c.sampling.num = 2000
    return c


def get_hyper(h, name=None):
    """Sweeps for scripts/sweep.py (--sweep=NAME picks one):
    default: the two unbiased ELBO objectives (importance-sampled and likelihood-weighted DSM) x seeds 0, 1;
    "lr": peak learning rate 3e-4, 1e-3, 3e-3 with the default objective.
    """
    return h.named(
        name,
        {
            None: h.product([h.sweep("config.objective.name", ["dsm_is", "dsm_lw"]), h.sweep("config.seed", [0, 1])]),
            "lr": h.sweep("config.optim.lr", [3e-4, 1e-3, 3e-3]),
        },
    )
