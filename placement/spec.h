// What a placement decision needs to know besides the counts: the cluster
// (links and compute) and the layer (sizes of a token row and of an expert).
// Plain structs; runtime/ fills them from the configuration table.
#pragma once

#include <cstdint>

namespace dynamoe::placement {

struct ClusterSpec {
  int64_t world_size = 1;      // ranks of the expert-parallel group
  int64_t ranks_per_node = 0;  // 0: every rank on one node
  double intra_node_bw = 1.5e11;        // bytes/s between ranks of one node
  double inter_node_bw = 6.25e9;        // bytes/s between nodes
  double intra_node_latency_s = 5e-6;   // per message
  double inter_node_latency_s = 5e-6;
  double flops = 1.15e13;  // expert GEMM throughput of one rank, FLOP/s

  int64_t NodeOf(int64_t rank) const { return ranks_per_node > 0 ? rank / ranks_per_node : 0; }
  bool SameNode(int64_t a, int64_t b) const { return NodeOf(a) == NodeOf(b); }
  bool MultiNode() const { return ranks_per_node > 0 && ranks_per_node < world_size; }
  double Bandwidth(int64_t a, int64_t b) const { return SameNode(a, b) ? intra_node_bw : inter_node_bw; }
  double Latency(int64_t a, int64_t b) const {
    return SameNode(a, b) ? intra_node_latency_s : inter_node_latency_s;
  }
};

struct LayerSpec {
  int64_t d_model = 0;
  int64_t d_hidden = 0;
  bool gated = false;  // a third matrix w3 (SwiGLU-style)
  bool bias = false;   // b1 [d_hidden] and b2 [d_model]
  int64_t bytes_per_element = 4;

  int64_t Matrices() const { return gated ? 3 : 2; }
  // Bytes moved per token row in the all-to-all.
  double RowBytes() const { return static_cast<double>(d_model * bytes_per_element); }
  // Bytes of one expert's parameters (= of its gradient).
  double ExpertBytes() const {
    const int64_t elems = Matrices() * d_model * d_hidden + (bias ? d_model + d_hidden : 0);
    return static_cast<double>(elems * bytes_per_element);
  }
  // Forward FLOP per token row: one multiply-add per weight.
  double ForwardFlopsPerRow() const { return 2.0 * Matrices() * d_model * d_hidden; }
};

}  // namespace dynamoe::placement
