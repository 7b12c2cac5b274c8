"""Metrics end to end: a 2-rank torchrun job with DYNAMOE_METRICS_PORT, scraped
by a real Prometheus server (Debian's `prometheus` package) on loopback; the
per-expert token totals Prometheus stored equal the routing the ranks did.
Real processes also show the series count with and without per-expert series,
and that slow clients neither delay a scrape nor hold the process's exit."""
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request

import pytest

from test_distributed import WORKER, free_port, rank_env, torchrun

ROOT = pathlib.Path(__file__).resolve().parents[2]
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                                      reason="the prometheus package (server and promtool) is not installed")


def _get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


@needs_prometheus
def test_prometheus_scrapes_expert_token_totals(tmp_path):
    base = free_port()
    while True:  # two consecutive free ports: rank r serves base + LOCAL_RANK
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", base + 1))
            break
        except OSError:
            base = free_port()
    web = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: dynamoe\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{base}', '127.0.0.1:{base + 1}']\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = tmp_path / "stop"
    cmd = torchrun(2, WORKER, "--out", tmp_path, "--scenario=metrics", "--tokens=13,6", "--experts=8",
                   f"--stop_file={stop}")
    env = rank_env(DYNAMOE_METRICS_PORT=str(base), DYNAMOE_METRICS_PER_EXPERT="1")
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reports = []
        deadline = time.time() + 120
        while time.time() < deadline and len(reports) < 2:
            reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
            assert job.poll() is None, job.communicate()[0]
            time.sleep(0.5)
        assert len(reports) == 2, "the ranks did not report"
        for rep in reports:
            assert "error" not in rep, rep.get("error")
        want = {(str(r), str(e)): float(c) for r, rep in enumerate(reports) for e, c in enumerate(rep["routed"])}
        assert sum(want.values()) == (13 + 6) * 2 * 3  # tokens x top-2 x 3 steps

        # The live exposition passes promtool.
        text = _get(f"http://127.0.0.1:{base}/metrics")
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr

        query = urllib.parse.quote('dynamoe_expert_tokens_total{layer="prom"}')
        got = {}
        deadline = time.time() + 90  # the first scrape takes a few seconds
        while time.time() < deadline and got != want:
            try:
                body = json.loads(_get(f"http://127.0.0.1:{web}/api/v1/query?query={query}"))
                got = {(s["metric"]["rank"], s["metric"]["expert"]): float(s["value"][1])
                       for s in body["data"]["result"]}
            except OSError:
                pass
            time.sleep(1)
        assert got == want
        # The default per-layer total agrees with the per-expert series.
        query = urllib.parse.quote('dynamoe_routed_tokens_total{layer="prom"}')
        body = json.loads(_get(f"http://127.0.0.1:{web}/api/v1/query?query={query}"))
        totals = {s["metric"]["rank"]: float(s["value"][1]) for s in body["data"]["result"]}
        assert totals == {str(r): float(sum(rep["routed"])) for r, rep in enumerate(reports)}
    finally:
        stop.write_text("")
        try:
            job.wait(timeout=60)
        finally:
            job.kill()
            prom.terminate()
            prom.wait(timeout=30)


def _job(tmp_path, body, **env):
    """A Python process with metrics on a free port, running `body` (which sees PORT and scrape())."""
    port = free_port()
    script = tmp_path / "job.py"
    script.write_text("import sys, urllib.request\nimport torch, dynamoe\nPORT = " + str(port) + "\n"
                      "def scrape():\n"
                      "    return urllib.request.urlopen(f'http://127.0.0.1:{PORT}/metrics', timeout=30).read().decode()\n"
                      + textwrap.dedent(body))
    env = rank_env(PYTHONPATH=str(ROOT / "python"), DYNAMOE_METRICS_PORT=str(port), **env)
    return port, [sys.executable, str(script)], env


SERIES_BODY = """
    torch.manual_seed(0)
    for name, experts in (("a", 16), ("b", 16), ("c", 2)):
        m = dynamoe.MoE(8, 16, experts, top_k=2, name=name)
        m(torch.randn(32, 8)).sum().backward()
    print(len([l for l in scrape().splitlines() if l and not l.startswith("#")]))
"""


def _series_per_layer(experts, per_expert):
    """README "Metrics": 10 + 2 min(4, E) + 9 x 16 per layer (+ E with per-expert series)."""
    return 10 + 2 * min(4, experts) + 9 * 16 + (experts if per_expert else 0)


@pytest.mark.parametrize("per_expert", [False, True])
def test_series_count_default_and_per_expert(tmp_path, per_expert):
    _, cmd, env = _job(tmp_path, SERIES_BODY, DYNAMOE_METRICS_PER_EXPERT="1" if per_expert else "0")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    want = sum(_series_per_layer(e, per_expert) for e in (16, 16, 2)) + 1  # + dynamoe_trace_records_lost_total
    assert int(r.stdout.split()[-1]) == want


def _slow_loris(port, period, stop):
    """Sends one byte of a request every `period` seconds until `stop` is set."""
    s = socket.create_connection(("127.0.0.1", port))
    try:
        for b in b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Pad: " + b"x" * 64 + b"\r\n\r\n":
            if stop.wait(period):
                return
            s.send(bytes([b]))
    except OSError:
        pass  # the server cut it off
    finally:
        s.close()


def test_slow_clients_neither_delay_scrapes_nor_hold_exit(tmp_path):
    """The issue's figures: 4 idle connections delayed a scrape by 7.9 s; a client sending a byte
    every 1.5 s made scrapes time out and held the process's exit while it kept sending."""
    port, cmd, env = _job(tmp_path, """
        m = dynamoe.MoE(8, 16, 4, top_k=2, name="slow")
        m(torch.randn(16, 8)).sum().backward()
        print("ready", flush=True)
        sys.stdin.readline()  # then a normal exit: static destructors stop the endpoint
    """)
    job = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stop = threading.Event()
    idle = []
    loris = threading.Thread(target=_slow_loris, args=(port, 1.5, stop))
    try:
        assert job.stdout.readline().strip() == "ready"
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        loris.start()
        time.sleep(0.2)
        for _ in range(2):
            start = time.monotonic()
            text = _get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            took = time.monotonic() - start
            assert "dynamoe_routed_tokens_total" in text
            assert took < 2.0, f"a scrape took {took:.2f} s behind the slow clients"
        start = time.monotonic()
        job.stdin.write("exit\n")
        job.stdin.flush()
        job.wait(timeout=30)
        took = time.monotonic() - start
        assert job.returncode == 0
        assert took < 3.0, f"exit took {took:.2f} s with a slow client connected"
    finally:
        stop.set()
        job.kill()
        if loris.is_alive():
            loris.join()
        for s in idle:
            s.close()
