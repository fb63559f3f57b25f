"""Defaults shared by every experiment; each configs/<name>.py starts from get_base() and overrides.

Every value is documented where it is defined. Override any of them on the command line:
    python scripts/train.py --config=configs/digits.py --workdir=runs/x --config.optim.lr=1e-3
"""
import ml_collections


def get_base():
    c = ml_collections.ConfigDict()
    c.seed = 0                        # seeds init, data order, noise; a run is a pure function of config + seed

    c.data = d = ml_collections.ConfigDict()
    d.name = "digits"                 # digits | mnist | cifar10 | gmm2d | swissroll | moons | checkerboard
    d.data_dir = ""                   # TFDS data_dir; "" = $DIFFVAR_DATA_DIR or ~/tensorflow_datasets
    d.random_flip = False             # random horizontal flips of training images
    d.transform = "logit"             # images: logit (y = logit(a + (1-2a) z)) | scale (y = 2z - 1)
    d.logit_alpha = 0.05              # a in the logit transform (sdeflow-light: 0.05)

    c.sde = s = ml_collections.ConfigDict()
    s.name = "vp"                     # vp | subvp | ve
    s.beta_min = 0.1                  # vp/subvp: beta(0)
    s.beta_max = 20.0                 # vp/subvp: beta(T)
    s.sigma_min = 0.01                # ve: S(0)
    s.sigma_max = 50.0                # ve: S(T), also the prior's std
    s.T = 1.0                         # time horizon

    c.model = m = ml_collections.ConfigDict()
    m.name = "unet"                   # unet | mlp
    m.parameterization = "drift"      # network outputs: drift (a = g * score, the paper) | score | eps
    m.ch = 32                         # unet: base channels
    m.ch_mult = (1, 2)                # unet: channel multiplier per resolution
    m.num_res_blocks = 2              # unet: residual blocks per resolution
    m.attn_resolutions = (4,)         # unet: resolutions with self-attention
    m.dropout = 0.0                   # unet: dropout rate inside residual blocks
    m.hidden = 128                    # mlp: width
    m.depth = 3                       # mlp: hidden layers
    m.activation = "softplus"         # mlp: softplus | silu | relu | tanh
    m.time_embedding = "concat"       # mlp: concat (raw t) | sinusoidal
    m.time_scale = 1000.0             # t is embedded as t * time_scale

    c.objective = o = ml_collections.ConfigDict()
    o.name = "dsm_is"                 # dsm (eps-loss) | dsm_is (ELBO, importance time) | dsm_lw | elbo | ssm
    o.t_eps = 1e-3                    # training times are drawn from [t_eps, T] (elbo: [0, T])
    o.probe = "rademacher"            # Hutchinson probe for elbo / ssm: rademacher | gaussian

    c.optim = p = ml_collections.ConfigDict()
    p.name = "adam"                   # adam | adamw
    p.lr = 2e-4                       # peak learning rate
    p.b1 = 0.9
    p.b2 = 0.999
    p.eps = 1e-8
    p.weight_decay = 0.0              # adamw only
    p.warmup_steps = 0                # linear warm-up from 0 to lr
    p.schedule = "constant"           # constant | cosine (decay to 0 at training.num_steps)
    p.grad_clip = 1.0                 # global-norm clipping; 0 disables

    c.training = t = ml_collections.ConfigDict()
    t.batch_size = 64                 # global batch, split over all devices of all processes
    t.num_steps = 10000               # optimizer steps
    t.max_minutes = 0.0               # stop (and checkpoint) after this wall time; 0 = no limit
    t.steps_per_call = 1              # optimizer steps per compiled call (lax.scan); >1 amortizes dispatch on
                                      # accelerators. Keep 1 for U-Nets on CPU: XLA:CPU runs convolution
                                      # gradients inside loops ~10x slower (measured, jax 0.10.2)
    t.ema_decay = 0.999               # EMA of parameters, used for eval and samples; 0 disables
    t.log_every = 100                 # steps between metrics.jsonl lines / progress lines
    t.ckpt_every = 1000               # steps between checkpoints (also at the end and on SIGTERM)
    t.keep = 3                        # latest checkpoints kept (the best by test metric is kept too)

    c.eval = e = ml_collections.ConfigDict()
    e.every = 1000                    # steps between evaluations (also at the end); 0 = only at the end
    e.split = "test"                  # split evaluated
    e.batch_size = 256                # examples per evaluation batch (global)
    e.repeats = 1                     # ELBO draws per example (time, noise, probe); more = smaller s.e.
    e.final_repeats = 0               # draws per example at the last evaluation; 0 = eval.repeats
    e.form = "ism"                    # ism | dsm
    e.time_sampling = "uniform"       # uniform | importance
    e.probe = "rademacher"            # rademacher | gaussian
    e.divergence = "hutchinson"       # hutchinson | exact
    e.max_examples = 0                # evaluate only the first N examples while training; 0 = all

    c.sampling = sm = ml_collections.ConfigDict()
    sm.every = 0                      # steps between sample grids; 0 = only at the end
    sm.num = 64                       # samples per grid
    sm.steps = 500                    # Euler-Maruyama steps
    sm.lam = 0.0                      # 0 = reverse SDE ... 1 = probability-flow ODE
    return c
