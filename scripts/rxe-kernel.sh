#!/usr/bin/env bash
# Fetches Debian's stock kernel once and keeps what the Soft-RoCE test VM
# (test/rxe/) boots: vmlinuz and the kernel modules it loads, with every
# module they depend on. The machines that run ferry's tests have no RDMA in
# their own kernel; this one has rdma_rxe.
#
#   scripts/rxe-kernel.sh [CACHE_DIR]
#
# Prints the directory holding the kernel on its last line of stdout:
#   vmlinuz          the kernel
#   modules/*.ko     the modules, uncompressed
#   modules.load     their names in load order (dependencies first)
#   kernel.version   the kernel's release (uname -r in the guest)
#   package          the Debian package and version it came from
#
# CACHE_DIR defaults to $FERRY_RXE_KERNEL_CACHE, else
# ${XDG_CACHE_HOME:-$HOME/.cache}/ferry/rxe-kernel. Each package version and
# module list gets a directory of its own, so a rerun finds it and downloads
# nothing; a new kernel on the mirror (or a changed module list) makes a new
# one. Concurrent runs take a lock on the cache, and a kernel directory
# appears by one rename only when complete.
#
# The package is the one linux-image-amd64 depends on in the configured apt
# sources (apt-get download, as any user; nothing is installed). Its module
# dependencies come from modules.dep, which depmod (kmod) writes from the
# unpacked modules since the package ships none.
set -euo pipefail
# depmod: a user's PATH may lack the sbin directories.
export PATH=$PATH:/usr/sbin:/sbin

# The modules the VM loads, with their dependencies added from modules.dep.
# crc32_generic: rdma_rxe asks the crypto API for "crc32" at run time (its
# ICRC), a need modules.dep does not show. rdma_ucm: rdma_cm from user space.
# dummy: the network device rxe0 sits on.
root_modules=(crc32_generic rdma_rxe rdma_ucm dummy)

cache=${1:-${FERRY_RXE_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/rxe-kernel}}
die() { echo "rxe-kernel: $*" >&2; exit 1; }
for tool in apt-cache apt-get dpkg-deb depmod flock; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-deps.sh installs what is needed)"
done

# apt's package lists may be missing (a trimmed image) or older than the
# mirror (the kernel they name is gone): read them again once, where allowed.
lists_refreshed=0
refresh_lists() {
  ((lists_refreshed == 0)) || return 1
  lists_refreshed=1
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq >&2
  elif sudo -n true 2>/dev/null; then
    sudo -n apt-get update -qq >&2
  else
    return 1
  fi
}
# The kernel package: what the metapackage points at, e.g. linux-image-6.1.0-57-amd64.
find_package() {
  package=$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
  [ -n "$package" ] || return 1
  version=$(apt-cache policy "$package" | sed -n 's/^ *Candidate: //p')
  [ -n "$version" ] && [ "$version" != "(none)" ]
}
modules_key=$(printf '%s\n' "${root_modules[@]}" | sha256sum | cut -c1-8)
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
# use_cached DIR: prints DIR and ends here when it holds a complete kernel.
use_cached() {
  [ -f "$1/modules.load" ] || return 0
  echo "$1"
  exit 0
}
if ! find_package && ! { refresh_lists && find_package; }; then
  # Offline with no package lists: the newest kernel fetched before will do.
  newest=$(ls -dt "$cache"/linux-image-*_"$modules_key" 2>/dev/null | head -n1 || true)
  [ -z "$newest" ] || echo "rxe-kernel: apt names no kernel; using the cached $newest" >&2
  [ -z "$newest" ] || use_cached "$newest"
  die "apt-cache names no kernel package for linux-image-amd64 (run apt-get update)"
fi
use_cached "$cache/${package}_${version}_${modules_key}"

# Under the lock no other run is staging: what is there was left by a killed one.
rm -rf "$cache"/.staging.*
staging=$(mktemp -d "$cache/.staging.XXXXXX")
trap 'rm -rf "$staging"' EXIT
start=$(date +%s)
# apt-get download writes into the current directory. As root it would hand
# the download to the _apt user, who may not write here.
download() {
  (cd "$staging" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "$package=$version" >&2)
}
if ! download; then
  refresh_lists && find_package || die "apt-get download $package=$version failed (is the mirror reachable?)"
  use_cached "$cache/${package}_${version}_${modules_key}"
  download || die "apt-get download $package=$version failed (is the mirror reachable?)"
fi
kernel_dir="$cache/${package}_${version}_${modules_key}"
deb=$(echo "$staging"/*.deb)
echo "rxe-kernel: downloaded $(basename "$deb") ($(($(stat -c %s "$deb") / 1048576)) MiB) in $(($(date +%s) - start)) s" >&2

mkdir "$staging/root" "$staging/out" "$staging/out/modules"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$staging/root" --wildcards './boot/vmlinuz-*' './lib/modules/*'
rm -f "$deb"
vmlinuz=$(echo "$staging"/root/boot/vmlinuz-*)
[ -f "$vmlinuz" ] || die "$package holds no /boot/vmlinuz-*"
release=${vmlinuz##*/vmlinuz-}
moddir="$staging/root/lib/modules/$release"
depmod -b "$staging/root" "$release"

# Depth-first over modules.dep: a module's dependencies are listed (and
# later loaded) before it. Lines read "kernel/a/b.ko[.xz]: kernel/c.ko ...".
declare -A path_of=() listed=()
while IFS= read -r line; do
  file=${line%%:*}
  name=${file##*/}
  name=${name%%.ko*}
  path_of[${name//-/_}]=$file
done <"$moddir/modules.dep"
deps_of() { sed -n "s|^${path_of[$1]}: *||p" "$moddir/modules.dep"; }
load_order=()
visit() {
  local name=${1//-/_} dep
  [ -z "${listed[$name]:-}" ] || return 0
  [ -n "${path_of[$name]:-}" ] || die "$package has no module $name"
  listed[$name]=1
  for dep in $(deps_of "$name"); do
    dep=${dep##*/}
    visit "${dep%%.ko*}"
  done
  load_order+=("$name")
}
for name in "${root_modules[@]}"; do
  # A module built into this kernel needs no loading.
  if grep -q "/${name}\.ko\$" "$moddir/modules.builtin"; then continue; fi
  visit "$name"
done

# busybox insmod in the guest takes plain .ko files.
for name in "${load_order[@]}"; do
  src="$moddir/${path_of[$name]}"
  case "$src" in
    *.ko) cp "$src" "$staging/out/modules/$name.ko" ;;
    *.ko.xz) xz -dc "$src" >"$staging/out/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$src" >"$staging/out/modules/$name.ko" ;;
    *) die "unknown module format: $src" ;;
  esac
done
cp "$vmlinuz" "$staging/out/vmlinuz"
echo "$release" >"$staging/out/kernel.version"
echo "$package $version" >"$staging/out/package"
printf '%s\n' "${load_order[@]}" >"$staging/out/modules.load"
mv -T "$staging/out" "$kernel_dir"
echo "rxe-kernel: $package $version (kernel $release, modules: ${load_order[*]}) in $kernel_dir" >&2
echo "$kernel_dir"
