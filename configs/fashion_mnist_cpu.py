"""Fashion-MNIST on a CPU in about an hour: configs/fashion_mnist.py's U-Net (ch 32, ch_mult (1, 2, 2), 1.5M
parameters, batch 64) for 50 minutes of training or 2,000 steps, whichever comes first, at a higher learning rate
with a cosine decay over the 2,000 steps, then one evaluation on all 10,000 test images (uniform dequantization at
t = 0, logit transform, ISM-form ELBO, one draw per example: the examples' spread dominates the standard error).

    python scripts/prepare_data.py --dataset=fashion_mnist     # Debian: apt-get install dataset-fashion-mnist
    python scripts/train.py --config=configs/fashion_mnist_cpu.py --workdir=runs/fashion_mnist_cpu

configs/fashion_mnist.py is the accelerator run (100,000 steps) of the same model.
"""

import os
import runpy


def get_config():
    c = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist.py"))["get_config"]()
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.schedule = "cosine"  # decays to 0 at training.num_steps
    c.training.num_steps = 2000  # the cosine's length
    c.training.max_minutes = 50.0  # a CPU stops here first (2 cores: about 0.5 steps/s)
    c.training.ckpt_every = 500
    c.training.log_every = 50
    c.eval.every = 0  # only at the end: 10,000 test images
    c.eval.draws = 1
    c.eval.batch_size = 500
    c.sampling.every = 0
    c.sampling.steps = 500
    return c
