// The caller's c10d::ProcessGroup as a dynamoe communicator
// (runtime/process_group_communicator.h), at world 1 in one process: reached
// by name through torch's group registry, wrapped, and its collectives run on
// the group itself. Multi-rank runs: the Python tests (torchrun, the caller's
// Gloo groups) and every C++ multi-process test (InitFromEnv's groups are
// ProcessGroups too).
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/torch.h>

#if __has_include(<gloo/algorithm.h>)
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#define DYNAMOE_TEST_GLOO 1
#endif

#include "runtime/process_group_communicator.h"

namespace dynamoe::runtime {
namespace {

TEST(ProcessGroupCommunicator, AnUnregisteredNameIsNotFound) {
  auto group = ResolveProcessGroup("dynamoe-test-no-such-group");
  ASSERT_FALSE(group.ok());
  EXPECT_EQ(group.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(group.status().message().find("\"dynamoe-test-no-such-group\""), std::string::npos)
      << group.status();
}

TEST(ProcessGroupCommunicator, WorldRanksMustMatchTheGroup) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, 0, 1);
  auto comm = CommunicatorFromProcessGroup(group, store, "mismatch", {0, 1});
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(comm.status().message().find("has 1 ranks but 2 world ranks were given ([0, 1])"), std::string::npos)
      << comm.status();
}

TEST(ProcessGroupCommunicator, RunsItsCollectivesOnTheRegisteredGroup) {
#ifndef DYNAMOE_TEST_GLOO
  GTEST_SKIP() << "no Gloo headers to build a torch group in C++ (Python's tests cover the caller's groups)";
#else
  auto store = c10::make_intrusive<c10d::HashStore>();
  auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(30));
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", store), 0,
                                                          1, opts);
  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, 0, 1);
  group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
  c10d::register_process_group("dynamoe-test-group", group);

  auto resolved = ResolveProcessGroup("dynamoe-test-group");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->get(), group.get());
  auto comm = CommunicatorFromProcessGroup(*resolved, store, "registered", {7});
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_EQ((*comm)->backend(), "gloo");
  EXPECT_EQ((*comm)->global_rank(0), 7);

  const torch::Tensor x = torch::arange(12, torch::kFloat).reshape({4, 3});
  torch::Tensor gathered = torch::zeros_like(x);
  ASSERT_TRUE((*comm)->AllGather(x, gathered, {"test", "gather"}).ok());
  EXPECT_TRUE(torch::equal(gathered, x));
  torch::Tensor moved = torch::zeros_like(x);
  ASSERT_TRUE((*comm)->AllToAll(x, moved, {4}, {4}, {"test", "exchange"}).ok());
  EXPECT_TRUE(torch::equal(moved, x));
  const auto counters = (*comm)->counters();
  EXPECT_EQ(counters.collectives, 2);  // both went through dynamoe's tracking
  c10d::unregister_process_group("dynamoe-test-group");
#endif
}

}  // namespace
}  // namespace dynamoe::runtime
