"""dynamoe-replay as users run it: synth, run on every input form, CSV output,
and the exit codes and messages of bad input."""
import csv
import os
import pathlib
import subprocess
import sys

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
    assert rows[0] == "trace,policy,step_index,step,layer,predicted_seconds,imbalance_before,imbalance_after,copies"
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
    cases.append((("run", tmp_path), 1, "read error at byte 0"))  # a directory: the read fails
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
    assert "fitted on 44 steps (after 6 warm-up steps), checked on the 10 after them" in c.stdout
    assert "forward step time, held-out steps: median error" in c.stdout
    # The recorded trace replays too (2 ranks, 8 experts: re-homed to 8 ranks).
    assert replay("run", tmp_path / "run.rank1.dmtrace", "--world", 8).returncode == 0
    bad = replay("calibrate", trace)  # a synthetic trace has no phase timings
    assert bad.returncode == 1 and "record it with DYNAMOE_TRACE" in bad.stderr


def test_out_dir_files_agree_with_the_table_and_plot(tmp_path):
    path = tmp_path / "burst.dmtrace"
    assert replay("synth", "--out", path, "--steps", 60, "--layers", 2, "--experts", 8, "--world", 2, "--tokens", 64,
                  "--burst-every", 20).returncode == 0
    out = tmp_path / "out"
    r = replay("run", path, "--world", 4, "--out-dir", out)
    assert r.returncode == 0, r.stderr
    assert f"python3 -m dynamoe.replay plot {out}" in r.stdout
    summary = {row["policy"]: row for row in csv.DictReader(open(out / "summary.csv"))}
    steps = list(csv.DictReader(open(out / "steps.csv")))
    assert set(summary) == set(POLICIES) and len(steps) == 4 * 60 * 2
    for p, row in summary.items():
        mine = [float(s["predicted_seconds"]) for s in steps if s["policy"] == p]
        assert sum(mine) / len(mine) == pytest.approx(float(row["mean_seconds"]), rel=1e-6)
        copies = [int(s["copies"]) for s in steps if s["policy"] == p]
        assert sum(copies) / len(copies) == pytest.approx(float(row["copies_per_step"]), rel=1e-5)
        # The table printed the same numbers.
        line = next(l for l in r.stdout.splitlines() if l.startswith(p + " "))
        assert f"{float(row['mean_seconds']) * 1e3:.4f}" in line
    loads = list(csv.DictReader(open(out / "expert_load.csv")))
    assert len(loads) == 60 * 8
    per_step = {}
    for row in loads:
        per_step[row["step"]] = per_step.get(row["step"], 0) + int(row["tokens"])
    assert set(per_step.values()) == {2 * 2 * 64 * 2}  # layers x ranks x tokens x top-2: synth drops nothing

    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    plot = subprocess.run([sys.executable, "-m", "dynamoe.replay", "plot", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0, plot.stderr
    import matplotlib.image
    for name in ("step_time.png", "imbalance.png", "expert_load.png"):
        assert f"wrote {out / name}" in plot.stdout
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert image[..., :3].std() > 0.01  # something was drawn
    missing = subprocess.run([sys.executable, "-m", "dynamoe.replay", "plot", str(tmp_path / "nowhere")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "missing summary.csv" in missing.stderr


def frames(data):
    """Offsets of the version-2 frames of a trace (header first), docs/trace-format.md."""
    import struct
    pos, out = 12, []
    while pos < len(data):
        out.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 4)[0]
    return out


def test_a_damaged_middle_costs_only_its_records(tmp_path, trace):
    data = bytearray(trace.read_bytes())
    at = frames(data)
    data[at[11] + 5] ^= 0x08  # one flipped length bit of step 10
    data[at[31] + 40] ^= 0x01  # one flipped payload bit of step 30
    damaged = tmp_path / "damaged.dmtrace"
    damaged.write_bytes(bytes(data))
    r = replay("run", damaged, "--policies", "none")
    assert r.returncode == 0, r.stderr
    assert "38 steps" in r.stdout  # of 40
    assert "warning: damaged trace: lost 2 records in 2 damaged regions, skipped" in r.stderr, r.stderr
    assert "frame head checksum mismatch" in r.stderr and "checksum mismatch" in r.stderr


def test_numeric_flags_are_strict(trace, tmp_path):
    out = tmp_path / "s.dmtrace"
    cases = [
        (("run", trace, "--world", "1e30"), "--world expects an integer in [1, 4096], got '1e30'"),
        (("run", trace, "--world", "2.9"), "--world expects an integer"),
        (("run", trace, "--world", "0"), "--world expects an integer"),
        (("run", trace, "--world", " 4"), "--world expects an integer"),
        (("run", trace, "--interval", "0"), "--interval expects an integer in [1, "),
        (("run", trace, "--hysteresis", "nan"), "--hysteresis expects a finite number in [0, 1], got 'nan'"),
        (("run", trace, "--max-copied", "-1"), "--max-copied expects an integer"),
        (("run", trace, "--wrold", "4"), "unknown flag --wrold"),
        (("calibrate", trace, "--heldout", "1"), "--heldout expects a finite number in (0, 1)"),
        (("synth", "--out", out, "--zipf", "inf"), "--zipf expects a finite number"),
        (("synth", "--out", out, "--steps", "10x"), "--steps expects an integer"),
        (("synth", "--out", out, "--seed", "-1"), "--seed expects an integer"),
        (("synth", "--out", out, "--world", "512", "--experts", "65536"), "world x experts must be at most 2^24"),
    ]
    for args, message in cases:
        r = replay(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert message in r.stderr, (args, r.stderr)
    assert not out.exists()


def test_synth_with_a_steep_zipf(tmp_path):
    path = tmp_path / "steep.dmtrace"
    r = replay("synth", "--out", path, "--zipf", 2000, "--experts", 8, "--top-k", 4, "--steps", 5, "--tokens", 64)
    assert r.returncode == 0, r.stderr
    assert replay("run", path, "--policies", "none").returncode == 0


def test_hostile_inputs_are_rejected_with_a_reason(tmp_path):
    head = "step,layer,rank,expert,count\n"
    cases = {
        "wide.csv": (head + "0,a,1048575,1048575,1\n", "at most 2^24 cells per matrix"),
        "overflow.csv": (head + "0,a,0,0,9223372036854775807\n0,a,1,0,9223372036854775807\n", "CSV line 2"),
        "sum.csv": (head + "0,a,0,0,1099511627776\n0,a,1,0,1\n", "sum to at most 2^40"),
        "deep.jsonl": ('{"step": 0, "layer": "a", "experts": ' + "[" * 1000000 + "]" * 1000000 + "}\n",
                       "JSONL line 1: nested deeper than 8 levels"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        r = replay("run", path)
        assert r.returncode == 1, (name, r.returncode, r.stderr[:500])
        assert message in r.stderr, (name, r.stderr[:500])
        assert len(r.stderr) < 1000, name


def test_a_stream_that_is_no_trace_is_rejected_at_its_first_bytes(tmp_path):
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    proc = subprocess.Popen([str(TOOL), "run", str(fifo)], stderr=subprocess.PIPE, text=True)
    with open(fifo, "wb") as w:  # stays open: the tool never sees the end of the stream
        w.write(b"PK\x03\x04" + b"\0" * 4092)
        w.flush()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("dynamoe-replay waited for the whole stream before checking it")
    assert proc.returncode == 1 and "not a trace" in err, err


def test_a_trace_streams_from_a_pipe(tmp_path, trace):
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    proc = subprocess.Popen([str(TOOL), "run", str(fifo), "--policies", "none"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with open(fifo, "wb") as w:
        w.write(trace.read_bytes())
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "40 steps" in out
