"""Fashion-MNIST 28x28 (256 levels, diffvar_fashion_mnist: TFDS fashion_mnist's examples and order), with
configs/mnist.py's U-Net and schedule (the same image size and level count).

Prepare first: python scripts/prepare_data.py --dataset=fashion_mnist [--source=FOLDER] (on Debian, after
`apt-get install dataset-fashion-mnist`, without --source). configs/fashion_mnist_cpu.py: an hour on a CPU.

Published anchor: none recorded here; the diffusion likelihood papers diffvar compares with (score_sde,
score_flow, VDM, i-DODE) do not report Fashion-MNIST. The number this run reports: uniform dequantization at
t = 0, logit transform, ELBO (ISM form) on the 10,000 test images. Compute: 100,000 steps at batch 64
(about 1.5M parameters), hours on one accelerator.
"""

import os
import runpy


def get_config():
    c = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist.py"))["get_config"]()
    c.data.name = "fashion_mnist"
    return c
