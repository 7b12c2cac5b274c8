// Trace encoding and the tolerant reader (docs/trace-format.md).
#include "placement/trace.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "placement/crc32.h"

namespace dynamoe::placement {
namespace {

constexpr char kMagic[8] = {'D', 'M', 'O', 'E', 'T', 'R', 'C', '\n'};
// Starts every version-2 frame: what the reader looks for after damage.
constexpr char kSync[4] = {'\xA7', 'R', 'E', 'C'};
constexpr uint8_t kLayerRecord = 1, kStepRecord = 2;
// A version-2 layer record's number: "the next one" (the writer did not say).
constexpr uint32_t kNextLayer = 0xFFFFFFFFu;
// Layer numbers above this are errors (they would size the layer table).
constexpr uint32_t kMaxLayers = 1u << 16;
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

// Sizes the cost model multiplies (3 * d_model * d_hidden * bytes) must stay
// far from int64 overflow.
absl::Status CheckLayer(const TraceLayerSpec& l, const char* what) {
  if (l.num_experts > kMaxDim || l.d_model > kMaxDim || l.d_hidden > kMaxDim || l.bytes_per_element > 16)
    return absl::InvalidArgumentError(absl::StrCat(what, ": layer '", l.name, "' has ", l.num_experts, " experts, d_model ",
                                                   l.d_model, ", d_hidden ", l.d_hidden, ", ", l.bytes_per_element,
                                                   " bytes per element; at most 2^24, 2^24, 2^24 and 16"));
  return absl::OkStatus();
}

// Marker, length and checksums in front of a payload (version 2).
std::string Frame(std::string payload) {
  Writer w;
  w.bytes().append(kSync, sizeof(kSync));
  w.U32(static_cast<uint32_t>(payload.size()));
  w.U32(Crc32(payload.data(), payload.size()));
  w.U32(Crc32(w.bytes().data() + 4, 8));
  w.bytes().append(payload);
  return std::move(w.bytes());
}

absl::StatusOr<CountMatrix> GetMatrix(Reader& r, uint32_t world, uint32_t experts, const char* what) {
  const uint64_t n = static_cast<uint64_t>(world) * experts;
  if (!r.Fits(n, 8)) return absl::InvalidArgumentError(absl::StrCat(what, " matrix does not fit the record"));
  std::vector<int64_t> counts(n);
  for (auto& c : counts) c = r.I64();
  DYNAMOE_ASSIGN_OR_RETURN(CountMatrix m, CountMatrix::Make(world, experts, std::move(counts)));
  DYNAMOE_RETURN_IF_ERROR(CheckCountLimits(m, what));
  return m;
}

absl::StatusOr<TraceStep> GetStep(Reader& r) {
  TraceStep s;
  s.step = r.I64();
  s.layer = r.U32();
  const uint32_t world = r.U32(), experts = r.U32();
  if (!r.ok()) return absl::InvalidArgumentError("step record too short");
  if (world == 0 || experts == 0 || world > kMaxDim || experts > kMaxDim ||
      static_cast<uint64_t>(world) * experts > static_cast<uint64_t>(kMaxMatrixCells))
    return absl::InvalidArgumentError(absl::StrCat("step record has world ", world, " x experts ", experts,
                                                   "; at most 2^24 cells are supported"));
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
    // Owners and copies in range, copies distinct and not the owner: what
    // routing a plan (calibration) relies on.
    DYNAMOE_RETURN_IF_ERROR(p.Validate());
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

absl::Status CheckCountLimits(const CountMatrix& m, const std::string& what) {
  if (m.world_size * m.num_experts > kMaxMatrixCells)
    return absl::InvalidArgumentError(absl::StrCat(what, ": a ", m.world_size, " x ", m.num_experts,
                                                   " count matrix; at most 2^24 cells (world x experts) are supported"));
  int64_t total = 0;
  for (int64_t c : m.counts) {
    if (c < 0 || c > kMaxStepTotal - total)
      return absl::InvalidArgumentError(absl::StrCat(what, ": counts must be >= 0 and sum to at most 2^40 per matrix, ",
                                                     "got an entry of ", c, " after a sum of ", total));
    total += c;
  }
  return absl::OkStatus();
}

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

std::string EncodeLayerRecord(const TraceLayerSpec& layer, int64_t index) {
  Writer w;
  w.U8(kLayerRecord);
  w.U32(index < 0 ? kNextLayer : static_cast<uint32_t>(index));
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

namespace {

// The bytes under the reader: a string_view, or a file read forward in
// chunks. Only bytes from the oldest unreleased offset on are buffered, so a
// file costs about one frame plus a chunk of memory, never a copy of itself.
class Input {
 public:
  explicit Input(std::string_view bytes) : data_(bytes) {}
  Input(std::FILE* file, std::string_view prefix) : file_(file), buf_(prefix), data_(buf_), eof_(false) {}

  const absl::Status& status() const { return status_; }
  // Makes [pos, pos + n) available; returns how many of those bytes exist
  // (fewer only at the end of the input or after a read error).
  size_t Have(uint64_t pos, size_t n) {
    while (end() < pos + n && !eof_) Fill(static_cast<size_t>(pos + n - end()));
    return pos >= end() ? 0 : static_cast<size_t>(std::min<uint64_t>(n, end() - pos));
  }
  std::string_view Get(uint64_t pos, size_t n) const { return data_.substr(pos - base_, n); }
  uint32_t U32(uint64_t pos) const {
    uint32_t v;
    std::memcpy(&v, data_.data() + (pos - base_), 4);
    return v;
  }
  // The first offset >= pos holding `c`, or the end of the input.
  uint64_t Find(uint64_t pos, char c) {
    while (Have(pos, 1) == 1) {
      const std::string_view rest = data_.substr(pos - base_);
      const size_t at = rest.find(c);
      if (at != std::string_view::npos) return pos + at;
      pos = end();
      Release(pos);
    }
    return pos;
  }
  // Bytes before pos are no longer needed.
  void Release(uint64_t pos) {
    const uint64_t done = pos - base_;
    if (file_ == nullptr || done < kChunk || done < buf_.size() / 2) return;
    buf_.erase(0, done);
    base_ = pos;
    data_ = buf_;
  }
  uint64_t end() const { return base_ + data_.size(); }

 private:
  static constexpr size_t kChunk = 1 << 20;
  // No more than asked for the first time (a file that is no trace is
  // rejected after its first 12 bytes), then up to a chunk at a time: a
  // corrupt length never sizes an allocation.
  void Fill(size_t want) {
    const size_t n = std::min(kChunk, std::max(want, next_read_));
    next_read_ = std::min(kChunk, 2 * n);
    const size_t old = buf_.size();
    buf_.resize(old + n);
    const size_t got = std::fread(buf_.data() + old, 1, n, file_);
    buf_.resize(old + got);
    data_ = buf_;
    if (got == n) return;
    eof_ = true;
    if (std::ferror(file_))
      status_ = absl::DataLossError(absl::StrCat("read error at byte ", end(), ": ", std::strerror(errno)));
  }

  std::FILE* file_ = nullptr;
  std::string buf_;
  std::string_view data_;
  uint64_t base_ = 0;  // the offset of data_[0]
  size_t next_read_ = 0;
  bool eof_ = true;
  absl::Status status_;
};

enum class FrameStatus { kOk, kBad, kShort };  // kShort: runs past the end of the input
struct FrameAt {
  FrameStatus status = FrameStatus::kBad;
  const char* why = "";
  uint64_t end = 0;
  std::string_view payload;  // valid until the next call on the Input
};

FrameAt Bad(const char* why) { return {FrameStatus::kBad, why}; }
FrameAt Short(const char* why) { return {FrameStatus::kShort, why}; }

// Version 1 frames carry no marker. While resynchronising, a candidate must
// look like a record of a known kind of a consistent length before its
// checksum is computed, which keeps the scan cheap.
bool PlausibleV1(Input& in, uint64_t at, uint32_t len) {
  if (len == 0 || len > (16u << 20) || in.Have(at, 21) == 0) return false;
  const std::string_view p = in.Get(at, in.Have(at, 21));
  if (p[0] == kLayerRecord) return p.size() >= 5 && len == uint64_t{in.U32(at + 1)} + 1 + 4 + 18;
  if (p[0] != kStepRecord || p.size() < 21) return false;
  const uint64_t world = in.U32(at + 13), experts = in.U32(at + 17);
  return world >= 1 && experts >= 1 && world * experts <= static_cast<uint64_t>(kMaxMatrixCells) &&
         len >= 21 + 16 * world * experts + 5;
}

FrameAt ReadFrame(Input& in, uint64_t pos, uint32_t version, bool resyncing) {
  const size_t head = version == 1 ? 8 : 16;
  const size_t got = in.Have(pos, head);
  if (version >= 2) {
    const size_t n = std::min<size_t>(got, sizeof(kSync));
    if (in.Get(pos, n) != std::string_view(kSync, n)) return Bad("no frame marker");
  }
  if (got < head) return Short("frame head cut short");
  const uint32_t len = in.U32(pos + head - (version == 1 ? 8 : 12));
  const uint32_t crc = in.U32(pos + head - (version == 1 ? 4 : 8));
  if (version >= 2 && Crc32(in.Get(pos + 4, 8).data(), 8) != in.U32(pos + 12))
    return Bad("frame head checksum mismatch");
  if (len > kMaxPayload) return Bad("frame length over 2^30");
  if (version == 1 && resyncing && !PlausibleV1(in, pos + head, len)) return Bad("no record");
  if (in.Have(pos + head, len) < len) return Short("record cut short");
  FrameAt f{FrameStatus::kOk, "", pos + head + len, in.Get(pos + head, len)};
  if (Crc32(f.payload.data(), f.payload.size()) != crc) return Bad("checksum mismatch");
  return f;
}

// After damage at `from - 1`: the next offset with a valid frame, counting
// the frame markers passed (records lost) and the first torn frame seen.
struct Resync {
  bool found = false;
  uint64_t next = 0;
  int64_t markers = 0;
  std::optional<uint64_t> torn;  // a frame whose head is whole and valid but whose payload runs past the end
};

Resync FindNextFrame(Input& in, uint64_t from, uint32_t version) {
  Resync r;
  for (uint64_t c = from;; ++c) {
    if (version >= 2) c = in.Find(c, kSync[0]);
    if (in.Have(c, 1) == 0) return r;
    in.Release(c);
    const FrameAt f = ReadFrame(in, c, version, /*resyncing=*/true);
    if (f.status == FrameStatus::kOk) return r.found = true, r.next = c, r;
    if (version >= 2 && in.Have(c, sizeof(kSync)) == sizeof(kSync) &&
        in.Get(c, sizeof(kSync)) == std::string_view(kSync, sizeof(kSync))) {
      ++r.markers;
      if (f.status == FrameStatus::kShort && !r.torn) r.torn = c;
    }
  }
}

void Warn(TraceReadStats& st, int64_t* dropped, std::string w) {
  if (!st.Warn(std::move(w))) ++*dropped;
}

absl::Status ReadHeader(Input& in, Trace& t, uint64_t* pos) {
  const size_t got = in.Have(0, sizeof(kMagic) + 4);
  DYNAMOE_RETURN_IF_ERROR(in.status());
  if (got < sizeof(kMagic) || in.Get(0, sizeof(kMagic)) != std::string_view(kMagic, sizeof(kMagic)))
    return absl::InvalidArgumentError(
        "not a dynamoe trace: expected the 8-byte magic \"DMOETRC\\n\" at offset 0 (docs/trace-format.md)");
  if (got < sizeof(kMagic) + 4)
    return absl::InvalidArgumentError(absl::StrCat("trace header is cut short (", got, " bytes)"));
  t.version = in.U32(sizeof(kMagic));
  if (t.version != 1 && t.version != kTraceVersion)
    return absl::UnimplementedError(absl::StrCat("trace version ", t.version,
                                                 " is not supported; this build reads versions 1 to ", kTraceVersion));
  const FrameAt f = ReadFrame(in, sizeof(kMagic) + 4, t.version, false);
  DYNAMOE_RETURN_IF_ERROR(in.status());
  if (f.status == FrameStatus::kShort)
    return absl::InvalidArgumentError(absl::StrCat("trace header is cut short (", in.end(), " bytes)"));
  if (f.status != FrameStatus::kOk)
    return absl::InvalidArgumentError(absl::StrCat("trace header checksum mismatch (", f.why, "): the file is corrupt"));
  Reader r(f.payload);
  t.world_size = r.U32();
  t.rank = r.I32();
  const uint32_t phases = r.U32();
  if (!r.Fits(phases, 4)) return absl::InvalidArgumentError("trace header: phase names do not fit");
  for (uint32_t i = 0; i < phases; ++i) t.phase_names.push_back(r.Str());
  const uint32_t layers = r.U32();
  if (!r.Fits(layers, 4)) return absl::InvalidArgumentError("trace header: layer specs do not fit");
  for (uint32_t i = 0; i < layers; ++i) t.layers.push_back(GetLayer(r));
  if (!r.ok()) return absl::InvalidArgumentError("trace header is malformed");
  for (const TraceLayerSpec& l : t.layers) DYNAMOE_RETURN_IF_ERROR(CheckLayer(l, "trace header"));
  *pos = f.end;
  return absl::OkStatus();
}

struct ReadState {
  const TraceStepSink* sink = nullptr;  // steps go here instead of Trace::steps
  int64_t dropped = 0;        // warnings over the cap
  std::vector<char> declared;  // per layer: declared (else a stand-in for a declaration lost to damage)
};

// Makes layer `index` exist. Numbers past the declared ones are accepted
// only after damage (their declarations were lost), as stand-ins.
absl::Status Layer(Trace& t, ReadState& st, uint64_t index, uint64_t at, const char* what) {
  if (index < t.layers.size()) return absl::OkStatus();
  if (t.stats.skipped_regions == 0 || index >= kMaxLayers)
    return absl::InvalidArgumentError(
        absl::StrCat(what, " at byte ", at, " names layer ", index, " but ", t.layers.size(), " are declared"));
  while (t.layers.size() <= index) {
    t.layers.push_back({absl::StrCat("layer", t.layers.size(), "-undeclared")});
    st.declared.push_back(0);
  }
  return absl::OkStatus();
}

absl::Status Record(std::string_view payload, uint64_t at, Trace& t, ReadState& st) {
  Reader r(payload);
  const uint8_t kind = r.U8();
  if (kind == kLayerRecord) {
    uint64_t index = t.layers.size();
    if (t.version >= 2)
      if (const uint32_t n = r.U32(); n != kNextLayer) index = n;
    TraceLayerSpec l = GetLayer(r);
    if (!r.ok()) return absl::InvalidArgumentError(absl::StrCat("layer record at byte ", at, " is malformed"));
    DYNAMOE_RETURN_IF_ERROR(CheckLayer(l, absl::StrCat("layer record at byte ", at).c_str()));
    if (index == t.layers.size()) {
      t.layers.push_back(std::move(l));
      st.declared.push_back(1);
    } else {
      DYNAMOE_RETURN_IF_ERROR(Layer(t, st, index, at, "layer record"));
      if (st.declared[index])
        return absl::InvalidArgumentError(absl::StrCat("layer record at byte ", at, " declares layer ", index, " again"));
      t.layers[index] = std::move(l);
      st.declared[index] = 1;
    }
  } else if (kind == kStepRecord) {
    absl::StatusOr<TraceStep> s = GetStep(r);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("record at byte ", at, ": ", s.status().message()));
    DYNAMOE_RETURN_IF_ERROR(Layer(t, st, s->layer, at, "step record"));
    if (!st.declared[s->layer] && t.layers[s->layer].num_experts == 0)
      t.layers[s->layer].num_experts = s->kept.num_experts;
    if (st.sink != nullptr) {
      DYNAMOE_RETURN_IF_ERROR((*st.sink)(t, *std::move(s)));
    } else {
      t.steps.push_back(*std::move(s));
    }
  } else {
    ++t.stats.skipped_unknown;
    Warn(t.stats, &st.dropped, absl::StrCat("record at byte ", at, ": unknown kind ", int(kind), ", skipped"));
    return absl::OkStatus();
  }
  ++t.stats.records;
  return absl::OkStatus();
}

// Bytes [from, to) held no valid frame; `until` says what is at `to`.
void Damaged(Trace& t, ReadState& st, uint64_t from, uint64_t to, const char* why, int64_t records,
             const std::string& until) {
  ++t.stats.skipped_regions;
  t.stats.skipped_corrupt += records;
  t.stats.skipped_bytes += static_cast<int64_t>(to - from);
  Warn(t.stats, &st.dropped,
       absl::StrCat("record at byte ", from, ": ", why, "; skipped ", to - from, " damaged bytes (", records,
                    records == 1 ? " record" : " records", " lost) up to ", until));
}

absl::StatusOr<Trace> Parse(Input& in, const TraceStepSink* sink) {
  Trace t;
  uint64_t pos = 0;
  DYNAMOE_RETURN_IF_ERROR(ReadHeader(in, t, &pos));
  ReadState st;
  st.sink = sink;
  st.declared.assign(t.layers.size(), 1);
  while (in.Have(pos, 1) > 0) {
    in.Release(pos);
    const FrameAt f = ReadFrame(in, pos, t.version, false);
    DYNAMOE_RETURN_IF_ERROR(in.status());
    if (f.status == FrameStatus::kOk) {
      DYNAMOE_RETURN_IF_ERROR(Record(f.payload, pos, t, st));
      pos = f.end;
      continue;
    }
    // Damage or a torn end: whatever the length field says, resume at the
    // next frame that checks out.
    const bool at_marker = t.version >= 2 && in.Have(pos, sizeof(kSync)) == sizeof(kSync) &&
                           in.Get(pos, sizeof(kSync)) == std::string_view(kSync, sizeof(kSync));
    const Resync r = FindNextFrame(in, pos + 1, t.version);
    DYNAMOE_RETURN_IF_ERROR(in.status());
    const int64_t lost = r.markers + (at_marker ? 1 : 0);
    if (r.found) {
      Damaged(t, st, pos, r.next, f.why, std::max<int64_t>(1, lost), absl::StrCat("the next valid record at byte ", r.next));
      pos = r.next;
      continue;
    }
    // No valid frame after pos: damage up to a torn last frame, if any.
    const uint64_t end = in.end();
    const uint64_t torn = f.status == FrameStatus::kShort ? pos : r.torn.value_or(end);
    if (torn > pos)
      Damaged(t, st, pos, torn, f.why, std::max<int64_t>(1, lost - (torn < end ? 1 : 0)),
              torn < end ? absl::StrCat("a torn last record at byte ", torn) : std::string("the end of the file"));
    if (torn < end) {
      t.stats.truncated = true;
      t.stats.skipped_bytes += static_cast<int64_t>(end - torn);
      Warn(t.stats, &st.dropped, absl::StrCat("the last record (at byte ", torn, ") is cut short; ", end - torn,
                                              " trailing bytes ignored"));
    }
    break;
  }
  DYNAMOE_RETURN_IF_ERROR(in.status());
  for (size_t l = 0; l < st.declared.size(); ++l)
    if (!st.declared[l])
      Warn(t.stats, &st.dropped, absl::StrCat("layer ", l, " was declared in a damaged region: its steps are kept as '",
                                              t.layers[l].name, "' without layer sizes"));
  if (st.dropped > 0) t.stats.warnings.push_back(absl::StrCat("... and ", st.dropped, " more warnings"));
  return t;
}

// Out of memory is an error naming where, never a partial trace.
absl::StatusOr<Trace> ParseCatching(Input& in, const TraceStepSink* sink = nullptr) {
  try {
    return Parse(in, sink);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("out of memory reading the trace (at byte ", in.end(), ")"));
  } catch (const std::length_error&) {
    return absl::ResourceExhaustedError(absl::StrCat("out of memory reading the trace (at byte ", in.end(), ")"));
  }
}

}  // namespace

absl::StatusOr<Trace> ParseTrace(std::string_view bytes) {
  Input in(bytes);
  return ParseCatching(in);
}

absl::StatusOr<Trace> ReadTrace(std::FILE* file, std::string_view prefix) {
  Input in(file, prefix);
  return ParseCatching(in);
}

absl::StatusOr<Trace> ReadTrace(std::FILE* file, std::string_view prefix, const TraceStepSink& sink) {
  Input in(file, prefix);
  return ParseCatching(in, &sink);
}

absl::StatusOr<Trace> ReadTraceFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr)
    return absl::NotFoundError(absl::StrCat("cannot open trace '", path, "': ", std::strerror(errno)));
  absl::StatusOr<Trace> t = ReadTrace(f);
  std::fclose(f);
  if (!t.ok()) return absl::Status(t.status().code(), absl::StrCat(path, ": ", t.status().message()));
  for (const auto& w : t->stats.warnings) DYNAMOE_LOG(kWarning) << path << ": " << w;
  return t;
}

}  // namespace dynamoe::placement
