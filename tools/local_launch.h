// Starts N ranks of a program on this machine the way torchrun does
// (MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE), for the
// multi-process tests, the EP benchmark and the multi-rank demo.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace dynamoe::tools {

struct RankResult {
  int exit_code = -1;  // 128 + signal when killed
  std::string out, err;  // captured output (empty for a passed-through rank)
};

struct LaunchOptions {
  double timeout_s = 120;        // then every rank is killed
  bool rank0_passthrough = false;  // rank 0 writes to this process's stdout/stderr
  std::map<std::string, std::string> env;                         // extra variables on every rank
  std::map<int, std::map<std::string, std::string>> env_of_rank;  // per rank, over `env`
};

// A TCP port on 127.0.0.1 for MASTER_PORT, chosen by the kernel (bind to
// port 0) and held bound until destroyed, so that no other process can take
// it between the choice and rank 0's store listening on it: the socket is
// bound with SO_REUSEADDR and never listens, which keeps the port out of
// every other bind (explicit or port 0) except one that also sets
// SO_REUSEADDR and names it, as rank 0's c10d store does. Close-on-exec.
class ReservedPort {
 public:
  ReservedPort();  // throws std::runtime_error when no port can be bound
  ~ReservedPort();
  ReservedPort(const ReservedPort&) = delete;
  ReservedPort& operator=(const ReservedPort&) = delete;
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// Path of the running program, to start more ranks of it.
std::string SelfExecutable();

std::vector<RankResult> LaunchLocal(const std::string& program, const std::vector<std::string>& args, int world,
                                    const LaunchOptions& options = {});

// "rank r exit c:" and each rank's captured output, for test failure messages.
std::string DescribeResults(const std::vector<RankResult>& results);

}  // namespace dynamoe::tools
