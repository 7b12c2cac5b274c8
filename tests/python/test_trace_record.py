"""dynamoe.trace.record on tiny randomly initialised Hugging Face MoE models
(no weights downloaded) and on a user module with an adapter: the counts that
dynamoe-replay reads back from the recorded trace must equal counts computed
here from the routers' own logits."""
import csv
import json
import os
import re
import pathlib
import struct
import subprocess
import sys
import time
import warnings

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
# TEST_REPLAY_TOOL: another build's (scripts/gpu_check.sh builds into build/gpu; not DYNAMOE_*, which the
# layer checks for typos).
TOOL = pathlib.Path(os.environ.get("TEST_REPLAY_TOOL", ROOT / "build" / "default" / "tools" / "dynamoe-replay"))
PYDEPS = ROOT / "build" / "pydeps"  # scripts/deps.sh installs transformers there
if PYDEPS.is_dir() and str(PYDEPS) not in sys.path:
    sys.path.append(str(PYDEPS))

import dynamoe.trace  # noqa: E402

pytestmark = pytest.mark.skipif(not TOOL.exists(), reason="dynamoe-replay is not built")


def replay_loads(path, tmp_path, *extra):
    """{(step, expert): tokens} of dynamoe-replay's expert_load.csv, the summary line, stderr."""
    out = tmp_path / ("out_" + pathlib.Path(path).name)
    r = subprocess.run([str(TOOL), "run", str(path), "--policies", "none", "--threads", "1", "--out-dir", str(out),
                        *extra], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with open(out / "expert_load.csv") as f:
        loads = {(int(row["step"]), int(row["expert"])): int(row["tokens"]) for row in csv.DictReader(f)}
    return loads, r.stdout.splitlines()[0], r.stderr


def counts_from_logits(logits, k, experts, softmax=False):
    """Assignments per expert of the k largest logits per token. softmax: as
    the Hugging Face blocks route (top-k of the fp32 softmax): a token whose
    logits tie (seen: OLMoE's first token of a 1-sequence batch) goes where
    the model's topk sends it, which a plain sort of the logits may not."""
    picked = (logits.softmax(dim=-1, dtype=torch.float) if softmax else logits).topk(k, dim=-1).indices
    counts = [0] * experts
    for e in picked.reshape(-1).tolist():
        counts[e] += 1
    return counts


def tiny_hf(kind):
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, num_experts_per_tok=2, max_position_embeddings=64)
    if kind == "mixtral":
        cfg = transformers.MixtralConfig(num_local_experts=8, **common)
        model = transformers.MixtralForCausalLM(cfg)
    elif kind == "olmoe":
        cfg = transformers.OlmoeConfig(num_experts=8, **common)
        model = transformers.OlmoeForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2MoeConfig(num_experts=8, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                                          **common)
        model = transformers.Qwen2MoeForCausalLM(cfg)
    return model.eval()


def run_batches(model, shapes):
    """The router logits per batch and layer, from output_router_logits."""
    logits = []
    with torch.no_grad():
        for b, t in shapes:
            out = model(torch.randint(0, 64, (b, t)), output_router_logits=True)
            logits.append([l.clone() for l in out.router_logits])
    return logits


def test_mixtral_replay_counts_equal_router_logits(tmp_path):
    torch.manual_seed(0)
    model = tiny_hf("mixtral")
    layer1 = "model.layers.1.block_sparse_moe"
    # Two recordings at once: every router, and layer 1 alone (its loads
    # are then that layer's counts, not a sum over layers).
    with dynamoe.trace.record(model, tmp_path / "all.dmtrace") as rec_all, \
            dynamoe.trace.record(model, tmp_path / "one.dmtrace", names=[layer1]) as rec_one:
        logits = run_batches(model, [(2, 10), (3, 7), (1, 16)])
    assert rec_all.layer_names == ["model.layers.0.block_sparse_moe", layer1]
    assert rec_all.steps == [3, 3] and rec_one.steps == [3]

    loads, summary, err = replay_loads(tmp_path / "all.dmtrace", tmp_path)
    assert "3 steps of 2 layers, recorded on 1 ranks" in summary
    assert err == ""  # every frame's checksums hold
    for step, per_layer in enumerate(logits):
        expected = [sum(c) for c in zip(*(counts_from_logits(l, 2, 8, softmax=True) for l in per_layer))]
        assert [loads[(step, e)] for e in range(8)] == expected, step
    loads, summary, _ = replay_loads(tmp_path / "one.dmtrace", tmp_path)
    assert "3 steps of 1 layer," in summary
    for step, per_layer in enumerate(logits):
        assert [loads[(step, e)] for e in range(8)] == counts_from_logits(per_layer[1], 2, 8, softmax=True), step


@pytest.mark.parametrize("kind", ["olmoe", "qwen2_moe"])
def test_olmoe_and_qwen_routers_are_known(kind, tmp_path):
    torch.manual_seed(1)
    model = tiny_hf(kind)
    with dynamoe.trace.record(model, tmp_path / "t.dmtrace") as rec:
        logits = run_batches(model, [(2, 9), (1, 5)])
    assert rec.layer_names == ["model.layers.0.mlp", "model.layers.1.mlp"]
    loads, _, err = replay_loads(tmp_path / "t.dmtrace", tmp_path)
    assert err == ""
    for step, per_layer in enumerate(logits):
        expected = [sum(c) for c in zip(*(counts_from_logits(l, 2, 8, softmax=True) for l in per_layer))]
        assert [loads[(step, e)] for e in range(8)] == expected


class UserMoE(torch.nn.Module):
    """A router dynamoe does not know: forward returns (output, top-k indices)."""

    def __init__(self, experts=6, k=3):
        super().__init__()
        self.gate = torch.nn.Linear(4, experts)
        self.k = k

    def forward(self, x):
        idx = self.gate(x).topk(self.k, dim=-1).indices
        return x, idx


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = UserMoE()
        self.b = UserMoE()

    def forward(self, x):
        return self.b(self.a(x)[0])[0]


def test_user_adapter_and_errors(tmp_path):
    torch.manual_seed(2)
    net = Net()
    xs = [torch.randn(5, 4), torch.randn(8, 4)]
    with dynamoe.trace.record(net, tmp_path / "u.dmtrace", adapters={UserMoE: (lambda m, out: out[1], 6)}) as rec:
        for x in xs:
            net(x)
    assert rec.layer_names == ["a", "b"]
    loads, summary, err = replay_loads(tmp_path / "u.dmtrace", tmp_path)
    assert err == "" and "2 steps of 2 layers," in summary
    for step, x in enumerate(xs):
        expected = [0] * 6
        for m in (net.a, net.b):
            for c, n in zip(range(6), counts_from_logits(m.gate(x).detach(), 3, 6)):
                expected[c] += n
        assert [loads[(step, e)] for e in range(6)] == expected

    # training_only: eval-mode calls are not steps.
    net.eval()
    with dynamoe.trace.record(net, tmp_path / "t.dmtrace", adapters={UserMoE: (lambda m, out: out[1], 6)},
                              training_only=True) as rec:
        net(xs[0])
        net.train()
        net(xs[1])
    assert rec.steps == [1, 1]
    loads, _, _ = replay_loads(tmp_path / "t.dmtrace", tmp_path)
    assert sum(loads.values()) == 2 * 3 * len(xs[1]) and {s for s, _ in loads} == {0}

    # An adapter naming nothing, a router without an expert count, no router.
    with pytest.raises(ValueError, match="no module of the model matches the adapters for \\['c'\\]"):
        dynamoe.trace.record(net, tmp_path / "x.dmtrace", adapters={"a": (lambda m, o: o[1], 6), "c": lambda m, o: o})
    with pytest.raises(ValueError, match="module 'a': give its expert count"):
        dynamoe.trace.record(net, tmp_path / "x.dmtrace", adapters={"a": lambda m, o: o[1]})
    with pytest.raises(ValueError, match="no router found"):
        dynamoe.trace.record(torch.nn.Linear(2, 2), tmp_path / "x.dmtrace")
    # The failed calls left no hooks behind.
    assert not net.a._forward_hooks
    # An adapter returning something else fails the forward call that made it.
    rec = dynamoe.trace.record(net, tmp_path / "x.dmtrace", adapters={"a": (lambda m, o: "oops", 6)})
    with pytest.raises(ValueError, match="adapter of 'a' returned str"):
        net(xs[0])
    rec.close()
    # An index beyond the expert count is reported by close().
    rec = dynamoe.trace.record(net, tmp_path / "y.dmtrace", adapters={"a": (lambda m, o: o[1], 2)})
    net(xs[0])
    with pytest.raises(ValueError, match=r"layer 'a' step 0: expert indices must be in \[0, 2\)"):
        rec.close()


def test_a_failed_start_leaves_the_model_as_it_was(tmp_path):
    net = Net()
    with pytest.raises(FileNotFoundError):
        dynamoe.trace.record(net, tmp_path / "no" / "such" / "dir.dmtrace", adapters={UserMoE: (lambda m, o: o[1], 6)})
    assert not net.a._forward_hooks and not net.b._forward_hooks
    net(torch.randn(3, 4))  # no hook left to fail


def wait_for_writer_error(rec):
    deadline = time.monotonic() + 60  # the writer thread's turn on a loaded machine
    while rec._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec._error is not None


def test_a_writer_error_is_raised_once_then_briefly(tmp_path):
    torch.manual_seed(5)
    net = Net()
    rec = dynamoe.trace.record(net, tmp_path / "e.dmtrace", adapters={"a": (lambda m, o: o[1], 2)})
    net(torch.randn(3, 4))  # indices up to 5 of 2 experts: the writer fails
    wait_for_writer_error(rec)
    with pytest.raises(RuntimeError, match="recording to .*e.dmtrace failed: .*expert indices") as first:
        net(torch.randn(3, 4))
    assert isinstance(first.value.__cause__, ValueError)
    with pytest.raises(RuntimeError, match="recording stopped after an error") as second:
        net(torch.randn(3, 4))
    assert second.value is not first.value and second.value.__cause__ is None
    with pytest.raises(ValueError, match="expert indices must be in"):
        rec.close()


def test_exit_keeps_the_exception_of_the_body(tmp_path):
    net = Net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KeyError, match="from the body"):
            with dynamoe.trace.record(net, tmp_path / "k.dmtrace", adapters={"a": (lambda m, o: o[1], 2)}) as rec:
                net(torch.randn(3, 4))
                wait_for_writer_error(rec)
                raise KeyError("from the body")
    assert any("also failed" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert not net.a._forward_hooks


class MixtralSparseMoeBlock(torch.nn.Module):
    """Named like transformers' block, but returns the hidden states alone
    (as a transformers release that changed the block's output might)."""

    def __init__(self):
        super().__init__()
        self.gate = torch.nn.Linear(4, 8, bias=False)
        self.experts = torch.nn.ModuleList([torch.nn.Linear(4, 4)])
        self.num_experts, self.top_k = 8, 2

    def forward(self, x):
        return x


def test_an_unexpected_hf_block_output_names_the_way_out(tmp_path):
    block = MixtralSparseMoeBlock()
    with dynamoe.trace.record(block, tmp_path / "h.dmtrace"):
        with pytest.raises(TypeError, match=r"MixtralSparseMoeBlock returned a tensor of shape \[3, 4\]; .*"
                                            r"\(hidden_states, router_logits \[tokens, 8\]\).*transformers.*"
                                            r"adapters=\{MixtralSparseMoeBlock: \(fn, num_experts\)\}"):
            block(torch.randn(3, 4))


class Checkpointed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.moe = UserMoE()

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(lambda y: self.moe(y)[0] * 2, x)


def test_recomputed_forwards_are_not_steps(tmp_path):
    import torch.utils.checkpoint  # noqa: F401
    torch.manual_seed(6)
    net = Checkpointed()
    with dynamoe.trace.record(net, tmp_path / "r.dmtrace", adapters={UserMoE: (lambda m, o: o[1], 6)}) as rec:
        for _ in range(2):
            net(torch.randn(5, 4, requires_grad=True)).sum().backward()
    assert rec.steps == [2]  # the recompute of each backward is not a third and fourth


def test_damage_is_caught_by_the_checksums(tmp_path):
    torch.manual_seed(3)
    net = Net()
    with dynamoe.trace.record(net, tmp_path / "d.dmtrace", adapters={UserMoE: (lambda m, o: o[1], 6)}):
        for _ in range(4):
            net(torch.randn(3, 4))
    data = bytearray((tmp_path / "d.dmtrace").read_bytes())
    data[-20] ^= 0x40  # inside the last step record's counts
    (tmp_path / "d.dmtrace").write_bytes(bytes(data))
    r = subprocess.run([str(TOOL), "run", str(tmp_path / "d.dmtrace"), "--policies", "none"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    assert "damaged trace: lost 1 record" in r.stderr, r.stderr
    assert "4 steps of 2 layers (7 layer-steps)" in r.stdout


WORKER = r"""
import json, os, sys, torch
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import dynamoe.trace
from test_trace_record import Net, UserMoE, counts_from_logits
rank = int(sys.argv[4])
torch.distributed.init_process_group("gloo", init_method="file://" + sys.argv[5], rank=rank, world_size=2)
torch.manual_seed(10 + rank)
net = Net()
x = torch.randn(4 + rank, 4)
with dynamoe.trace.record(net, sys.argv[3], adapters={UserMoE: (lambda m, o: o[1], 6)}) as rec:
    net(x)
expected = [a + b for a, b in zip(counts_from_logits(net.a.gate(x).detach(), 3, 6),
                                  counts_from_logits(net.b.gate(x).detach(), 3, 6))]
json.dump({"path": rec.path, "expected": expected}, open(sys.argv[3] + f".{rank}.json", "w"))
torch.distributed.destroy_process_group()
"""


def run_two_ranks(script, tmp_path, job, timeout):
    """Two real processes of one gloo group (a file store: no port to pick),
    both killed if either fails or hangs."""
    procs = []
    try:
        for rank in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", script, str(ROOT / "python"), str(pathlib.Path(__file__).parent), str(job),
                 str(rank), str(tmp_path / "store")],
                env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            assert p.returncode == 0, out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_rank_comes_from_torch_distributed(tmp_path):
    run_two_ranks(WORKER, tmp_path, tmp_path / "job.dmtrace", 120)
    for rank in range(2):
        info = json.loads((tmp_path / f"job.dmtrace.{rank}.json").read_text())
        path = tmp_path / f"job.rank{rank}.dmtrace"
        assert info["path"] == str(path)
        # Header frame payload: u32 world (1: this rank's row), i32 rank.
        world, header_rank = struct.unpack_from("<Ii", path.read_bytes(), 8 + 4 + 16)
        assert (world, header_rank) == (1, rank)
        loads, _, err = replay_loads(path, tmp_path)
        assert err == ""
        assert [loads[(0, e)] for e in range(6)] == info["expected"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_indices_of_cuda_routers_are_counted(tmp_path):
    torch.manual_seed(4)
    net = Net().cuda()
    xs = [torch.randn(64, 4, device="cuda") for _ in range(3)]
    with dynamoe.trace.record(net, tmp_path / "c.dmtrace", adapters={UserMoE: (lambda m, o: o[1], 6)}):
        for x in xs:
            net(x)
    loads, _, err = replay_loads(tmp_path / "c.dmtrace", tmp_path)
    assert err == ""
    for step, x in enumerate(xs):
        expected = [a + b for a, b in zip(counts_from_logits(net.a.gate(x).detach().cpu(), 3, 6),
                                          counts_from_logits(net.b.gate(x).detach().cpu(), 3, 6))]
        assert [loads[(step, e)] for e in range(6)] == expected


MIXTRAL_WORKER = r"""
import json, sys, torch
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import dynamoe  # dynamoe.trace through the package's lazy names
from test_trace_record import tiny_hf, run_batches, counts_from_logits
rank = int(sys.argv[4])
torch.distributed.init_process_group("gloo", init_method="file://" + sys.argv[5], rank=rank, world_size=2)
torch.manual_seed(0)  # the same weights on every rank, as in data parallelism
model = tiny_hf("mixtral")
torch.manual_seed(100 + rank)  # each rank its own data, of its own sizes
with dynamoe.trace.record(model, sys.argv[3]):
    logits = run_batches(model, [(1 + rank, 6), (2, 5 + 3 * rank), (1, 12)])
counts = [[counts_from_logits(l, 2, 8, softmax=True) for l in per_layer] for per_layer in logits]
json.dump(counts, open(sys.argv[3] + f".{rank}.json", "w"))
torch.distributed.destroy_process_group()
"""


def test_ranks_of_a_job_replay_merged(tmp_path):
    """Two real processes record a tiny Mixtral on different data; `run PATH`
    merges PATH.rank{0,1}.dmtrace: row r of every (step, layer) matrix must be
    rank r's counts from its own output_router_logits."""
    pytest.importorskip("transformers")
    job = tmp_path / "job.dmtrace"
    run_two_ranks(MIXTRAL_WORKER, tmp_path, job, 180)
    assert not job.exists() and (tmp_path / "job.rank1.dmtrace").exists()
    expected = [json.loads((tmp_path / f"job.dmtrace.{r}.json").read_text()) for r in range(2)]
    assert expected[0] != expected[1]  # different data: a swapped or duplicated row would show

    loads, summary, err = replay_loads(job, tmp_path, "--export-csv", str(tmp_path / "merged.csv"))
    assert err == ""
    assert "3 steps of 2 layers, recorded on 2 ranks, replayed on 2" in summary
    names = ["model.layers.0.block_sparse_moe", "model.layers.1.block_sparse_moe"]
    got = {}
    with open(tmp_path / "merged.csv") as f:
        for row in csv.DictReader(f):
            got[(int(row["step"]), row["layer"], int(row["rank"]), int(row["expert"]))] = int(row["count"])
    assert len(got) == 3 * 2 * 2 * 8
    for rank in range(2):
        for step in range(3):
            for layer, name in enumerate(names):
                assert [got[(step, name, rank, e)] for e in range(8)] == expected[rank][step][layer], (rank, step)
    for step in range(3):  # expert_load.csv: summed over layers and ranks
        assert [loads[(step, e)] for e in range(8)] == [
            sum(expected[r][step][l][e] for r in range(2) for l in range(2)) for e in range(8)]


def write_rank_file(path, rank, layers, steps, world=1):
    """A dynamoe.trace.record file written by hand: layers [(name, experts)],
    steps [(step, layer, counts)]."""
    specs = [dict(name=n, num_experts=e, d_model=0, d_hidden=0, gated=0, bias=0, bytes_per_element=2)
             for n, e in layers]
    head = dynamoe.trace._header(rank, specs)
    if world != 1:  # the header frame's payload starts with the world size: re-frame it
        body = struct.pack("<I", world) + head[8 + 4 + 16 + 4:]  # after magic, version, frame head, world
        head = head[:12] + dynamoe.trace._frame(body)
    path.write_bytes(head + b"".join(dynamoe.trace._step_record(s, l, c) for s, l, c in steps))


def step_record(step, layer, rows):
    """A step record of len(rows) ranks (kept == routed), valid checksums."""
    flat = [c for row in rows for c in row]
    counts = struct.pack(f"<{len(flat)}q", *flat)
    return dynamoe.trace._frame(struct.pack("<BqIII", 2, step, layer, len(rows), len(rows[0])) + counts + counts +
                                struct.pack("<BI", 0, 0))


GOOD = ([("moe", 4)], [(0, 0, [1, 2, 0, 1]), (1, 0, [0, 0, 3, 1])])


@pytest.mark.parametrize("case,rank1,message", [
    ("ok", (GOOD[0], [(0, 0, [3, 0, 0, 1]), (1, 0, [2, 2, 0, 0])]), None),
    ("missing", None, r"rank files missing: job\.rank\{1\}\.dmtrace \(found 2 of ranks 0\.\.2"),
    ("experts", ([("moe", 5)], [(0, 0, [1, 2, 0, 1, 0]), (1, 0, [0, 0, 3, 1, 0])]),
     r"job\.rank1\.dmtrace: layer 0 is 'moe' with 5 experts; in .*job\.rank0\.dmtrace it is 'moe' with 4"),
    ("name", ([("other", 4)], GOOD[1]), r"job\.rank1\.dmtrace: layer 0 is 'other' with 4 experts"),
    ("layers", ([("moe", 4), ("moe2", 4)], GOOD[1]), r"job\.rank1\.dmtrace declares 2 layers; .* declares 1"),
    ("gap", (GOOD[0], [GOOD[1][0], (2, 0, [1, 1, 1, 1])]),
     r"job\.rank1\.dmtrace has no step 1 of layer 'moe', which .*job\.rank0\.dmtrace has, but has later steps"),
    ("twice", (GOOD[0], GOOD[1] + [(1, 0, [1, 1, 1, 1])]), r"job\.rank1\.dmtrace: step 1 of layer 'moe' is recorded twice"),
    ("world", "world", r"job\.rank1\.dmtrace holds the counts of 2 ranks, not one"),
    ("rank", "rank", r"job\.rank1\.dmtrace: its header names rank 0, its name rank 1"),
    # A 1-rank header over a 2-row step: copied into row 1 it would write past the merged matrix.
    ("step world", "step world",
     r"job\.rank1\.dmtrace: step 0 of layer 'moe' with 4 experts counts 2 ranks x 4 experts; .* are 1 x 4"),
    ("step experts", "step experts",
     r"job\.rank1\.dmtrace: step 0 of layer 'moe' with 4 experts counts 1 ranks x 5 experts"),
])
def test_merge_errors_name_the_file(case, rank1, message, tmp_path):
    write_rank_file(tmp_path / "job.rank0.dmtrace", 0, *GOOD)
    if case == "missing":
        write_rank_file(tmp_path / "job.rank2.dmtrace", 2, *GOOD)
    elif rank1 == "world":
        write_rank_file(tmp_path / "job.rank1.dmtrace", 1, GOOD[0], [], world=2)
    elif rank1 == "rank":
        write_rank_file(tmp_path / "job.rank1.dmtrace", 0, *GOOD)
    elif rank1 in ("step world", "step experts"):
        write_rank_file(tmp_path / "job.rank1.dmtrace", 1, GOOD[0], [])
        rows = [[1, 2, 3, 4], [5, 6, 7, 8]] if rank1 == "step world" else [[1, 2, 3, 4, 5]]
        with open(tmp_path / "job.rank1.dmtrace", "ab") as f:
            f.write(step_record(0, 0, rows))
    else:
        write_rank_file(tmp_path / "job.rank1.dmtrace", 1, *rank1)
    r = subprocess.run([str(TOOL), "run", str(tmp_path / "job.dmtrace"), "--policies", "none", "--export-csv",
                        str(tmp_path / "m.csv")], capture_output=True, text=True, timeout=60)
    if message is None:
        assert r.returncode == 0, r.stderr
        assert "2 steps of 1 layer, recorded on 2 ranks" in r.stdout
        rows = (tmp_path / "m.csv").read_text().splitlines()
        # step,layer,rank,expert,count: each row from its own rank's file
        assert rows[1:] == [f"{s},moe,{r},{e},{c}" for s in range(2) for r in range(2)
                            for e, c in enumerate([GOOD[1], [(0, 0, [3, 0, 0, 1]), (1, 0, [2, 2, 0, 0])]][r][s][2])]
        return
    assert r.returncode == 1, r.stdout
    assert re.search(message, r.stderr), r.stderr


@pytest.mark.parametrize("short_rank", [0, 1])
def test_merge_drops_the_steps_after_a_file_ends(short_rank, tmp_path):
    """A killed job: one rank's file ends early (steps 0..1 of 0..3), the other
    stops between the layers of step 3. The steps a file lacks after its end
    are dropped with a warning naming it; what every rank has is merged."""
    layers = [("moe", 4), ("moe2", 4)]
    counts = {r: {(s, l): [r + 1, s, l, 1] for s in range(4) for l in range(2)} for r in range(2)}
    have = {short_rank: [(s, l) for s in range(2) for l in range(2)],
            1 - short_rank: [(s, l) for s in range(4) for l in range(2)][:-1]}
    for r in range(2):
        write_rank_file(tmp_path / f"job.rank{r}.dmtrace", r, layers, [(s, l, counts[r][(s, l)]) for s, l in have[r]])
    r = subprocess.run([str(TOOL), "run", str(tmp_path / "job"), "--policies", "none", "--export-csv",
                        str(tmp_path / "m.csv")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "2 steps of 2 layers, recorded on 2 ranks" in r.stdout  # steps 0 and 1 of both layers
    assert re.search(rf"job\.rank{short_rank}\.dmtrace ends at step 1: 2 steps \(2\.\.3\) that other ranks recorded "
                     "after it dropped", r.stderr), r.stderr
    assert f"job.rank{1 - short_rank}.dmtrace ends" not in r.stderr  # its last step is 3, whose moe2 nobody has
    rows = (tmp_path / "m.csv").read_text().splitlines()[1:]
    assert rows == [f"{s},{n},{rk},{e},{counts[rk][(s, l)][e]}" for s in range(2) for l, (n, _) in enumerate(layers)
                    for rk in range(2) for e in range(4)]


def test_merge_drops_a_step_lost_to_damage(tmp_path):
    write_rank_file(tmp_path / "job.rank0.dmtrace", 0, *GOOD)
    write_rank_file(tmp_path / "job.rank1.dmtrace", 1, *GOOD)
    data = bytearray((tmp_path / "job.rank1.dmtrace").read_bytes())
    data[-20] ^= 0x40  # inside rank 1's last step record (step 1)
    (tmp_path / "job.rank1.dmtrace").write_bytes(bytes(data))
    r = subprocess.run([str(TOOL), "run", str(tmp_path / "job"), "--policies", "none"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "1 step of 1 layer, recorded on 2 ranks" in r.stdout
    assert "job.rank1.dmtrace: record at byte" in r.stderr and "1 steps dropped" in r.stderr, r.stderr


def test_trace_is_reachable_from_import_dynamoe():
    """`import dynamoe` then dynamoe.trace.record(...): the package's lazy name
    imports the submodule (a fresh interpreter: this one imported it already)."""
    code = ("import sys, dynamoe\n"
            "assert 'dynamoe.trace' not in sys.modules\n"
            "assert 'trace' in dir(dynamoe)\n"
            "rec = dynamoe.trace.record\n"
            "import dynamoe.trace as t\n"
            "assert rec is t.record and dynamoe.trace is t\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT / "python")),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
