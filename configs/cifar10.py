"""CIFAR-10 32x32x3 (256 levels), DDPM U-Net ch 128 (35.7M params), score_sde settings. Accelerator only."""
from diffvar.config import defaults


def get_config():
    c = defaults()
    c.data.name = "cifar10"
    c.data.random_flip = True
    c.model.ch = 128
    c.model.ch_mult = (1, 2, 2, 2)
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.1
    c.optim.warmup_steps = 5000
    c.training.batch_size = 128
    c.training.num_steps = 800000
    c.training.ema_decay = 0.9999
    c.training.ckpt_every = 10000
    c.eval.every = 25000
    c.eval.batch_size = 500
    c.sampling.every = 50000
    return c
