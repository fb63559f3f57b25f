"""MNIST 28x28 (256 levels, diffvar_mnist: TFDS mnist's examples and order) with the sdeflow-light / score_sde
U-Net settings (ch 32, ch_mult (1, 2, 2), attention at 16x16, dropout 0.1, batch 64).

Prepare first: python scripts/prepare_data.py --dataset=mnist [--source=FOLDER]

Published anchor: none recorded here. Neither score_sde, score_flow nor VDM report MNIST; Huang et al. (2021)
train MNIST with this setup but their MNIST bpd is not restated here (check their paper before quoting one).
What the number means here: uniform dequantization at t = 0, logit transform (a = 0.05), ELBO (ISM form),
test split of 10,000 (docs/likelihood.md). Compute: 100,000 steps at batch 64, about
1.5M parameters; an accelerator job of hours, not a CPU one.
"""

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
