"""Metrics end to end: a 2-rank torchrun job with DYNAMOE_METRICS_PORT, scraped
by a real Prometheus server (Debian's `prometheus` package) on loopback; the
per-expert token totals Prometheus stored equal the routing the ranks did."""
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from test_distributed import WORKER, free_port, rank_env, torchrun

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                                reason="the prometheus package (server and promtool) is not installed")


def _get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


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
    env = rank_env(DYNAMOE_METRICS_PORT=str(base))
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
    finally:
        stop.write_text("")
        try:
            job.wait(timeout=60)
        finally:
            job.kill()
            prom.terminate()
            prom.wait(timeout=30)
