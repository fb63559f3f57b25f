"""docs/performance.md's GPU table in one run (estimated 8 minutes on one H200): prints it and writes one JSON.

    python benchmarks/gpu_table.py --out=runs/gpu_table.json          # on a machine with one GPU
    python benchmarks/gpu_table.py --cpu_check --out=/tmp/t.json      # tiny settings on the CPU: does it run

Per workload (cifar: configs/cifar10.py's DDPM U-Net at batch 128; digits: configs/digits.py's at batch 64), four
rows, each a process of its own:
- diffvar fp32 and diffvar bf16: benchmarks/measure.py --set model.dtype=float32|bfloat16 --steps_per_call=K;
- the reference fp32 and the reference AMP bf16: benchmarks/torch_peer.py --device cuda --channels_last
  [--amp bf16] [--compile], cudnn.benchmark on (the settings a PyTorch user picks);
each with train steps/s, TFLOP/s (measure.py's counted FLOPs of the step: the same network on both sides), its
share of the card's dense peaks (measure.utilisation: fp32 rows against fp32 and TF32, bf16 rows against bf16),
ELBO examples/s and the allocator's peak memory. Then the bound at equal steps: scripts/train.py on configs/digits.py
for --train_steps steps in float32 and in bfloat16 (same seed, data order and evaluation keys; K steps per call),
each row its test bpd +- s.e. (uniform dequantization, 4 x 8 stratified ISM draws per example, 297 examples).

Estimated (not yet run on a GPU): 2 x 100 s for cifar's diffvar rows (compiles of 40 s and more), 2 x 60 s for
digits', 4 x 25 s for the reference's, 2 x 90 s for the bound: 8 to 10 minutes. Split it under a 10-minute limit
with --workloads=cifar --train_steps=0, then --workloads=digits.

Fails soft: a row that cannot run (no GPU for jax, no CUDA in this torch, no torch) says why in its place, and the
rest still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench import child, machine  # benchmarks/bench.py: one JSON line from a child process; the machine's words
from measure import utilisation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def say(message):
    print(f"gpu_table: {message}", file=sys.stderr, flush=True)


def torch_cuda():
    """None when torch can run on CUDA here, else why not (one line)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install -e '.[bench]')"
    return None if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA device"


def row(impl, precision, res, flops_per_step, device_kind, error=None):
    """One table row: the figures of one run (diffvar's measure.py or the peer's JSON), or why it did not run."""
    if error:
        return {"impl": impl, "precision": precision, "error": error}
    flops = flops_per_step * res["train_steps_per_sec"] if flops_per_step else None
    return {
        "impl": impl,
        "precision": precision,
        "train_steps_per_sec": res["train_steps_per_sec"],
        "train_tflops_per_sec": flops and flops / 1e12,
        **utilisation(flops, "bfloat16" if precision == "bf16" else "float32", device_kind),
        "elbo_examples_per_sec": res["elbo_examples_per_sec"],
        "peak_memory_mb": res.get("device_peak_mb"),
        "max_rss_mb": res.get("max_rss_mb"),
        "raw": res,
    }


def speed_rows(workload, args):
    """The four speed rows of one workload."""
    rows, flops, kind = [], None, None
    for dtype, precision in (("float32", "fp32"), ("bfloat16", "bf16")):
        say(f"{workload}: diffvar {precision}")
        res, err = child(
            "measure.py",
            f"--workload={workload}",
            f"--seconds={args.seconds}",
            f"--steps_per_call={args.steps_per_call}",
            f"--set=model.dtype={dtype}",
        )
        if res:
            flops = flops or res["train_flops_per_step"]
            kind = kind or res["device_kind"]
        rows.append(row("diffvar", precision, res, res and res["train_flops_per_step"], kind, err))
    why = None if args.cpu_check else torch_cuda()
    for amp, precision in (("none", "fp32"), ("bf16", "bf16")):
        say(f"{workload}: reference {precision}")
        if why:
            rows.append(row("reference", precision, None, None, None, f"skipped: {why}"))
            continue
        device = ["--device=cpu"] if args.cpu_check else ["--device=cuda", "--channels_last"]
        res, err = child(
            "torch_peer.py",
            "--workload",
            workload,
            "--seconds",
            args.seconds,
            f"--amp={amp}",
            *device,
            *(["--compile"] if args.peer_compile else []),
        )
        rows.append(row("reference", precision, res, flops, kind, err))
    return rows


def bound_rows(args):
    """configs/digits.py trained --train_steps steps in float32 and in bfloat16: test bpd +- s.e. of each."""
    rows, k = [], args.steps_per_call
    for dtype in ("float32", "bfloat16"):
        say(f"digits bound: training {args.train_steps} steps in {dtype}")
        workdir = tempfile.mkdtemp(prefix=f"gpu_table_digits_{dtype}_")
        cmd = [
            sys.executable,
            os.path.join(ROOT, "scripts", "train.py"),
            "--config=" + os.path.join(ROOT, "configs", "digits.py"),
            f"--workdir={workdir}",
            f"--config.model.dtype={dtype}",
            f"--config.training.num_steps={args.train_steps}",
            f"--config.training.steps_per_call={k}",
            f"--config.optim.warmup_steps={min(100, args.train_steps // 10)}",
            f"--config.training.log_every={k * max(1, 100 // k)}",
            f"--config.training.ckpt_every={args.train_steps}",
            "--config.eval.every=0",
            "--config.sampling.num=4",
            "--config.sampling.steps=10",
            *([f"--config.eval.final_repeats={args.final_repeats}"] if args.final_repeats else []),
        ]
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        metrics = os.path.join(workdir, "metrics.jsonl")
        last = [json.loads(ln) for ln in open(metrics)] if os.path.exists(metrics) else []
        last = [m for m in last if "test_bpd" in m]
        if res.returncode or not last:
            rows.append(
                {
                    "precision": dtype,
                    "error": f"scripts/train.py exited {res.returncode}: {res.stdout.strip().splitlines()[-1:]}",
                }
            )
            continue
        m = last[-1]
        rows.append(
            {
                "precision": dtype,
                "steps": m["step"],
                "test_bpd": m["test_bpd"],
                "test_bpd_stderr": m["test_bpd_stderr"],
                "workdir": workdir,
            }
        )
    return rows


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(out):
    """The Markdown rows of the speed table and the bound."""
    lines = [
        "| workload | run | train steps/s | TFLOP/s | share of peak | ELBO examples/s | peak memory GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, rows in out["speed"].items():
        for r in rows:
            name = f"{r['impl']} {r['precision']}"
            if "error" in r:
                lines.append(f"| {workload} | {name} | {r['error']} | | | | |")
                continue
            shares = ", ".join(f"{k[9:-5]} {100 * v:.1f} %" for k, v in r.items() if k.startswith("share_of_"))
            lines.append(
                f"| {workload} | {name} | {r['train_steps_per_sec']:.2f} | "
                f"{fmt(r['train_tflops_per_sec'], '.2f')} | {shares or '-'} | {r['elbo_examples_per_sec']:,.0f} | "
                f"{fmt(r['peak_memory_mb'] and r['peak_memory_mb'] / 1024, '.1f')} |"
            )
    for r in out["bound"]:
        lines.append(
            f"digits {r['precision']}: "
            + (
                r["error"]
                if "error" in r
                else f"{r['steps']} steps, test bpd {r['test_bpd']:.4f} +- {r['test_bpd_stderr']:.4f}"
            )
        )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gpu_table.json")
    p.add_argument("--workloads", default="cifar,digits", help="comma-separated, from measure.py's workloads")
    p.add_argument("--seconds", type=float, default=5.0, help="timed training per row (ELBO: half of it)")
    p.add_argument("--steps_per_call", type=int, default=10, help="diffvar's training.steps_per_call (lax.scan)")
    p.add_argument("--train_steps", type=int, default=2000, help="steps of each digits run of the bound (0: no bound)")
    p.add_argument("--final_repeats", type=int, default=0, help="the bound's eval.final_repeats (0: the config's)")
    p.add_argument("--peer_compile", action="store_true", help="torch.compile the reference (adds minutes)")
    p.add_argument(
        "--cpu_check",
        action="store_true",
        help="on the CPU with tiny settings (digits only, 1 s per "
        "row, 20 steps, 1 step per call: a check that the script runs)",
    )
    args = p.parse_args()
    if args.cpu_check:
        os.environ["JAX_PLATFORMS"] = "cpu"
        args.workloads, args.seconds, args.steps_per_call, args.train_steps, args.final_repeats = "digits", 1, 1, 20, 1
    out = {
        "machine": machine(),
        "args": vars(args),
        "speed": {w: speed_rows(w, args) for w in args.workloads.split(",") if w},
        "bound": bound_rows(args) if args.train_steps else [],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(table(out), flush=True)
    print(json.dumps({k: v for k, v in out.items() if k != "speed"} | {"out": args.out}), flush=True)


if __name__ == "__main__":
    main()
