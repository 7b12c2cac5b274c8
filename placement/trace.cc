// Trace encoding and the tolerant reader (docs/trace-format.md).
#include "placement/trace.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "placement/crc32.h"

namespace dynamoe::placement {
namespace {

constexpr char kMagic[8] = {'D', 'M', 'O', 'E', 'T', 'R', 'C', '\n'};
constexpr uint8_t kLayerRecord = 1, kStepRecord = 2;
// Bounds that keep a corrupt length or count from asking for absurd memory.
constexpr uint32_t kMaxPayload = 1u << 30;
constexpr uint32_t kMaxDim = 1u << 24;

class Writer {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) { Raw(&v, 4); }
  void I32(int32_t v) { Raw(&v, 4); }
  void I64(int64_t v) { Raw(&v, 8); }
  void F64(double v) { Raw(&v, 8); }
  void Str(const std::string& s) {
    U32(static_cast<uint32_t>(s.size()));
    out_.append(s);
  }
  std::string& bytes() { return out_; }

 private:
  void Raw(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }  // little-endian hosts
  std::string out_;
};

// Bounds-checked cursor over one payload; the first failure sticks.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : b_(bytes) {}
  bool ok() const { return ok_; }
  size_t left() const { return b_.size() - pos_; }
  uint8_t U8() { uint8_t v = 0; Raw(&v, 1); return v; }
  uint32_t U32() { uint32_t v = 0; Raw(&v, 4); return v; }
  int32_t I32() { int32_t v = 0; Raw(&v, 4); return v; }
  int64_t I64() { int64_t v = 0; Raw(&v, 8); return v; }
  double F64() { double v = 0; Raw(&v, 8); return v; }
  std::string Str() {
    const uint32_t n = U32();
    if (!ok_ || n > left()) return Fail(), std::string();
    std::string s(b_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  // n elements of `width` bytes must still fit (checked before allocating).
  bool Fits(uint64_t n, uint64_t width) {
    if (ok_ && n <= left() / width) return true;
    Fail();
    return false;
  }

 private:
  void Fail() { ok_ = false; }
  void Raw(void* p, size_t n) {
    if (!ok_ || n > left()) return Fail();
    std::memcpy(p, b_.data() + pos_, n);
    pos_ += n;
  }
  std::string_view b_;
  size_t pos_ = 0;
  bool ok_ = true;
};

void PutLayer(Writer& w, const TraceLayerSpec& l) {
  w.Str(l.name);
  w.U32(static_cast<uint32_t>(l.num_experts));
  w.U32(static_cast<uint32_t>(l.d_model));
  w.U32(static_cast<uint32_t>(l.d_hidden));
  w.U8(l.gated ? 1 : 0);
  w.U8(l.bias ? 1 : 0);
  w.U32(static_cast<uint32_t>(l.bytes_per_element));
}

TraceLayerSpec GetLayer(Reader& r) {
  TraceLayerSpec l;
  l.name = r.Str();
  l.num_experts = r.U32();
  l.d_model = r.U32();
  l.d_hidden = r.U32();
  l.gated = r.U8() != 0;
  l.bias = r.U8() != 0;
  l.bytes_per_element = r.U32();
  return l;
}

// Length and checksum in front of a payload.
std::string Frame(std::string payload) {
  Writer w;
  w.U32(static_cast<uint32_t>(payload.size()));
  w.U32(Crc32(payload.data(), payload.size()));
  w.bytes().append(payload);
  return std::move(w.bytes());
}

absl::StatusOr<CountMatrix> GetMatrix(Reader& r, uint32_t world, uint32_t experts, const char* what) {
  const uint64_t n = static_cast<uint64_t>(world) * experts;
  if (!r.Fits(n, 8)) return absl::InvalidArgumentError(absl::StrCat(what, " matrix does not fit the record"));
  std::vector<int64_t> counts(n);
  for (auto& c : counts) c = r.I64();
  return CountMatrix::Make(world, experts, std::move(counts));
}

absl::StatusOr<TraceStep> GetStep(Reader& r, const Trace& t) {
  TraceStep s;
  s.step = r.I64();
  s.layer = r.U32();
  const uint32_t world = r.U32(), experts = r.U32();
  if (!r.ok()) return absl::InvalidArgumentError("step record too short");
  if (s.layer >= static_cast<int64_t>(t.layers.size()))
    return absl::InvalidArgumentError(
        absl::StrCat("step record names layer ", s.layer, " but ", t.layers.size(), " are declared"));
  if (world == 0 || experts == 0 || world > kMaxDim || experts > kMaxDim)
    return absl::InvalidArgumentError(absl::StrCat("step record has world ", world, " x experts ", experts));
  DYNAMOE_ASSIGN_OR_RETURN(s.kept, GetMatrix(r, world, experts, "kept"));
  DYNAMOE_ASSIGN_OR_RETURN(s.routed, GetMatrix(r, world, experts, "routed"));
  if (r.U8() != 0) {
    Plan p;
    p.world_size = world, p.num_experts = experts;
    p.predicted_step_seconds = r.F64();
    if (!r.Fits(experts, 4)) return absl::InvalidArgumentError("plan does not fit the record");
    p.owner.resize(experts);
    for (auto& o : p.owner) o = r.I32();
    p.copies.resize(experts);
    for (auto& c : p.copies) {
      const uint32_t n = r.U32();
      if (!r.Fits(n, 4)) return absl::InvalidArgumentError("plan copies do not fit the record");
      c.resize(n);
      for (auto& rank : c) rank = r.I32();
    }
    for (uint32_t e = 0; e < experts; ++e) {
      if (p.owner[e] < 0 || static_cast<uint32_t>(p.owner[e]) >= world)
        return absl::InvalidArgumentError(absl::StrCat("plan owner of expert ", e, " is rank ", p.owner[e]));
      for (int32_t rank : p.copies[e])
        if (rank < 0 || static_cast<uint32_t>(rank) >= world)
          return absl::InvalidArgumentError(absl::StrCat("plan copy of expert ", e, " on rank ", rank));
    }
    s.plan = std::move(p);
  }
  const uint32_t phases = r.U32();
  if (!r.Fits(phases, 8)) return absl::InvalidArgumentError("phase timings do not fit the record");
  s.phase_seconds.resize(phases);
  for (auto& v : s.phase_seconds) v = r.F64();
  if (!r.ok()) return absl::InvalidArgumentError("step record too short");
  return s;
}

}  // namespace

std::string EncodeTraceHeader(int64_t world_size, int64_t rank, const std::vector<std::string>& phase_names,
                              const std::vector<TraceLayerSpec>& layers) {
  Writer body;
  body.U32(static_cast<uint32_t>(world_size));
  body.I32(static_cast<int32_t>(rank));
  body.U32(static_cast<uint32_t>(phase_names.size()));
  for (const auto& n : phase_names) body.Str(n);
  body.U32(static_cast<uint32_t>(layers.size()));
  for (const auto& l : layers) PutLayer(body, l);
  Writer w;
  w.bytes().append(kMagic, sizeof(kMagic));
  w.U32(kTraceVersion);
  return std::move(w.bytes()) + Frame(std::move(body.bytes()));
}

std::string EncodeLayerRecord(const TraceLayerSpec& layer) {
  Writer w;
  w.U8(kLayerRecord);
  PutLayer(w, layer);
  return Frame(std::move(w.bytes()));
}

std::string EncodeStepRecord(const TraceStep& s) {
  Writer w;
  w.U8(kStepRecord);
  w.I64(s.step);
  w.U32(static_cast<uint32_t>(s.layer));
  w.U32(static_cast<uint32_t>(s.kept.world_size));
  w.U32(static_cast<uint32_t>(s.kept.num_experts));
  for (int64_t c : s.kept.counts) w.I64(c);
  const bool routed = s.routed.counts.size() == s.kept.counts.size();
  for (size_t i = 0; i < s.kept.counts.size(); ++i) w.I64(routed ? s.routed.counts[i] : s.kept.counts[i]);
  w.U8(s.plan ? 1 : 0);
  if (s.plan) {
    w.F64(s.plan->predicted_step_seconds);
    for (int32_t o : s.plan->owner) w.I32(o);
    for (const auto& c : s.plan->copies) {
      w.U32(static_cast<uint32_t>(c.size()));
      for (int32_t r : c) w.I32(r);
    }
  }
  w.U32(static_cast<uint32_t>(s.phase_seconds.size()));
  for (double v : s.phase_seconds) w.F64(v);
  return Frame(std::move(w.bytes()));
}

absl::StatusOr<Trace> ParseTrace(std::string_view bytes) {
  Trace t;
  if (bytes.size() < sizeof(kMagic) + 4 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    return absl::InvalidArgumentError(
        "not a dynamoe trace: expected the 8-byte magic \"DMOETRC\\n\" at offset 0 (docs/trace-format.md)");
  std::memcpy(&t.version, bytes.data() + sizeof(kMagic), 4);
  if (t.version != kTraceVersion)
    return absl::UnimplementedError(absl::StrCat("trace version ", t.version, " is not supported; this build reads ",
                                                 "version ", kTraceVersion));
  size_t pos = sizeof(kMagic) + 4;
  // Each frame: u32 length, u32 crc, payload. Returns nullopt when cut short.
  auto next = [&](std::string_view* payload, uint32_t* crc_ok) -> bool {
    if (bytes.size() - pos < 8) return false;
    uint32_t len, crc;
    std::memcpy(&len, bytes.data() + pos, 4);
    std::memcpy(&crc, bytes.data() + pos + 4, 4);
    if (len > kMaxPayload || bytes.size() - pos - 8 < len) return false;
    *payload = bytes.substr(pos + 8, len);
    *crc_ok = Crc32(payload->data(), payload->size()) == crc;
    pos += 8 + len;
    return true;
  };
  std::string_view payload;
  uint32_t crc_ok = 0;
  if (!next(&payload, &crc_ok))
    return absl::InvalidArgumentError(absl::StrCat("trace header is cut short (", bytes.size(), " bytes)"));
  if (!crc_ok) return absl::InvalidArgumentError("trace header checksum mismatch: the file is corrupt");
  {
    Reader r(payload);
    t.world_size = r.U32();
    t.rank = r.I32();
    const uint32_t phases = r.U32();
    if (!r.Fits(phases, 4)) return absl::InvalidArgumentError("trace header: phase names do not fit");
    for (uint32_t i = 0; i < phases; ++i) t.phase_names.push_back(r.Str());
    const uint32_t layers = r.U32();
    if (!r.Fits(layers, 4)) return absl::InvalidArgumentError("trace header: layer specs do not fit");
    for (uint32_t i = 0; i < layers; ++i) t.layers.push_back(GetLayer(r));
    if (!r.ok()) return absl::InvalidArgumentError("trace header is malformed");
  }
  while (pos < bytes.size()) {
    const size_t at = pos;
    if (!next(&payload, &crc_ok)) {
      t.stats.truncated = true;
      t.stats.warnings.push_back(absl::StrCat("the last record (at byte ", at, ") is cut short; ",
                                              bytes.size() - at, " trailing bytes ignored"));
      break;
    }
    if (!crc_ok) {
      ++t.stats.skipped_corrupt;
      t.stats.warnings.push_back(absl::StrCat("record at byte ", at, ": checksum mismatch, skipped"));
      continue;
    }
    Reader r(payload);
    const uint8_t kind = r.U8();
    if (kind == kLayerRecord) {
      TraceLayerSpec l = GetLayer(r);
      if (!r.ok()) return absl::InvalidArgumentError(absl::StrCat("layer record at byte ", at, " is malformed"));
      t.layers.push_back(std::move(l));
    } else if (kind == kStepRecord) {
      absl::StatusOr<TraceStep> s = GetStep(r, t);
      if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("record at byte ", at, ": ", s.status().message()));
      t.steps.push_back(*std::move(s));
    } else {
      ++t.stats.skipped_unknown;
      t.stats.warnings.push_back(absl::StrCat("record at byte ", at, ": unknown kind ", int(kind), ", skipped"));
      continue;
    }
    ++t.stats.records;
  }
  return t;
}

absl::StatusOr<Trace> ReadTraceFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open trace '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<Trace> t = ParseTrace(ss.str());
  if (!t.ok()) return absl::Status(t.status().code(), absl::StrCat(path, ": ", t.status().message()));
  for (const auto& w : t->stats.warnings) DYNAMOE_LOG(kWarning) << path << ": " << w;
  return t;
}

}  // namespace dynamoe::placement
