"""MNIST 28x28 (256 levels) with the sdeflow-light / score_sde settings. Needs the TFDS data prepared offline."""
from diffvar.config import defaults


def get_config():
    c = defaults()
    c.data.name = "mnist"
    c.model.ch = 32
    c.model.ch_mult = (1, 2, 2)
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.1
    c.training.batch_size = 64
    c.training.num_steps = 100000
    c.training.ckpt_every = 5000
    c.eval.every = 5000
    c.eval.batch_size = 500
    c.sampling.every = 10000
    return c
