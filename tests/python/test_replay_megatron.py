"""dynamoe-replay run DIR on Megatron-Core router traces, as users run it: a
fixture written from the published record layout (2 ranks, three decoder
layers, an MTP head) replays to the same table as the same routing given as
dynamoe JSONL; bad, torn and partial inputs; bounded memory on a trace larger
than that bound."""
import json
import pathlib
import random
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOL = ROOT / "build" / "default" / "tools" / "dynamoe-replay"
pytestmark = pytest.mark.skipif(not TOOL.exists(), reason="dynamoe-replay is not built")

LAYERS = [("decoder", None, 0), ("decoder", None, 1), ("decoder", None, 2), ("mtp", 0, 1)]  # MTP shares layer 1's number


def name(block, mtp, layer):
    return f"{block}{'' if mtp is None else mtp}.{layer}"


def megatron_record(step, block, mtp, layer, rank, rows, stage="pre_dispatch"):
    rec = {"step": step, "stage": stage, "block": block, "layer": layer, "rank": rank, "num_tokens": len(rows),
           "topk": len(rows[0]), "top_indices": rows}
    if mtp is not None:
        rec["mtp_idx"] = mtp
    return json.dumps(rec) + "\n"


def write_fixture(tmp_path, steps=4, experts=8, k=2, tokens=6, seed=0):
    """The Megatron directory and the same routing as dynamoe JSONL."""
    rng = random.Random(seed)
    d = tmp_path / "megatron"
    d.mkdir()
    jsonl = {}
    for rank in range(2):
        with open(d / f"router_trace_rank{rank}.jsonl", "w") as f:
            for step in range(steps):
                for block, mtp, layer in reversed(LAYERS):  # the importer, not the file, orders layers
                    rows = [rng.sample(range(experts), k) for _ in range(tokens)]
                    if step == 0:
                        rows[0][0] = experts - 1  # every layer shows the highest expert
                        rows[0][1] = 0
                    f.write(megatron_record(step, block, mtp, layer, rank, rows))
                    jsonl.setdefault((step, name(block, mtp, layer)), []).extend(
                        json.dumps({"step": step, "layer": name(block, mtp, layer), "experts": r, "rank": rank})
                        for r in rows)
    j = tmp_path / "same.jsonl"
    with open(j, "w") as f:
        for step in range(steps):
            for l in LAYERS:
                f.write("\n".join(jsonl[(step, name(*l))]) + "\n")
    return d, j


def run(*args, **kw):
    return subprocess.run([str(TOOL), "run", *map(str, args)], capture_output=True, text=True, timeout=120, **kw)


def without_trace_column(path):
    return [line.split(",", 1)[1] for line in path.read_text().splitlines()[1:]]


def test_megatron_dir_replays_like_the_same_jsonl(tmp_path):
    d, j = write_fixture(tmp_path)
    a = run(d, "--threads", "1", "--out-dir", tmp_path / "a")
    b = run(j, "--threads", "1", "--out-dir", tmp_path / "b")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stderr == ""
    table_a, table_b = a.stdout.splitlines(), b.stdout.splitlines()
    assert table_a[0] == f"{d}: 4 steps of 4 layers, recorded on 2 ranks, replayed on 2"
    assert table_b[0].endswith(": 4 steps of 4 layers, recorded on 2 ranks, replayed on 2")
    assert table_a[1:-1] == table_b[1:-1]  # the policy table (the last line names the output folder)
    for f in ("summary.csv", "steps.csv", "expert_load.csv"):
        assert without_trace_column(tmp_path / "a" / f) == without_trace_column(tmp_path / "b" / f), f
    layers = [line.split(",")[4] for line in (tmp_path / "a" / "steps.csv").read_text().splitlines()[1:5]]
    assert layers == ["decoder.0", "decoder.1", "decoder.2", "mtp0.1"]


def test_torn_last_line_is_a_warning(tmp_path):
    d, _ = write_fixture(tmp_path)
    whole = run(d, "--policies", "none")
    with open(d / "router_trace_rank1.jsonl", "a") as f:
        f.write('{"step": 4, "stage": "pre_dispatch", "block": "decoder", "layer": 0, "rank": 1, "top_indi')
    r = run(d, "--policies", "none")
    assert r.returncode == 0, r.stderr
    assert f"{d}/router_trace_rank1.jsonl line 17: torn last line" in r.stderr
    assert r.stdout == whole.stdout  # the records before it, all of them


@pytest.mark.parametrize("bad,expected", [
    ("not json\n", "not valid JSON"),
    ('{"step": 1, "layer": 0, "rank": 0, "top_indices": [[0, 1]]}\n', "the file is rank 1's"),
    ('{"step": 1, "layer": 0, "num_tokens": 2, "top_indices": [[0, 1]]}\n', "top_indices has 1 rows"),
    ('{"step": 1, "layer": 0, "top_indices": [[0, 1], [2]]}\n', "row 1 has 1 experts"),
    ('{"step": 1, "layer": 0, "top_indices": [[0, -3]]}\n', "expert indices must be in [0, 2^20)"),
])
def test_bad_record_names_file_and_line(tmp_path, bad, expected):
    d, _ = write_fixture(tmp_path)
    lines = (d / "router_trace_rank1.jsonl").read_text().splitlines(keepends=True)
    lines.insert(5, bad)
    (d / "router_trace_rank1.jsonl").write_text("".join(lines))
    r = run(d)
    assert r.returncode == 1
    assert f"router_trace_rank1.jsonl line 6: " in r.stderr and expected in r.stderr, r.stderr
    assert r.stdout == ""


def test_expert_count_flag_and_partial_inputs(tmp_path):
    # Highest index 6: 7 experts do not spread over 2 ranks until --experts says 8.
    d = tmp_path / "m"
    d.mkdir()
    for rank in range(2):
        (d / f"router_trace_rank{rank}.jsonl").write_text(
            megatron_record(0, "decoder", None, 0, rank, [[6, 1], [2, 3]]))
    r = run(d)
    assert r.returncode == 1 and "do not divide" in r.stderr and "--experts N" in r.stderr, r.stderr
    r = run(d, "--experts", "8", "--out-dir", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    loads = without_trace_column(tmp_path / "o" / "expert_load.csv")
    assert loads == ["0,0,0", "0,1,2", "0,2,2", "0,3,2", "0,4,0", "0,5,0", "0,6,2", "0,7,0"]
    r = run(d, "--experts", "4")
    assert r.returncode == 1 and "line 1: expert index 6 is out of range: --experts is 4" in r.stderr, r.stderr
    # --experts means nothing for other inputs: refused before any output is written.
    (tmp_path / "t.jsonl").write_text('{"step": 0, "layer": "moe", "experts": [0, 1]}\n')
    r = run(tmp_path / "t.jsonl", "--experts", "8", "--csv", tmp_path / "steps.csv")
    assert r.returncode == 2 and "--experts applies to a Megatron-Core router trace directory only" in r.stderr, \
        r.stderr
    assert not (tmp_path / "steps.csv").exists()
    r = run(d, "--experts", "0")
    assert r.returncode == 2 and "--experts" in r.stderr, r.stderr
    # One rank file alone: pointed at its directory.
    r = run(d / "router_trace_rank1.jsonl")
    assert r.returncode == 1 and "give its directory" in r.stderr, r.stderr
    # A missing rank.
    (d / "router_trace_rank0.jsonl").unlink()
    r = run(d)
    assert r.returncode == 1 and "rank files 0 missing" in r.stderr, r.stderr
    # A directory of something else.
    r = run(tmp_path / "o")
    assert r.returncode == 1 and "without router_trace_rank" in r.stderr, r.stderr


MEASURE = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_streams_a_trace_larger_than_its_memory(tmp_path):
    # 2 ranks x ~40 MB of records; the tool's peak RSS stays far below the
    # input (it holds one line and the count matrices; measured ~19 MB on 1 GB).
    rng = random.Random(1)
    pool = [json.dumps([rng.sample(range(32), 4) for _ in range(2048)]) for _ in range(8)]
    d = tmp_path / "big"
    d.mkdir()
    size = 0
    for rank in range(2):
        with open(d / f"router_trace_rank{rank}.jsonl", "w") as f:
            n = step = 0
            while n < 40 << 20:
                for layer in range(4):
                    line = (f'{{"step": {step}, "stage": "pre_dispatch", "block": "decoder", "layer": {layer}, '
                            f'"rank": {rank}, "num_tokens": 2048, "topk": 4, "top_indices": {rng.choice(pool)}}}\n')
                    f.write(line)
                    n += len(line)
                step += 1
        size += n
    r = subprocess.run([sys.executable, "-c", MEASURE, str(TOOL), "run", str(d), "--policies", "none"],
                       capture_output=True, text=True, timeout=300)
    rc, max_rss_kb = map(int, r.stdout.split())
    assert rc == 0
    # Generous: the binary and its libraries alone are ~15 MB resident.
    assert max_rss_kb * 1024 < size / 2, (max_rss_kb, size)
