// DeviceLedger: device memory books shared by processes (ferryd's session
// workers). A second mapping of the same memfd stands for a worker here; the
// books live in the shared memory, so one mapping sees the other's takes.
#include "server/backend/host/device_ledger.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace ferry::backend {
namespace {

constexpr uint64_t kMiB = 1 << 20;

std::unique_ptr<DeviceLedger> JoinAs(const DeviceLedger& main, int slot) {
  std::unique_ptr<DeviceLedger> worker;
  Status joined = DeviceLedger::Join(dup(main.fd()), slot, &worker);
  EXPECT_TRUE(joined.ok()) << joined.ToString();
  return worker;
}

TEST(DeviceLedgerTest, TakesNeverPassTheCapacityAndEveryProcessSeesThem) {
  std::unique_ptr<DeviceLedger> main;
  const std::vector<uint64_t> capacity = {64 * kMiB, 8 * kMiB};
  ASSERT_TRUE(DeviceLedger::Create(capacity, /*shared=*/true, &main).ok());
  ASSERT_GE(main->fd(), 0);
  std::unique_ptr<DeviceLedger> a = JoinAs(*main, main->NewSlot());
  std::unique_ptr<DeviceLedger> b = JoinAs(*main, main->NewSlot());
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->devices(), 2);
  EXPECT_EQ(a->capacity(0), 64 * kMiB);
  EXPECT_TRUE(a->Take(0, 40 * kMiB));
  EXPECT_EQ(b->free_bytes(0), 24 * kMiB);   // b sees a's take
  EXPECT_FALSE(b->Take(0, 40 * kMiB));      // the device is full for b
  EXPECT_EQ(main->used(0), 40 * kMiB);
  EXPECT_TRUE(b->Take(0, 24 * kMiB));
  EXPECT_FALSE(a->Take(0, 1));
  a->Give(0, 40 * kMiB);
  EXPECT_TRUE(b->Take(0, 40 * kMiB));
  EXPECT_FALSE(b->Take(2, 1));  // no such device
}

TEST(DeviceLedgerTest, TakeAllIsAllOrNone) {
  std::unique_ptr<DeviceLedger> books;
  const std::vector<uint64_t> capacity = {10, 10};
  ASSERT_TRUE(DeviceLedger::Create(capacity, /*shared=*/false, &books).ok());
  EXPECT_EQ(books->fd(), -1);
  int short_device = -1;
  const std::vector<uint64_t> too_much = {5, 11};
  EXPECT_FALSE(books->TakeAll(too_much, &short_device));
  EXPECT_EQ(short_device, 1);
  EXPECT_EQ(books->used(0), 0u);  // the first device's take was undone
  const std::vector<uint64_t> fits = {5, 10};
  EXPECT_TRUE(books->TakeAll(fits, &short_device));
  EXPECT_EQ(books->free_bytes(0), 5u);
  EXPECT_EQ(books->free_bytes(1), 0u);
}

// A worker that dies holding memory: the main process gives its slot back,
// and with it what the worker held.
TEST(DeviceLedgerTest, ASlotReleasedGivesBackWhatAKilledWorkerHeld) {
  std::unique_ptr<DeviceLedger> main;
  const std::vector<uint64_t> capacity = {64 * kMiB};
  ASSERT_TRUE(DeviceLedger::Create(capacity, /*shared=*/true, &main).ok());
  const int survivor_slot = main->NewSlot();
  std::unique_ptr<DeviceLedger> survivor = JoinAs(*main, survivor_slot);
  ASSERT_TRUE(survivor->Take(0, 8 * kMiB));
  const int slot = main->NewSlot();
  ASSERT_NE(slot, survivor_slot);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The worker: takes, says so by its exit, and is gone without giving.
    std::unique_ptr<DeviceLedger> worker;
    if (!DeviceLedger::Join(dup(main->fd()), slot, &worker).ok()) _exit(1);
    _exit(worker->Take(0, 30 * kMiB) ? 0 : 2);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(main->used(0), 38 * kMiB);
  EXPECT_EQ(main->SlotBytes(slot, 0), 30 * kMiB);
  main->ReleaseSlot(slot);
  EXPECT_EQ(main->used(0), 8 * kMiB);  // the survivor's stays taken
  EXPECT_EQ(main->SlotBytes(slot, 0), 0u);
  EXPECT_EQ(main->NewSlot(), slot);    // free again
}

TEST(DeviceLedgerTest, JoinRefusesWhatIsNoLedger) {
  std::unique_ptr<DeviceLedger> ledger;
  const int not_a_ledger = memfd_create("not-a-ledger", MFD_CLOEXEC);
  ASSERT_GE(not_a_ledger, 0);
  EXPECT_EQ(DeviceLedger::Join(not_a_ledger, 0, &ledger).code(), StatusCode::kInvalidArgument);
  std::unique_ptr<DeviceLedger> main;
  const std::vector<uint64_t> capacity = {1};
  ASSERT_TRUE(DeviceLedger::Create(capacity, /*shared=*/true, &main).ok());
  EXPECT_EQ(DeviceLedger::Join(dup(main->fd()), DeviceLedger::kMaxSlots, &ledger).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ferry::backend
