"""Train a diffusion model as a likelihood model (the installed package's diffvar-train).

    python scripts/train.py --config=configs/digits.py --workdir=runs/digits [--config.optim.lr=1e-3 ...]

Re-running on the same workdir resumes from its latest checkpoint. SIGTERM saves a checkpoint and exits 0.
A bad config value or missing data: one `error: ...` line, exit status 1, nothing written.
Multi-host: start one process per host with --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""

from diffvar.commands import train

if __name__ == "__main__":
    train.start()
