"""Naive MoE reference: plain per-token loops, written from the issue's
semantics and independent of dynamoe's kernels. Autograd through it gives the
reference gradients."""
import math

import torch

ACT = {"gelu": torch.nn.functional.gelu, "relu": torch.relu, "silu": torch.nn.functional.silu}


def capacity(num_tokens, top_k, num_experts, capacity_factor, min_capacity):
    if capacity_factor == 0:
        return None
    return max(min_capacity, math.ceil(top_k * num_tokens / num_experts * abs(capacity_factor)))


def choose(scores_row, bias, top_k):
    """Top-k by score (+ bias), lower expert index first on ties."""
    key = [float(scores_row[e]) + (float(bias[e]) if bias is not None else 0.0) for e in range(len(scores_row))]
    return sorted(range(len(key)), key=lambda e: (-key[e], e))[:top_k]


def expert(x_row, p, e, activation):
    h = x_row @ p["w1"][e]
    if p.get("b1") is not None:
        h = h + p["b1"][e]
    a = ACT[activation](h)
    if p.get("w3") is not None:
        a = a * (x_row @ p["w3"][e])
    y = a @ p["w2"][e]
    if p.get("b2") is not None:
        y = y + p["b2"][e]
    return y


def moe(x, gate_weight, p, top_k, capacity_factor=0.0, min_capacity=4, normalize=None, activation="gelu",
        expert_bias=None, keep_order=None):
    """Returns (y, balance_loss, kept_counts). keep_order(e, claims) may reorder an
    expert's claims [(j, t), ...] before capacity is applied (for RTS fixtures)."""
    normalize = top_k > 1 if normalize is None else normalize
    rdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    T, E = x.shape[0], gate_weight.shape[0]
    logits = x.to(rdtype) @ gate_weight.to(rdtype).t()
    scores = torch.softmax(logits, -1)
    choices = [choose(scores[t], expert_bias, top_k) for t in range(T)]
    cap = capacity(T, top_k, E, capacity_factor, min_capacity)
    kept = set()
    for e in range(E):
        claims = [(j, t) for j in range(top_k) for t in range(T) if choices[t][j] == e]
        if keep_order is not None:
            claims = keep_order(e, claims)
        kept.update(claims if cap is None else claims[:cap])
    kept_counts = [0] * E
    rows = []
    for t in range(T):
        w = scores[t, choices[t]]
        if normalize:
            w = w / w.sum()
        acc = torch.zeros(x.shape[1], dtype=x.dtype)
        for j in range(top_k):
            if (j, t) in kept:
                e = choices[t][j]
                kept_counts[e] += 1
                acc = acc + (w[j] * expert(x[t], p, e, activation).to(rdtype)).to(x.dtype)
        rows.append(acc)
    y = torch.stack(rows) if rows else x[:0] * 0
    if T:
        routed = torch.zeros(E, dtype=rdtype)
        for t in range(T):
            for e in choices[t]:
                routed[e] += 1
        balance = E * (scores.mean(0) * routed / (T * top_k)).sum()
    else:
        balance = logits.sum() * 0
    return y, balance, kept_counts


_M64 = (1 << 64) - 1


def rts_priority(seed, step, token, choice):
    """dynamoe's documented RTS priority, restated in Python integers: the
    splitmix64 finaliser of seed*0x9E37.. ^ step*0xBF58.. ^ token*0x94D0.. ^ choice,
    advanced by the golden-ratio increment, top 53 bits as a double in [0, 1)
    (kernels/kernels.h). It plays DeepSpeed's per-(token, expert) uniform draw
    in top1gating (../shared/seeds/000: mask1 * uniform(mask1.shape), then
    topk(capacity) per expert), made a pure function so every rank agrees."""
    z = ((seed * 0x9E3779B97F4A7C15) ^ (step * 0xBF58476D1CE4E5B9) ^ (token * 0x94D049BB133111EB) ^ choice) & _M64
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


def rts_keep_order(seed, step):
    """keep_order for moe(): each expert's claims by choice rank, then by
    descending RTS priority (DeepSpeed keeps the highest draws)."""
    return lambda e, claims: sorted(claims, key=lambda jt: (jt[0], -rts_priority(seed, step, jt[1], jt[0])))
