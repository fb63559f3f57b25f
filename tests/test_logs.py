"""What a run leaves behind and how it is read back (diffvar/logs.py): metrics.jsonl and its test metric."""

import subprocess
import sys

from diffvar import logs


def test_metrics_jsonl_is_read_past_broken_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "loss": 0.5}\n\nnot json\n[1, 2]\n{"step": 20, "test_bpd": 1.9}\n{"step": 3')
    assert logs.read_metrics(str(path)) == [{"step": 10, "loss": 0.5}, {"step": 20, "test_bpd": 1.9}]


def test_the_test_metric_of_a_record():
    assert logs.metric_key("bpd") == "test_bpd" and [logs.metric_key(u) for u in logs.UNITS] == [
        "test_bpd",
        "test_nats",
    ]
    assert logs.metric_of({"step": 5, "test_bpd": 1.9, "test_bpd_stderr": 0.01}) == ("bpd", 1.9, 0.01)
    assert logs.metric_of({"test_nats": "2.5"}) == ("nats", 2.5, None)
    for record in ({"loss": 1.0}, {"test_bpd": float("nan")}, {"test_nats": True}, {"test_bpd": "x"}):
        assert logs.metric_of(record) is None, record


def test_reading_needs_no_jax():
    """The sweep runner and its Slurm jobs read metrics and trial state without starting jax."""
    code = "import sys, diffvar.logs, diffvar.sweep; assert 'jax' not in sys.modules, 'jax imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
