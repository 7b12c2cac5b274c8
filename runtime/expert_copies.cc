#include "runtime/expert_copies.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "common/status.h"
#include "monitor/phases.h"

namespace dynamoe::runtime {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Which local experts go to which rank, and which copies come from where.
struct Sharing : torch::CustomClassHolder {
  CommunicatorPtr comm;
  std::string layer;
  std::vector<int64_t> send_local;     // local expert index per sent row, destination-major
  std::vector<int64_t> send_rows, recv_rows;  // per rank
  int64_t num_copies = 0;
  std::vector<std::vector<int64_t>> shapes;  // per parameter, one expert's shape
  std::vector<int64_t> numels;
};

at::Tensor Exchange(const Sharing& s, const at::Tensor& rows, const std::vector<int64_t>& send,
                    const std::vector<int64_t>& recv, int64_t out_rows, monitor::Phase phase, bool backward) {
  at::Tensor out = at::empty({out_rows, rows.size(1)}, rows.options());
  ThrowIfError(s.comm->AllToAll(rows, out, send, recv, {s.layer, monitor::PhaseName(phase), backward}));
  return out;
}

class ShareFunction : public torch::autograd::Function<ShareFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList params, c10::intrusive_ptr<Sharing> s) {
    int64_t row_len = 0;
    for (int64_t n : s->numels) row_len += n;
    at::Tensor send = at::empty({static_cast<int64_t>(s->send_local.size()), row_len}, params[0].options());
    for (size_t j = 0; j < s->send_local.size(); ++j) {
      int64_t off = 0;
      for (size_t i = 0; i < params.size(); ++i) {
        send[j].narrow(0, off, s->numels[i]).copy_(params[i][s->send_local[j]].reshape({-1}));
        off += s->numels[i];
      }
    }
    const at::Tensor recv = Exchange(*s, send, s->send_rows, s->recv_rows, s->num_copies, monitor::Phase::kShadowBroadcast,
                                     false);
    variable_list copies;
    int64_t off = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      std::vector<int64_t> shape = {s->num_copies};
      shape.insert(shape.end(), s->shapes[i].begin(), s->shapes[i].end());
      copies.push_back(recv.narrow(1, off, s->numels[i]).contiguous().view(shape));
      off += s->numels[i];
    }
    ctx->saved_data["sharing"] = c10::IValue::make_capsule(s);
    ctx->saved_data["experts_per_rank"] = params[0].size(0);
    return copies;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = c10::static_intrusive_pointer_cast<Sharing>(ctx->saved_data["sharing"].toCapsule());
    const int64_t local = ctx->saved_data["experts_per_rank"].toInt();
    int64_t row_len = 0;
    for (int64_t n : s->numels) row_len += n;
    at::TensorOptions options;
    for (const auto& g : grads)
      if (g.defined()) options = g.options();
    at::Tensor rows = at::zeros({s->num_copies, row_len}, options);
    int64_t off = 0;
    for (size_t i = 0; i < grads.size(); ++i) {
      if (grads[i].defined()) rows.narrow(1, off, s->numels[i]).copy_(grads[i].reshape({s->num_copies, s->numels[i]}));
      off += s->numels[i];
    }
    const at::Tensor back = Exchange(*s, rows, s->recv_rows, s->send_rows,
                                     static_cast<int64_t>(s->send_local.size()), monitor::Phase::kShadowReduce, true);
    variable_list out;
    off = 0;
    for (size_t i = 0; i < grads.size(); ++i) {
      std::vector<int64_t> shape = {local};
      shape.insert(shape.end(), s->shapes[i].begin(), s->shapes[i].end());
      at::Tensor g = at::zeros(shape, options);
      // Arrivals are destination-major, so each expert's copies add up in rank order.
      for (size_t j = 0; j < s->send_local.size(); ++j)
        g[s->send_local[j]].add_(back[j].narrow(0, off, s->numels[i]).view(s->shapes[i]));
      out.push_back(g);
      off += s->numels[i];
    }
    out.emplace_back();  // the Sharing capsule
    return out;
  }
};

}  // namespace

std::vector<at::Tensor> FetchCopies(const std::vector<at::Tensor>& params, const placement::Plan& plan,
                                     const CommunicatorPtr& comm, const std::string& layer) {
  DYNAMOE_THROW_IF(params.empty(), layer, ": FetchCopies needs at least one parameter");
  const int64_t me = comm->rank(), P = comm->size(), per_rank = plan.experts_per_rank();
  auto s = c10::make_intrusive<Sharing>();
  s->comm = comm;
  s->layer = layer;
  s->send_rows.assign(P, 0);
  s->recv_rows.assign(P, 0);
  for (int64_t d = 0; d < P; ++d)
    for (int64_t l = 0; l < per_rank; ++l) {
      const int64_t e = me * per_rank + l;
      if (d != me && plan.Holds(d, e)) {
        s->send_local.push_back(l);
        ++s->send_rows[d];
      }
    }
  const std::vector<int64_t> held = plan.CopiesOn(me);
  for (int64_t e : held) ++s->recv_rows[plan.owner[e]];
  s->num_copies = static_cast<int64_t>(held.size());
  for (const at::Tensor& p : params) {
    DYNAMOE_THROW_IF(p.size(0) != per_rank, layer, ": expert parameter has ", p.size(0), " experts, expected ",
                     per_rank);
    s->shapes.push_back(p.sizes().slice(1).vec());
    s->numels.push_back(p[0].numel());
  }
  return ShareFunction::apply(at::TensorList(params), s);
}

}  // namespace dynamoe::runtime
