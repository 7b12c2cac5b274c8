// The HTTP side of the metrics endpoint, without sockets: when a request is
// complete, and the response to it.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"

namespace dynamoe::monitor {

// Requests whose head (request line and headers) exceeds this are refused.
constexpr size_t kMaxRequestHead = 16384;

// The full response ("Connection: close") to the request whose bytes so far
// are `request`, or nullopt while its head is incomplete. GET /metrics (any
// query) is 200 with `metrics()`; HEAD gets the same head with no body;
// other methods 405, other paths 404, a malformed request line 400, a head
// over kMaxRequestHead 431.
std::optional<std::string> HttpRespond(absl::string_view request, const std::function<std::string()>& metrics);

}  // namespace dynamoe::monitor
