#!/usr/bin/env bash
# Installs everything ferry builds and tests with, from Debian's packages.
# Idempotent: installs only what is missing. The CUDA 13 toolkit is expected at
# /usr/local/cuda (present on every ferry machine).
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config
  libasio-dev           # TCP transport (standalone Asio)
  libcapnp-dev capnproto  # wire schema, compiled at build time
  libabsl-dev           # containers, synchronization, time
  libtomlplusplus-dev   # ferryd's TOML config (server/pool/)
  libcli11-dev          # command lines of ferryd and ferryctl (header-only CLI11)
  tzdata                # IANA time zones for pool schedules (absl::LoadTimeZone reads them)
  libgtest-dev libgmock-dev  # unit and end-to-end tests
  libbenchmark-dev      # bench/
  libzstd-dev liblz4-dev  # compressed fatbin entries
  libssl-dev            # SHA-256 naming module images in ferryd's image cache
  nlohmann-json3-dev    # JSON of etcd's gateway (server/etcd/)
  libcpp-httplib-dev    # HTTP/1.1 to etcd's gateway (server/etcd/)
  etcd-server           # a real etcd in the cluster tests (test/support/etcd_server.h; tests start their own)
  rdma-core libibverbs-dev librdmacm-dev  # RDMA transport (later)
  # test/rxe: real verbs in a VM booting Debian's kernel with Soft-RoCE
  # (scripts/rxe-kernel.sh fetches the kernel; depmod from kmod reads its modules)
  qemu-system-x86 busybox-static cpio kmod ibverbs-utils rdmacm-utils ibverbs-providers
  clang libclang-rt-dev  # scripts/fuzz.sh: libFuzzer and the ASan/UBSan runtimes come with clang only
  dpkg-dev file         # cpack's .deb packages: dpkg-shlibdeps finds their dependencies (test/packaging)
  systemd               # systemd-analyze verify checks the ferryd.service unit (test/packaging)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x /usr/local/cuda/bin/nvcc ] || [ ! -f /usr/local/cuda/include/cuda.h ]; then
  echo "install-deps: the CUDA toolkit is missing at /usr/local/cuda (headers and nvcc are needed to build and test)" >&2
  exit 1
fi
