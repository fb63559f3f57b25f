"""Downsampled ImageNet 32x32 (van den Oord et al. 2016; diffvar_downsampled_imagenet/32x32, 1,281,149 train,
evaluated on the 49,999 validation images), score_flow's VP "DDPM++ deep" size in diffvar's DDPM U-Net:
ch 128, ch_mult (1, 2, 2, 2), 8 blocks per level, attention at 16x16, no dropout, no flips, batch 128, Adam 2e-4
with 5,000 warm-up steps, gradient clipping 1, EMA 0.9999, 950,000 steps (score_flow's
configs/vp/imagenet32_ddpmpp_deep_continuous.py: training.n_iters = 950001). Accelerator only.

Prepare first (the image-net.org URLs are dead; bring train_32x32.tar and valid_32x32.tar):
    python scripts/prepare_data.py --dataset=imagenet32 --source=FOLDER

Published anchors (bits/dim on this version of the data; the 2017 imagenet_resized gives lower, not
comparable, numbers):
- 3.76: score_flow (Song et al., NeurIPS 2021), likelihood weighting + importance sampling, variational
  dequantization. Compute: 950k steps at batch 128.
- 3.72: VDM (Kingma et al., NeurIPS 2021), its discrete decoder; VDM's released configs/imagenet32.py trains a
  32-block, 256-channel network without downsampling, AdamW 2e-4 (b2 0.99, weight decay 0.01), batch 128,
  10M steps. (Its learned schedule and Fourier features are not in diffvar.)
diffvar reports uniform dequantization (ELBO or ODE): expect a number above both (docs/likelihood.md).
"""

from diffvar.config import defaults


def get_config():
    c = defaults()
    c.data.name = "imagenet32"
    c.model.ch = 128
    c.model.ch_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 8
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.0
    c.optim.warmup_steps = 5000
    c.training.batch_size = 128
    c.training.num_steps = 950000
    c.training.ema_decay = 0.9999
    c.training.steps_per_call = 10  # one lax.scan of 10 steps per call: dispatch amortised on accelerators
    # (CIFAR-10 on one H200: 30.3 vs 24.5 steps/s, docs/performance.md)
    c.training.ckpt_every = 10000
    c.eval.every = 50000
    c.eval.batch_size = 500
    c.eval.max_examples = 10000  # periodic evaluations on 10,000 validation images; evaluate.py does all
    c.sampling.every = 100000
    return c
