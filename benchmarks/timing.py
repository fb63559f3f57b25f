"""The one timing loop of both sides of benchmarks/bench.py: plain Python (no jax, no torch), so that the
PyTorch peer (torch_peer.py) and diffvar's side (measure.py) time the same way."""

import time


def rate(fn, seconds):
    """Calls per second of fn() over `seconds` of wall time, after two warm-up calls."""
    fn()
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)
