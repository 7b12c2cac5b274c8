"""The shipped monitoring files: alert rules pass `promtool test rules`; every
Grafana panel query is valid PromQL (checked by promtool as recording rules)
and uses only the documented metric families. And the files DYNAMOE_TRACE
writes from real processes: one per global rank, a full disk reported at once
and counted, records of a process killed by os._exit kept up to the flush period, and the trace
of a process killed by SIGKILL mid-run read back."""
import csv
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from test_distributed import free_port, rank_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
REPLAY = ROOT / "build" / "default" / "tools" / "dynamoe-replay"
FAMILIES = {"dynamoe_expert_tokens_total", "dynamoe_routed_tokens_total", "dynamoe_tokens_dropped_total",
            "dynamoe_load_imbalance_ratio", "dynamoe_expert_load_max", "dynamoe_expert_load_min",
            "dynamoe_hot_expert", "dynamoe_hot_expert_load", "dynamoe_dead_experts", "dynamoe_copied_experts",
            "dynamoe_plan_changes_total", "dynamoe_alltoall_bytes_total", "dynamoe_phase_duration_seconds",
            "dynamoe_step_duration_seconds", "dynamoe_trace_records_lost_total"}
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


@needs_promtool
def test_alert_rules_unit_tests_pass():
    d = ROOT / "monitor" / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run(["promtool", *args], cwd=d, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def _queries():
    dash = json.loads((ROOT / "monitor" / "grafana" / "dynamoe.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_uses_the_documented_families():
    queries = _queries()
    assert len(queries) >= 8
    used = set()
    for q in queries:
        names = set(re.findall(r"dynamoe_[a-z_]+", q))
        assert names, q
        for n in names:
            base = n if n in FAMILIES else re.sub(r"_(bucket|sum|count)$", "", n)
            assert base in FAMILIES, f"{n} in {q}"
            used.add(base)
    assert used == FAMILIES, f"families without a panel: {FAMILIES - used}"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, q in enumerate(_queries()):
        expr = q.replace("$__rate_interval", "1m").replace("$layer", ".*")
        rules += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "rules.yml").write_text("\n".join(rules) + "\n")
    r = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _trace_job(tmp_path, body, name="job.py"):
    """A Python program training dynamoe layers: `body` follows the imports."""
    script = tmp_path / name
    script.write_text("import os, sys, time, urllib.request\nimport torch, dynamoe\n" + textwrap.dedent(body))
    return [sys.executable, str(script)]


def _trace_steps(path):
    """Step records in a trace, read by dynamoe-replay (warnings on stderr)."""
    if not REPLAY.exists():
        pytest.skip("build/default/tools/dynamoe-replay is not built")
    r = subprocess.run([str(REPLAY), "run", str(path), "--policies", "none"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r": (\d+) steps? of (\d+) layers?", r.stdout)  # one layer: steps = records
    assert m, r.stdout
    return int(m.group(1)), r.stderr


TRAIN = """
    torch.manual_seed(int(os.environ.get("RANK", "0")))
    m = dynamoe.MoE(8, 16, 4, top_k=2, name="t")
    for _ in range(int(sys.argv[1])):
        m(torch.randn(16, 8)).sum().backward()
"""


def test_data_parallel_processes_write_one_trace_each(tmp_path):
    """Two data-parallel processes without an expert-parallel group: each writes the file of its
    global rank (both used to write rank0, each truncating the other's)."""
    prefix = tmp_path / "dp"
    cmd = _trace_job(tmp_path, TRAIN)
    procs = [subprocess.Popen(cmd + [str(4 + r)], stderr=subprocess.PIPE, text=True,
                              env=rank_env(PYTHONPATH=str(ROOT / "python"), DYNAMOE_TRACE=str(prefix), RANK=str(r),
                                           WORLD_SIZE="2", LOCAL_RANK=str(r), LOCAL_WORLD_SIZE="2"))
             for r in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert sorted(f.name for f in tmp_path.glob("dp.*")) == ["dp.rank0.dmtrace", "dp.rank1.dmtrace"]
    for r in range(2):
        assert _trace_steps(f"{prefix}.rank{r}.dmtrace")[0] == 4 + r


def test_full_disk_is_reported_at_once_and_lost_records_counted(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: the first failed write is logged while training
    runs, training finishes, and every step record is either in the file or counted as lost."""
    prefix, port, steps = tmp_path / "full", free_port(), 200
    cmd = _trace_job(tmp_path, f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        m = dynamoe.MoE(8, 16, 4, top_k=2, name="full")
        for _ in range({steps}):
            m(torch.randn(16, 8)).sum().backward()
        time.sleep(0.5)  # ten flush periods: every record is written or lost
        print("TRAINING DONE", file=sys.stderr, flush=True)
        text = urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        print([l for l in text.splitlines() if l.startswith("dynamoe_trace_records_lost_total")][0])
    """)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                       env=rank_env(PYTHONPATH=str(ROOT / "python"), DYNAMOE_TRACE=str(prefix),
                                    DYNAMOE_TRACE_FLUSH_S="0.05", DYNAMOE_METRICS_PORT=str(port)))
    assert r.returncode == 0, r.stderr
    during, done, at_exit = r.stderr.partition("TRAINING DONE")
    assert done, r.stderr
    error = f"DYNAMOE_TRACE: writing '{prefix}.rank0.dmtrace' failed: File too large (errno 27)"
    assert during.count(error) == 1, r.stderr  # at once, and once
    lost = int(float(r.stdout.split()[-1]))
    written, warnings = _trace_steps(f"{prefix}.rank0.dmtrace")
    assert lost > 0 and written > 0 and written + lost == steps, (written, lost)
    assert warnings == "", warnings  # cut back to whole records: nothing torn
    assert f"{lost} of {steps} step records were not written" in at_exit, at_exit


def test_records_survive_os_exit_after_the_flush_period(tmp_path):
    """os._exit skips every destructor: what was recorded more than one flush period before it is
    in the file."""
    prefix = tmp_path / "killed"
    cmd = _trace_job(tmp_path, TRAIN + """
    time.sleep(1.0)  # five flush periods
    os._exit(0)
""")
    r = subprocess.run(cmd + ["6"], capture_output=True, text=True, timeout=120,
                       env=rank_env(PYTHONPATH=str(ROOT / "python"), DYNAMOE_TRACE=str(prefix),
                                    DYNAMOE_TRACE_FLUSH_S="0.2"))
    assert r.returncode == 0, r.stderr
    assert _trace_steps(f"{prefix}.rank0.dmtrace")[0] == 6


def test_a_killed_job_leaves_a_readable_trace(tmp_path):
    """README: "a crashed job leaves a readable trace". A process training without end is killed
    by SIGKILL (no handler, no destructor, no flush at exit) in the middle of its run, once dynamoe-replay has read steps 0..20 from its file: every step
    read before the kill is still in the file, in order, and dynamoe-replay reads it (a torn last
    record at most costs that record)."""
    import signal
    import time
    if not REPLAY.exists():
        pytest.skip("build/default/tools/dynamoe-replay is not built")
    prefix = tmp_path / "crashed"
    cmd = _trace_job(tmp_path, """
        torch.manual_seed(0)
        m = dynamoe.MoE(8, 16, 4, top_k=2, name="c")
        step = 0
        while True:
            m(torch.randn(16, 8)).sum().backward()
            print(step, flush=True)  # step `step` is done
            step += 1
    """)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=rank_env(PYTHONPATH=str(ROOT / "python"), DYNAMOE_TRACE=str(prefix),
                                      DYNAMOE_TRACE_FLUSH_S="0.05"))
    try:
        for line in p.stdout:
            if int(line) == 20:
                break
        done_before = int(line)  # steps 0..20 are done
        # Wait (it keeps training) until dynamoe-replay reads steps 0..20 from the file, so the kill
        # comes after they were flushed; a generous deadline for a loaded machine.
        deadline, on_file = time.monotonic() + 120, 0
        while on_file <= done_before:
            assert time.monotonic() < deadline and p.poll() is None, f"{on_file} steps on file"
            time.sleep(0.05)
            if os.path.exists(f"{prefix}.rank0.dmtrace"):
                polled = subprocess.run([str(REPLAY), "run", f"{prefix}.rank0.dmtrace", "--policies", "none"],
                                        capture_output=True, text=True, timeout=60)
                m = re.search(r": (\d+) steps? of ", polled.stdout)
                on_file = int(m.group(1)) if polled.returncode == 0 and m else 0  # no header yet: 0
        p.send_signal(signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL, p.stderr.read()  # still running when killed
    finally:
        p.kill()
    finished = done_before + 1 + sum(1 for _ in p.stdout)  # steps it reported before dying
    out = tmp_path / "out"
    r = subprocess.run([str(REPLAY), "run", f"{prefix}.rank0.dmtrace", "--policies", "none", "--out-dir", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == "" or "cut short" in r.stderr, r.stderr  # at most a torn last record
    steps = [int(row["step"]) for row in csv.DictReader(open(out / "steps.csv"))]
    # Every step read from the file before the kill is still there, in order; none it did not start.
    assert steps and steps == list(range(steps[0], steps[0] + len(steps))), steps
    assert steps[0] == 0 and on_file - 1 <= steps[-1] <= finished, (steps, on_file, finished)
