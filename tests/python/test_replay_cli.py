"""dynamoe-replay as users run it: synth, run on every input form, CSV output,
and the exit codes and messages of bad input."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOL = ROOT / "build" / "default" / "tools" / "dynamoe-replay"
pytestmark = pytest.mark.skipif(not TOOL.exists(), reason="dynamoe-replay is not built")
POLICIES = ("none", "fastermoe", "adaptive", "eplb")


def replay(*args):
    return subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "synth.dmtrace"
    r = replay("synth", "--out", path, "--steps", 40, "--experts", 16, "--world", 4, "--tokens", 128, "--seed", 3)
    assert r.returncode == 0, r.stderr
    return path


def test_run_compares_every_policy_and_writes_csv(tmp_path, trace):
    csv = tmp_path / "out.csv"
    r = replay("run", trace, "--world", 16, "--preset", "h100-nvlink-ib", "--csv", csv)
    assert r.returncode == 0, r.stderr
    assert "recorded on 4 ranks, replayed on 16" in r.stdout
    for p in POLICIES:
        assert any(line.startswith(p) for line in r.stdout.splitlines()), r.stdout
    rows = csv.read_text().splitlines()
    assert rows[0] == "trace,policy,step_index,predicted_seconds"
    assert len(rows) == 1 + 4 * 40
    assert replay("run", trace, "--world", 16, "--preset", "h100-nvlink-ib").stdout == r.stdout  # deterministic


def test_every_input_form(tmp_path, trace):
    csv = tmp_path / "counts.csv"
    assert replay("synth", "--out", csv, "--steps", 5, "--experts", 8, "--world", 2).returncode == 0
    jsonl = tmp_path / "routing.jsonl"  # per-token routing without a rank field
    jsonl.write_text("".join(f'{{"step": {s}, "layer": "moe0", "experts": [{s % 8}, {(s + 3) % 8}]}}\n'
                             for s in range(20)))
    for path in (trace, csv, jsonl):
        r = replay("run", path)
        assert r.returncode == 0, (path, r.stderr)
        assert "none" in r.stdout


def test_bad_input_is_named_with_an_exit_code(tmp_path, trace):
    cases = [
        (("run", tmp_path / "missing.dmtrace"), 1, "cannot read trace"),
        (("run", trace, "--policies", "none,bogus"), 2, "bogus"),
        (("run", trace, "--preset", "tpu-pod"), 2, "unknown cluster preset 'tpu-pod'"),
        (("run", trace, "--world", 3), 1, "16 experts do not divide over 3 ranks"),
        (("run",), 2, "no trace given"),
        (("frobnicate",), 2, "usage"),
    ]
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 not a trace")
    cases.append((("run", junk), 1, "not a trace"))
    for args, code, message in cases:
        r = replay(*args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert message in r.stderr, (args, r.stderr)


def test_truncated_trace_replays_what_parsed(tmp_path, trace):
    data = trace.read_bytes()
    cut = tmp_path / "cut.dmtrace"
    cut.write_bytes(data[:-7])  # a torn last record
    r = replay("run", cut, "--policies", "none")
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "cut short" in r.stderr
    assert "39 steps" in r.stdout


def test_calibrate_on_a_trace_the_demo_recorded(tmp_path, trace):
    demo = ROOT / "build" / "default" / "tools" / "dynamoe-demo"
    env = dict(os.environ, DYNAMOE_TRACE=str(tmp_path / "run"), DYNAMOE_LOG_LEVEL="warning")
    r = subprocess.run([str(demo), "--ranks", "2", "--steps", "60", "--log-every", "60"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    c = replay("calibrate", tmp_path / "run.rank0.dmtrace")
    assert c.returncode == 0, c.stderr
    assert "fitted on 48 steps, checked on the 12 after them" in c.stdout
    assert "forward step time, held-out steps: median error" in c.stdout
    # The recorded trace replays too (2 ranks, 8 experts: re-homed to 8 ranks).
    assert replay("run", tmp_path / "run.rank1.dmtrace", "--world", 8).returncode == 0
    bad = replay("calibrate", trace)  # a synthetic trace has no phase timings
    assert bad.returncode == 1 and "record it with DYNAMOE_TRACE" in bad.stderr
