"""CIFAR-10 32x32x3 (256 levels, diffvar_cifar10: TFDS cifar10's examples and order), score_sde's DDPM (VP)
settings: U-Net ch 128, ch_mult (1, 2, 2, 2), 2 blocks per level, attention at 16x16, dropout 0.1 (35.7M
parameters), random flips, batch 128, Adam 2e-4 with 5,000 warm-up steps, gradient clipping 1, EMA 0.9999,
1.3M steps (score_sde's training.n_iters = 1300001). Accelerator only.

Prepare first: python scripts/prepare_data.py --dataset=cifar10 [--source=cifar-10-binary.tar.gz]

Published anchors (test set, bits/dim), and the convention each is under:
- 2.99: score_sde (Song et al., ICLR 2021, Table 2), DDPM++ cont. (deep, sub-VP), a larger network than this
  one, probability-flow ODE with uniform dequantization: the convention diffvar's ODE evaluation uses. For
  this DDPM-size network the same table lists higher values. Compute: 1.3M steps at batch 128.
- 2.83: score_flow (Song et al., NeurIPS 2021), likelihood weighting + importance sampling, variational
  dequantization (a flow trained after the model): not directly comparable to a uniform-dequantization bpd.
- 2.65: VDM (Kingma et al., NeurIPS 2021), no augmentation, its discrete decoder: another convention.
See docs/likelihood.md: a bpd is comparable only under the same convention.
"""

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
    c.training.num_steps = 1300000
    c.training.ema_decay = 0.9999
    c.training.steps_per_call = 10  # one lax.scan of 10 steps per call: dispatch amortised on accelerators
    # (CIFAR-10 on one H200: 30.3 vs 24.5 steps/s, docs/performance.md)
    c.training.ckpt_every = 10000
    c.eval.every = 25000
    c.eval.batch_size = 500
    c.sampling.every = 50000
    return c
