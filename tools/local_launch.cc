#include "tools/local_launch.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <fstream>
#include <sstream>
#include <thread>

namespace dynamoe::tools {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

ReservedPort::ReservedPort() {
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int on = 1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd_ < 0 || setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
      bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    if (fd_ >= 0) close(fd_);
    throw std::runtime_error("local launch: cannot reserve a port on 127.0.0.1: " + why);
  }
  port_ = ntohs(addr.sin_port);
}

ReservedPort::~ReservedPort() { close(fd_); }

std::string SelfExecutable() {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  return std::string(self, n > 0 ? n : 0);
}

std::vector<RankResult> LaunchLocal(const std::string& program, const std::vector<std::string>& args, int world,
                                    const LaunchOptions& options) {
  const ReservedPort reserved;  // held until every rank has exited
  char dir_template[] = "/tmp/dynamoe_ranks_XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  const std::string port = std::to_string(reserved.port());
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", port.c_str(), 1);
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      for (const auto& [k, v] : options.env) setenv(k.c_str(), v.c_str(), 1);
      if (auto it = options.env_of_rank.find(r); it != options.env_of_rank.end())
        for (const auto& [k, v] : it->second) setenv(k.c_str(), v.c_str(), 1);
      if (!(r == 0 && options.rank0_passthrough)) {
        const int out = open((dir + "/out" + std::to_string(r)).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int err = open((dir + "/err" + std::to_string(r)).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(out, 1);
        dup2(err, 2);
      }
      std::vector<char*> argv = {const_cast<char*>(program.c_str())};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(program.c_str(), argv.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  std::vector<RankResult> results(world);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(options.timeout_s);
  for (int remaining = world; remaining > 0;) {
    for (int r = 0; r < world; ++r) {
      int status = 0;
      if (pids[r] && waitpid(pids[r], &status, WNOHANG) == pids[r]) {
        results[r].exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        pids[r] = 0;
        --remaining;
      }
    }
    if (std::chrono::steady_clock::now() > deadline)
      for (pid_t pid : pids)
        if (pid) kill(pid, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int r = 0; r < world; ++r) {
    results[r].out = ReadFile(dir + "/out" + std::to_string(r));
    results[r].err = ReadFile(dir + "/err" + std::to_string(r));
  }
  std::system(("rm -rf " + dir).c_str());
  return results;
}

std::string DescribeResults(const std::vector<RankResult>& results) {
  std::string all;
  for (size_t r = 0; r < results.size(); ++r)
    all += "rank " + std::to_string(r) + " exit " + std::to_string(results[r].exit_code) + ":\n" + results[r].out +
           results[r].err;
  return all;
}

}  // namespace dynamoe::tools
