#include "monitor/metrics_http.h"

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dynamoe::monitor {
namespace {

std::string Response(absl::string_view status, absl::string_view type, const std::string& body, bool head_only,
                     absl::string_view extra = "") {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type, "\r\nContent-Length: ", body.size(),
                      "\r\n", extra, "Connection: close\r\n\r\n", head_only ? "" : body);
}

}  // namespace

std::optional<std::string> HttpRespond(absl::string_view request, const std::function<std::string()>& metrics) {
  // Bare "\n" line ends are accepted as well (RFC 9112 2.2).
  size_t end = request.find("\r\n\r\n");
  if (end == absl::string_view::npos) end = request.find("\n\n");
  if (end == absl::string_view::npos || end > kMaxRequestHead) {
    if (request.size() <= kMaxRequestHead) return std::nullopt;
    return Response("431 Request Header Fields Too Large", "text/plain", "request head too large\n", false);
  }
  absl::string_view line = request.substr(0, request.find('\n'));
  if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
  const std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
  if (parts.size() != 3 || parts[0].empty() || parts[1].empty() || !absl::StartsWith(parts[2], "HTTP/"))
    return Response("400 Bad Request", "text/plain", "malformed request line\n", false);
  const absl::string_view method = parts[0];
  const bool head = method == "HEAD";
  if (method != "GET" && !head)
    return Response("405 Method Not Allowed", "text/plain", "dynamoe serves GET and HEAD /metrics\n", false,
                    "Allow: GET, HEAD\r\n");
  const absl::string_view path = parts[1].substr(0, parts[1].find('?'));
  if (path != "/metrics") return Response("404 Not Found", "text/plain", "dynamoe serves GET /metrics\n", head);
  return Response("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics(), head);
}

}  // namespace dynamoe::monitor
