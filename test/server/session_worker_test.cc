// SessionWorker on its own: this test binary plays the worker process
// (started by SessionWorker::Spawn as `session_worker_test --session-worker
// 3`, it runs RunSessionWorker as ferryd would), so the spawn, the ready
// message and the environment a worker gets are the real ones.
#include "server/session_worker.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "test/support/host_backend.h"
#include "test/support/wait.h"

namespace ferry::server {
namespace {

std::vector<std::string> WorkerCommand(const std::string& mode) {
  return {"/proc/self/exe", "--worker-mode", mode};
}

// A worker whose backend "fails" with the value of FERRY_WORKER_TEST as its
// reason: what Spawn reports shows the environment the worker got.
TEST(SessionWorkerTest, AWorkerGetsTheEnvironmentItIsSpawnedWith) {
  std::shared_ptr<SessionWorker> worker;
  const Status status =
      SessionWorker::Spawn(WorkerCommand("echo-env"), {"FERRY_WORKER_TEST=share-25"}, &worker);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("FERRY_WORKER_TEST=share-25"), std::string::npos)
      << status.message();
  EXPECT_NE(status.message().find("could not start"), std::string::npos) << status.message();
}

// A spare that dies while it waits for a session is seen as dead (ferryd
// then starts another), and is reaped once.
TEST(SessionWorkerTest, ASpareThatDiesIsSeenDead) {
  std::shared_ptr<SessionWorker> worker;
  ASSERT_TRUE(SessionWorker::Spawn(WorkerCommand("host"), {}, &worker).ok());
  EXPECT_FALSE(worker->Exited());
  ASSERT_EQ(::kill(worker->pid(), SIGKILL), 0);
  // Exited only looks (WNOWAIT); the destructor reaps.
  EXPECT_TRUE(test::WaitFor([&] { return worker->Exited(); }, std::chrono::seconds(5),
                            std::chrono::milliseconds(10)));
  worker.reset();
}

}  // namespace
}  // namespace ferry::server

int main(int argc, char** argv) {
  // Started by SessionWorker::Spawn: "--worker-mode MODE --session-worker 3".
  if (argc == 5 && std::strcmp(argv[1], "--worker-mode") == 0) {
    const std::string mode = argv[2];
    const int link = std::atoi(argv[4]);
    if (mode == "echo-env") {
      const char* value = std::getenv("FERRY_WORKER_TEST");
      return ferry::server::RunSessionWorker(
          link, nullptr,
          ferry::Status::Unimplemented(std::string("FERRY_WORKER_TEST=") +
                                       (value != nullptr ? value : "(unset)")),
          nullptr);
    }
    std::unique_ptr<ferry::backend::GpuBackend> backend;
    const ferry::Status made = ferry::test::CreateTestHostBackend(1 << 20, &backend);
    return ferry::server::RunSessionWorker(link, backend.get(), made, nullptr);
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
