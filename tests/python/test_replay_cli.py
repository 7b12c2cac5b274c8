"""dynamoe-replay as users run it: synth, run on every input form, CSV output,
and the exit codes and messages of bad input."""
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
