// A call that may block on a peer or a store (a dead or frozen host), run so
// that its caller waits at most `timeout`. The call runs on a detached
// thread that owns what `fn` captured: on expiry it is left to finish (or
// block) on its own, and the caller gets nullopt.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace dynamoe::runtime {

template <typename T>
std::optional<T> CallWithin(std::chrono::milliseconds timeout, std::function<T()> fn) {
  struct Result {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<T> value;
  };
  auto result = std::make_shared<Result>();
  std::thread([result, fn = std::move(fn)] {
    T value = fn();
    std::lock_guard<std::mutex> lock(result->mu);
    result->value = std::move(value);
    result->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(result->mu);
  result->cv.wait_for(lock, timeout, [&] { return result->value.has_value(); });
  return std::move(result->value);
}

}  // namespace dynamoe::runtime
