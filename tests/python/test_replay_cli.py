"""dynamoe-replay as users run it: synth, run on every input form, CSV output,
and the exit codes and messages of bad input."""
import csv
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOL = ROOT / "build" / "default" / "tools" / "dynamoe-replay"
pytestmark = pytest.mark.skipif(not TOOL.exists(), reason="dynamoe-replay is not built")
POLICIES = ("none", "fastermoe", "adaptive", "eplb", "balanced")  # the default list: the policies and the bound


def replay(*args):
    return subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "synth.dmtrace"
    r = replay("synth", "--out", path, "--steps", 40, "--experts", 16, "--world", 4, "--tokens", 128, "--seed", 3)
    assert r.returncode == 0, r.stderr
    return path


def read_counts_csv(path):
    """{(step, layer): {(rank, expert): count}} from a "step,layer,rank,expert,count" file, parsed here."""
    out = {}
    for row in csv.DictReader(open(path)):
        out.setdefault((int(row["step"]), row["layer"]), {})[int(row["rank"]), int(row["expert"])] = int(row["count"])
    return out


def expert_loads(cells, experts):
    return [sum(c for (_, e), c in cells.items() if e == x) for x in range(experts)]


def test_run_compares_every_policy_and_writes_csv(tmp_path, trace):
    out = tmp_path / "out.csv"
    r = replay("run", trace, "--world", 16, "--preset", "h100-nvlink-ib", "--csv", out)
    assert r.returncode == 0, r.stderr
    assert "recorded on 4 ranks, replayed on 16" in r.stdout
    for p in POLICIES:
        assert any(line.startswith(p) for line in r.stdout.splitlines()), r.stdout
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["trace", "policy", "step_index", "step", "layer", "predicted_seconds", "imbalance_before",
                             "imbalance_after", "copies"]
    assert len(rows) == len(POLICIES) * 40
    # The same synthetic routing as counts (synth is deterministic in its options), read here: the
    # imbalance before placement is max/mean of the expert loads (re-homing to 16 ranks copies every
    # rank's counts 4 times, which leaves the ratio alone).
    counts = tmp_path / "same.csv"
    assert replay("synth", "--out", counts, "--steps", 40, "--experts", 16, "--world", 4, "--tokens", 128,
                  "--seed", 3).returncode == 0
    fed = read_counts_csv(counts)
    assert len(fed) == 40
    for row in rows:
        loads = expert_loads(fed[int(row["step"]), row["layer"]], 16)
        # %.6g in the file: 6 significant digits.
        assert float(row["imbalance_before"]) == pytest.approx(max(loads) / (sum(loads) / 16), rel=1e-5), row
        if row["policy"] in ("none", "balanced"):  # plain expert parallelism and the bound copy nothing
            assert int(row["copies"]) == 0
    assert replay("run", trace, "--world", 16, "--preset", "h100-nvlink-ib").stdout == r.stdout  # deterministic


def test_none_replays_fed_counts_as_the_cost_model_documents(tmp_path):
    """Counts written here go in as CSV; the reported loads, imbalances, bytes and predicted times
    are computed here from those counts with the terms placement/cost_model.h documents."""
    import random
    rng = random.Random(7)
    world, experts, steps = 2, 4, 6
    fed = {s: {(r, e): rng.randint(0, 20) for r in range(world) for e in range(experts)} for s in range(steps)}
    fed[5] = {(r, e): (9 if (r, e) == (0, 1) else 0) for r in range(world) for e in range(experts)}  # stays home
    path = tmp_path / "fed.csv"
    path.write_text("step,layer,rank,expert,count\n" + "".join(
        f"{s},moe0,{r},{e},{c}\n" for s, cells in fed.items() for (r, e), c in cells.items()))
    cluster = tmp_path / "cluster.txt"
    flops, bw, lat = 2e12, 1e9, 1e-5
    cluster.write_text(f"flops = {flops}\nintra_node_bw = {bw}\nintra_node_latency_s = {lat}\n")
    out = tmp_path / "out"
    r = replay("run", path, "--policies", "none", "--cluster", cluster, "--out-dir", out)
    assert r.returncode == 0, r.stderr
    assert f"{steps} steps of 1 layer, recorded on {world} ranks, replayed on {world}" in r.stdout
    # An imported trace has no layer sizes: ReplayOptions::default_layer, d_model 1024, d_hidden
    # 4096, two matrices, bf16.
    row_bytes, flop_per_row = 1024 * 2, 2 * 2 * 1024 * 4096
    home = lambda e: e // (experts // world)
    want_seconds, want_bytes = [], []
    for s in range(steps):
        link = {}
        for (src, e), c in fed[s].items():
            link[src, home(e)] = link.get((src, home(e)), 0) + c
        send = [sum(lat + n * row_bytes / bw for (a, b), n in link.items() if a == q and a != b and n) for q in range(world)]
        recv = [sum(lat + n * row_bytes / bw for (a, b), n in link.items() if b == q and a != b and n) for q in range(world)]
        exchange = max(max(send[q], recv[q]) for q in range(world))
        rows = [sum(n for (_, b), n in link.items() if b == q) for q in range(world)]
        # Training: four exchanges; backward is two GEMMs per forward GEMM (3x).
        want_seconds.append(4 * exchange + 3 * max(rows) * flop_per_row / flops)
        want_bytes.append(4 * row_bytes * sum(n for (a, b), n in link.items() if a != b))
        loads = expert_loads(fed[s], experts)
        got = [row for row in csv.DictReader(open(out / "steps.csv")) if int(row["step"]) == s]
        assert len(got) == 1
        assert float(got[0]["predicted_seconds"]) == pytest.approx(want_seconds[-1], rel=1e-8)  # %.9g
        assert float(got[0]["imbalance_before"]) == pytest.approx(max(loads) / (sum(loads) / experts), rel=1e-5)
        assert float(got[0]["imbalance_after"]) == pytest.approx(max(rows) / (sum(rows) / world), rel=1e-5)
        assert int(got[0]["copies"]) == 0
    assert want_seconds[5] == 3 * 9 * flop_per_row / flops  # the step without an exchange pays no latency
    reported = {(int(row["step"]), int(row["expert"])): int(row["tokens"]) for row in csv.DictReader(open(out / "expert_load.csv"))}
    assert reported == {(s, e): expert_loads(fed[s], experts)[e] for s in range(steps) for e in range(experts)}
    summary = next(csv.DictReader(open(out / "summary.csv")))
    assert float(summary["mean_seconds"]) == pytest.approx(sum(want_seconds) / steps, rel=1e-8)
    assert float(summary["p99_seconds"]) == pytest.approx(max(want_seconds), rel=1e-8)
    assert float(summary["bytes_per_step"]) == pytest.approx(sum(want_bytes) / steps, rel=1e-8)
    assert int(summary["plan_changes"]) == 0 and float(summary["copies_per_step"]) == 0


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    """README: "Results are deterministic (the thread count does not change them)". 4 layers x 4
    policies = 16 work items on 1 thread and on 7 (more than the cores, so items interleave):
    every output byte is the same."""
    path = tmp_path / "layers.dmtrace"
    assert replay("synth", "--out", path, "--steps", 50, "--layers", 4, "--experts", 16, "--world", 4, "--tokens", 128,
                  "--drift-every", 15, "--burst-every", 10, "--seed", 11).returncode == 0
    outputs = []
    for threads in (1, 7):
        out = tmp_path / f"t{threads}"
        r = replay("run", path, "--world", 8, "--threads", threads, "--out-dir", out)
        assert r.returncode == 0, r.stderr
        outputs.append((r.stdout.replace(str(out), "OUT"),
                        *[(out / f).read_bytes() for f in ("summary.csv", "steps.csv", "expert_load.csv")]))
    assert outputs[0] == outputs[1]
    steps = list(csv.DictReader(open(tmp_path / "t1" / "steps.csv")))
    assert sum(int(s["copies"]) for s in steps) > 0  # policies copied: the sums compared hold more than zeros
    bad = replay("run", path, "--threads", 0)
    assert bad.returncode == 2 and "--threads expects an integer" in bad.stderr, bad.stderr


def test_every_input_form(tmp_path, trace):
    """Each form replays, and the expert loads reported are the ones fed in."""
    counts = tmp_path / "counts.csv"
    assert replay("synth", "--out", counts, "--steps", 40, "--experts", 16, "--world", 4, "--tokens", 128,
                  "--seed", 3).returncode == 0  # the binary fixture's routing, as CSV
    fed = read_counts_csv(counts)
    from_counts = {(s, e): expert_loads(cells, 16)[e] for (s, _), cells in fed.items() for e in range(16)}
    assert sum(from_counts.values()) == 40 * 4 * 128 * 2  # steps x ranks x tokens x top-2
    jsonl = tmp_path / "routing.jsonl"  # per-token routing without a rank field: tokens of rank 0
    jsonl.write_text("".join(f'{{"step": {s // 2}, "layer": "moe0", "experts": [{s % 8}, {(s + 3) % 8}]}}\n'
                             for s in range(20)))
    from_jsonl = {(s, e): 0 for s in range(10) for e in range(8)}
    for s in range(20):
        from_jsonl[s // 2, s % 8] += 1
        from_jsonl[s // 2, (s + 3) % 8] += 1
    for path, want in ((trace, from_counts), (counts, from_counts), (jsonl, from_jsonl)):
        out = tmp_path / f"out-{path.name}"
        r = replay("run", path, "--policies", "none", "--out-dir", out)
        assert r.returncode == 0, (path, r.stderr)
        assert f"{len({s for s, _ in want})} steps" in r.stdout, r.stdout
        got = {(int(row["step"]), int(row["expert"])): int(row["tokens"]) for row in csv.DictReader(open(out / "expert_load.csv"))}
        assert got == want, path


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
    # A directory is read as a Megatron router trace directory: this one holds none of its files.
    cases.append((("run", tmp_path), 1, "a directory without router_trace_rank{R}.jsonl files"))
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


DECISION = re.compile(r"\[dynamoe D\] demo placement fastermoe step (\d+): predicted (\S+) s without copies, "
                      r"(\S+) s with shadowed \[([\d,]*)\] replicas \{\} \(before quotas\);(.*)$")
EXPERT = re.compile(r" expert (\d+) \(load (\d+)(?:, next (\d+))?\) (shadowed|not shadowed): (.*?);")


def test_debug_log_explains_each_placement_decision(tmp_path):
    """README: DYNAMOE_LOG_LEVEL=debug logs each decision: the prediction without copies and with
    the plan, and why each expert was or was not copied. Checked against the trace the same run
    recorded: the loads named are the recorded loads, the experts come in load order, "shadowed" is
    exactly gain > weights, and the prediction without copies is the replay of `none` on the trace
    with the same cluster."""
    demo = ROOT / "build" / "default" / "tools" / "dynamoe-demo"
    steps = 12
    # A slow GPU and a slow link: some experts pay for their copy, some do not.
    env = dict(os.environ, DYNAMOE_TRACE=str(tmp_path / "run"), DYNAMOE_LOG_LEVEL="debug", DYNAMOE_PLACEMENT="fastermoe",
               DYNAMOE_GPU_FLOPS="1e6", DYNAMOE_INTRA_BW="3e4", OMP_NUM_THREADS="1")
    r = subprocess.run([str(demo), "--ranks", "2", "--steps", str(steps), "--log-every", str(steps)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [m for m in map(DECISION.match, (r.stdout + r.stderr).splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == list(range(steps)), r.stderr[-3000:]  # each decision, once (rank 0 logs)

    out = tmp_path / "out"
    cluster = tmp_path / "cluster.txt"
    cluster.write_text("flops = 1e6\nintra_node_bw = 3e4\ninter_node_bw = 6.25e9\n"
                       "intra_node_latency_s = 5e-6\ninter_node_latency_s = 5e-6\n")  # DYNAMOE_LATENCY_US default 5
    rp = replay("run", tmp_path / "run.rank0.dmtrace", "--policies", "none", "--cluster", cluster, "--out-dir", out)
    assert rp.returncode == 0, rp.stderr
    none = [float(row["predicted_seconds"]) for row in csv.DictReader(open(out / "steps.csv"))]
    loads = {}
    for row in csv.DictReader(open(out / "expert_load.csv")):
        loads.setdefault(int(row["step"]), {})[int(row["expert"])] = int(row["tokens"])
    assert len(none) == len(loads) == steps
    per_token, decided = None, {"shadowed": 0, "not shadowed": 0}
    for m, step in zip(lines, sorted(loads)):
        assert float(m.group(2)) == pytest.approx(none[step], rel=1e-5)  # printed to 6 digits
        load = loads[step]
        ranked = sorted(load.values(), reverse=True)
        explained = EXPERT.findall(m.group(5))
        assert explained, m.group(0)
        shadowed = set()
        for k, (e, l, nxt, verdict, why) in enumerate(explained):
            e, l = int(e), int(l)
            assert l == load[e] == ranked[k], (step, e, l, load)  # the recorded load, in load order
            if why.startswith("budget of"):  # the copy budget, not the cost model, ended the search
                assert verdict == "not shadowed" and k == len(explained) - 1, why
                decided[verdict] += 1
                continue
            g, op, w = re.fullmatch(r"gain (\S+) s (>|<=) weights (\S+) s", why).groups()
            gain, weights = float(g), float(w)
            if nxt:
                assert int(nxt) == ranked[k + 1]
            # The next load in order (an expert past the recorded ones has none: 0).
            following = ranked[k + 1] if k + 1 < len(ranked) else 0
            # gain = (load - next load) x seconds per token: one rate for every line.
            rate = gain / (l - following) if l > following else None
            if rate is not None:
                per_token = per_token or rate
                assert rate == pytest.approx(per_token, rel=2e-2)  # gains are printed to 3 digits
            # The verdict follows the comparison the policy made (the printed operator); the printed
            # values, rounded to 3 digits, must agree with it unless they rounded equal.
            assert (verdict == "shadowed") == (op == ">"), why
            if gain != weights:
                assert (gain > weights) == (op == ">"), why
            decided[verdict] += 1
            if verdict == "shadowed":
                shadowed.add(e)
            else:
                assert k == len(explained) - 1  # the first expert not worth it ends the search
        assert shadowed == {int(x) for x in m.group(4).split(",") if x}  # the plan is what was explained
        if not shadowed:
            assert m.group(2) == m.group(3)  # no copies: the same prediction
    assert decided["shadowed"] > 0 and decided["not shadowed"] > 0, decided


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
    assert set(summary) == set(POLICIES) and len(steps) == len(POLICIES) * 60 * 2
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


def test_header_counts_steps_of_layers(tmp_path):
    """12 steps of 3 layers are 36 layer-steps (records); the header counts steps."""
    path = tmp_path / "layers.dmtrace"
    assert replay("synth", "--out", path, "--steps", 12, "--layers", 3, "--experts", 8, "--world", 2,
                  "--tokens", 16).returncode == 0
    r = replay("run", path, "--policies", "none")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"{path}: 12 steps of 3 layers, recorded on 2 ranks, replayed on 2"
    # A layer recorded on fewer steps: the records are not steps x layers, and the header says so.
    counts = tmp_path / "uneven.csv"
    counts.write_text("step,layer,rank,expert,count\n0,a,0,0,3\n0,b,0,1,2\n1,a,0,0,1\n")
    r = replay("run", counts, "--policies", "none")
    assert r.returncode == 0, r.stderr
    assert f"{counts}: 2 steps of 2 layers (3 layer-steps), recorded on 1 ranks" in r.stdout, r.stdout


def summary_rows(out):
    return {row["policy"]: row for row in csv.DictReader(open(out / "summary.csv"))}


def test_speedup_and_bound_share_without_none_listed(tmp_path, trace):
    """--policies adaptive,eplb: none and the bound are replayed anyway (not printed), and each
    policy's speed-up and share of the bound's gain agree with separate runs of none and the bound."""
    common = ("--world", 16, "--preset", "h100-nvlink-ib", "--d-model", 4096, "--d-hidden", 14336, "--gated",
              "--dtype", "bf16", "--tokens-per-rank", 4096, "--top-k", 2)
    r = replay("run", trace, "--policies", "adaptive,eplb", "--out-dir", tmp_path / "p", *common)
    assert r.returncode == 0, r.stderr
    assert not any(line.startswith(("none ", "balanced ")) for line in r.stdout.splitlines()), r.stdout
    base = replay("run", trace, "--policies", "none,balanced", "--out-dir", tmp_path / "b", *common)
    assert base.returncode == 0, base.stderr
    b = summary_rows(tmp_path / "b")
    none, bound = float(b["none"]["mean_seconds"]), float(b["balanced"]["mean_seconds"])
    assert none > bound  # a Mixtral-sized layer: balancing the rows pays
    assert float(b["balanced"]["bound_fraction"]) == pytest.approx(1.0, rel=1e-6)
    assert float(b["none"]["bound_fraction"]) == 0
    for p, row in summary_rows(tmp_path / "p").items():
        mean = float(row["mean_seconds"])
        assert float(row["speedup_vs_none"]) == pytest.approx(none / mean, rel=1e-5), p  # %.6g in the file
        assert float(row["bound_fraction"]) == pytest.approx((none - mean) / (none - bound), rel=1e-5, abs=1e-6), p
        line = next(l for l in r.stdout.splitlines() if l.startswith(p + " "))
        assert f"{100 * (none - mean) / (none - bound):.1f}%" in line, line
    # The bound: no policy has fewer rows on its busiest rank.
    after = {p: float(row["imbalance_after"]) for p, row in summary_rows(tmp_path / "p").items()}
    assert all(a >= float(b["balanced"]["imbalance_after"]) - 1e-6 for a in after.values()), after


def rescaled(row, rows):
    """A rank's counts scaled to `rows` in integers: floors, then one more row to the largest
    remainders (ties to the lower expert), as --tokens-per-rank documents."""
    total = sum(row)
    if total == 0:
        return list(row)
    floors = [c * rows // total for c in row]
    rest = sorted(range(len(row)), key=lambda e: (-(row[e] * rows % total), e))
    for e in rest[:rows - sum(floors)]:
        floors[e] += 1
    return floors


def test_a_modelled_layer_and_batch_are_replayed_as_documented(tmp_path):
    """Counts fed as CSV, replayed as another layer (--d-model/--d-hidden/--gated/--dtype) and batch
    (--tokens-per-rank/--top-k). The rescaled loads, none's predicted times and the bound's are computed
    here from the fed counts with the terms placement/cost_model.h and replay/replay.h document."""
    import math
    import random
    rng = random.Random(3)
    world, experts, steps, tokens, top_k = 2, 4, 5, 50, 2
    fed = {s: {(r, e): rng.randint(0, 30) for r in range(world) for e in range(experts)} for s in range(steps)}
    fed[4][1, 0] = fed[4][1, 1] = fed[4][1, 2] = fed[4][1, 3] = 0  # rank 1 routes nothing: stays empty
    path = tmp_path / "fed.csv"
    path.write_text("step,layer,rank,expert,count\n" + "".join(
        f"{s},moe0,{r},{e},{c}\n" for s, cells in fed.items() for (r, e), c in cells.items()))
    cluster = tmp_path / "cluster.txt"
    flops, bw, lat = 1e12, 2e9, 1e-5
    cluster.write_text(f"flops = {flops}\nintra_node_bw = {bw}\nintra_node_latency_s = {lat}\n")
    out = tmp_path / "out"
    d_model, d_hidden = 64, 96
    r = replay("run", path, "--policies", "none,balanced", "--cluster", cluster, "--out-dir", out, "--d-model", d_model,
               "--d-hidden", d_hidden, "--gated", "--dtype", "fp32", "--tokens-per-rank", tokens, "--top-k", top_k)
    assert r.returncode == 0, r.stderr
    assert f"modelled: d_model {d_model}, d_hidden {d_hidden}, gated, fp32; {tokens} tokens per rank, top-{top_k}" in r.stdout
    row_bytes, flop_per_row = d_model * 4, 2 * 3 * d_model * d_hidden  # three matrices (gated), fp32
    home = lambda e: e // (experts // world)
    loads = {(int(x["step"]), int(x["expert"])): int(x["tokens"]) for x in csv.DictReader(open(out / "expert_load.csv"))}
    by_policy = {}
    for x in csv.DictReader(open(out / "steps.csv")):
        by_policy.setdefault(x["policy"], {})[int(x["step"])] = float(x["predicted_seconds"])
    for s in range(steps):
        cells = {}
        for q in range(world):
            row = rescaled([fed[s][q, e] for e in range(experts)], tokens * top_k)
            assert sum(row) == (0 if s == 4 and q == 1 else tokens * top_k)
            cells.update({(q, e): c for e, c in enumerate(row)})
        assert [loads[s, e] for e in range(experts)] == [sum(cells[q, e] for q in range(world)) for e in range(experts)]
        # none: plain expert parallelism on the rescaled counts.
        link = {}
        for (src, e), c in cells.items():
            link[src, home(e)] = link.get((src, home(e)), 0) + c
        off = lambda q, side: sum(lat + n * row_bytes / bw for (a, b), n in link.items() if (a, b)[side] == q and a != b and n)
        exchange = max(max(off(q, 0), off(q, 1)) for q in range(world))
        rows = [sum(n for (_, b), n in link.items() if b == q) for q in range(world)]
        assert by_policy["none"][s] == pytest.approx(4 * exchange + 3 * max(rows) * flop_per_row / flops, rel=1e-8)
        # The bound: each rank sends 1/world of its rows to every other rank; ceil(mean) rows each.
        routes = [sum(cells[q, e] for e in range(experts)) for q in range(world)]
        send = [(world - 1) * (lat + routes[q] / world * row_bytes / bw) if routes[q] else 0 for q in range(world)]
        recv = [sum(lat + routes[a] / world * row_bytes / bw for a in range(world) if a != q and routes[a])
                for q in range(world)]
        busiest = math.ceil(sum(routes) / world)
        want = 4 * max(send + recv) + 3 * busiest * flop_per_row / flops
        assert by_policy["balanced"][s] == pytest.approx(want, rel=1e-8), s


def test_modelling_flags_are_checked(trace):
    cases = [
        (("--dtype", "fp8"), "--dtype expects fp32, bf16 or fp16, got 'fp8'"),
        (("--d-model", "0"), "--d-model expects an integer in [1, 1048576]"),
        (("--d-hidden", "1e3"), "--d-hidden expects an integer"),
        (("--tokens-per-rank", "8192"), "--tokens-per-rank and --top-k go together"),
        (("--top-k", "2"), "--tokens-per-rank and --top-k go together"),
        (("--tokens-per-rank", "0", "--top-k", "2"), "--tokens-per-rank expects an integer in [1, "),
        (("--policies", "none,none"), 'policy "none" is listed twice'),
    ]
    for args, message in cases:
        r = replay("run", trace, *args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert message in r.stderr, (args, r.stderr)
    big = replay("run", trace, "--tokens-per-rank", 1 << 30, "--top-k", 4096)
    assert big.returncode == 1 and "over 2^40" in big.stderr, big.stderr
    h = replay("--help")
    assert h.returncode == 0 and "balanced is the force-balanced bound" in h.stdout and "--tokens-per-rank" in h.stdout
