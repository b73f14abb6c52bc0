#include "server/backend/host/device_ledger.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <new>

namespace ferry::backend {

// The books: written by every process that maps them, so only atomics and
// fixed values written before anyone else maps them.
struct DeviceLedger::Region {
  static constexpr uint64_t kMagic = 0x4645525259444c47;  // "FERRYDLG"
  uint64_t magic;
  uint32_t devices;
  uint64_t capacity[kMaxDevices];
  std::atomic<uint64_t> used[kMaxDevices];
  struct Slot {
    std::atomic<uint64_t> bytes[kMaxDevices];
  };
  Slot slots[kMaxSlots];
};
static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "the ledger's atomics must work across processes");

namespace {

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

}  // namespace

Status DeviceLedger::Create(std::span<const uint64_t> capacity, bool shared,
                            std::unique_ptr<DeviceLedger>* out) {
  if (capacity.empty() || capacity.size() > static_cast<size_t>(kMaxDevices)) {
    return Status::InvalidArgument("a device ledger holds 1 to " + std::to_string(kMaxDevices) +
                                   " devices");
  }
  const size_t bytes = sizeof(Region);
  int fd = -1;
  void* memory = nullptr;
  if (shared) {
    fd = memfd_create("ferry-device-ledger", MFD_CLOEXEC);
    if (fd < 0) return Status::Internal(Errno("memfd_create"));
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      const std::string why = Errno("ftruncate");
      close(fd);
      return Status::Internal(why);
    }
    memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  } else {
    memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  if (memory == MAP_FAILED) {
    const std::string why = Errno("mmap");
    if (fd >= 0) close(fd);
    return Status::Internal(why);
  }
  // Zero pages: every count starts at 0.
  Region* region = static_cast<Region*>(memory);
  region->magic = Region::kMagic;
  region->devices = static_cast<uint32_t>(capacity.size());
  for (size_t d = 0; d < capacity.size(); ++d) region->capacity[d] = capacity[d];
  out->reset(new DeviceLedger(region, bytes, fd, -1));
  (*out)->slots_in_use_.assign(kMaxSlots, false);
  return Status::Ok();
}

Status DeviceLedger::Join(int fd, int slot, std::unique_ptr<DeviceLedger>* out) {
  struct stat st {};
  if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) != sizeof(Region)) {
    close(fd);
    return Status::InvalidArgument("descriptor " + std::to_string(fd) +
                                   " is not a device ledger (wrong size)");
  }
  if (slot < -1 || slot >= kMaxSlots) {
    close(fd);
    return Status::InvalidArgument("device ledger slot " + std::to_string(slot) +
                                   " is out of range");
  }
  void* memory = mmap(nullptr, sizeof(Region), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (memory == MAP_FAILED) {
    const std::string why = Errno("mmap");
    close(fd);
    return Status::Internal(why);
  }
  Region* region = static_cast<Region*>(memory);
  if (region->magic != Region::kMagic || region->devices == 0 ||
      region->devices > static_cast<uint32_t>(kMaxDevices)) {
    munmap(memory, sizeof(Region));
    close(fd);
    return Status::InvalidArgument("descriptor " + std::to_string(fd) + " is not a device ledger");
  }
  out->reset(new DeviceLedger(region, sizeof(Region), fd, slot));
  return Status::Ok();
}

DeviceLedger::~DeviceLedger() {
  munmap(region_, region_bytes_);
  if (fd_ >= 0) close(fd_);
}

int DeviceLedger::devices() const { return static_cast<int>(region_->devices); }

uint64_t DeviceLedger::capacity(int device) const { return region_->capacity[device]; }

uint64_t DeviceLedger::used(int device) const { return region_->used[device].load(); }

bool DeviceLedger::Take(int device, uint64_t bytes) {
  if (device < 0 || device >= devices()) return false;
  std::atomic<uint64_t>& used = region_->used[device];
  const uint64_t capacity = region_->capacity[device];
  uint64_t now = used.load();
  do {
    if (bytes > capacity - now) return false;
  } while (!used.compare_exchange_weak(now, now + bytes));
  if (slot_ >= 0) region_->slots[slot_].bytes[device].fetch_add(bytes);
  return true;
}

bool DeviceLedger::TakeAll(std::span<const uint64_t> bytes, int* short_device) {
  for (size_t d = 0; d < bytes.size(); ++d) {
    if (bytes[d] == 0) continue;
    if (!Take(static_cast<int>(d), bytes[d])) {
      for (size_t undo = 0; undo < d; ++undo) Give(static_cast<int>(undo), bytes[undo]);
      if (short_device != nullptr) *short_device = static_cast<int>(d);
      return false;
    }
  }
  return true;
}

void DeviceLedger::Give(int device, uint64_t bytes) {
  if (device < 0 || device >= devices() || bytes == 0) return;
  if (slot_ >= 0) region_->slots[slot_].bytes[device].fetch_sub(bytes);
  region_->used[device].fetch_sub(bytes);
}

int DeviceLedger::NewSlot() {
  std::lock_guard<std::mutex> lock(slots_mutex_);
  for (int s = 0; s < static_cast<int>(slots_in_use_.size()); ++s) {
    if (!slots_in_use_[s]) {
      slots_in_use_[s] = true;
      return s;
    }
  }
  return -1;
}

void DeviceLedger::ReleaseSlot(int slot) {
  if (slot < 0 || slot >= kMaxSlots) return;
  for (int d = 0; d < devices(); ++d) {
    const uint64_t held = region_->slots[slot].bytes[d].exchange(0);
    if (held > 0) region_->used[d].fetch_sub(held);
  }
  std::lock_guard<std::mutex> lock(slots_mutex_);
  if (static_cast<size_t>(slot) < slots_in_use_.size()) slots_in_use_[slot] = false;
}

uint64_t DeviceLedger::SlotBytes(int slot, int device) const {
  return region_->slots[slot].bytes[device].load();
}

}  // namespace ferry::backend
