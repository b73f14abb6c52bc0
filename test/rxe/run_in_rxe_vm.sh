#!/usr/bin/env bash
# Runs programs against real verbs: boots Debian's stock kernel under qemu
# (TCG) with Soft-RoCE (rxe0 on a dummy netdev, 10.0.0.1/24), runs the given
# program scripts in that one VM, one after another, and passes only when
# every one of them passed. README.md in this folder describes the guest.
#
#   run_in_rxe_vm.sh --work DIR --program NAME SCRIPT [--program NAME SCRIPT]...
#                    [--file HOST_PATH[=GUEST_PATH]]... [--timeout SECONDS]
#                    [--program-timeout SECONDS] [--memory MIB] [--smp N]
#
# --program    a shell script run in the guest (busybox sh -e, guest/lib.sh
#              sourced); it passes by exiting 0. Programs run in the order given.
# --file       a host file copied into the guest: to GUEST_PATH when given,
#              else an executable to /ferry/bin/, a *.so* file to /ferry/lib/,
#              anything else to /ferry/data/ (keeping its name; links are
#              followed). ELF files have their debug sections stripped and
#              bring every library ldd lists, at the library's own path.
# --work       scratch and logs: initramfs.cpio (the guest's files),
#              console.log (ttyS0: kernel and program output), markers.log
#              (ttyS1: results), qemu.log, and skipped (the reason) on exit 77.
# --timeout    the whole VM run (qemu is killed after it), default 240.
# --program-timeout  each program in the guest, default 120.
#
# Exit status: 0 all programs passed; 77 qemu cannot run here (the reason is
# printed); anything else a failure (the console log is printed).
# Environment: FERRY_RXE_KERNEL_CACHE (scripts/rxe-kernel.sh's cache).
set -Eeuo pipefail
# A command that fails under set -e ends the run with a line saying which
# (a CI run once failed here in 1.6 s with no output at all).
trap 'echo "run_in_rxe_vm: line $LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR
# ldconfig: a user's PATH may lack the sbin directories.
export PATH=$PATH:/usr/sbin:/sbin

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
die() { echo "run_in_rxe_vm: $*" >&2; exit 1; }
# ctest shows no output of a skipped test: the reason also goes to
# WORK/skipped (.ci/run prints it).
skip() {
  echo "run_in_rxe_vm: SKIP: $*" >&2
  echo "$*" >"$work/skipped"
  exit 77
}

work="" timeout=240 program_timeout=120 memory=1536 smp=2
programs=() program_scripts=() files=()
while (($#)); do
  case "$1" in
    --work) work=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --program-timeout) program_timeout=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --program) programs+=("$2"); program_scripts+=("$3"); shift 3 ;;
    --file) files+=("$2"); shift 2 ;;
    *) die "unknown argument $1 (see the comment at the top of $0)" ;;
  esac
done
[ -n "$work" ] || die "--work DIR is required"
mkdir -p "$work"
work=$(cd "$work" && pwd)
rm -f "$work/skipped"
((${#programs[@]})) || die "no --program given"
for name in "${programs[@]}"; do
  [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "program name '$name': letters, digits, _ . - only"
done

# Skip only where qemu cannot run at all; everything else missing is a failure.
qemu=$(command -v qemu-system-x86_64) ||
  skip "qemu-system-x86_64 is not installed (scripts/install-deps.sh installs qemu-system-x86)"
if ! probe=$(echo quit | timeout 30 "$qemu" -machine none -accel tcg -nodefaults -display none \
  -monitor stdio 2>&1); then
  skip "qemu-system-x86_64 cannot start here: $probe"
fi
for tool in busybox cpio ldd objcopy ibv_devinfo rdma; do
  command -v "$tool" >/dev/null ||
    die "$tool is missing (scripts/install-deps.sh installs busybox-static, cpio, ibverbs-utils, iproute2)"
done
provider=$(ls /usr/lib/*/libibverbs/librxe-rdmav*.so 2>/dev/null | head -n1 || true)
[ -n "$provider" ] || die "the rxe provider of libibverbs is missing (package ibverbs-providers)"
[ -f /etc/libibverbs.d/rxe.driver ] || die "/etc/libibverbs.d/rxe.driver is missing (package ibverbs-providers)"

kernel=$("$repo/scripts/rxe-kernel.sh" | tail -n1)
[ -f "$kernel/vmlinuz" ] || die "scripts/rxe-kernel.sh gave no kernel"

root="$work/initramfs"
rm -rf "$root" "$work/initramfs.cpio" "$work/console.log" "$work/markers.log" "$work/qemu.log"
mkdir -p "$root"/{proc,sys,dev,tmp,usr/bin,usr/sbin,usr/lib,usr/lib64,ferry/bin,ferry/lib,ferry/data,ferry/rxe/programs,ferry/rxe/modules}
# The guest looks like a merged-/usr Debian: /bin, /sbin, /lib, /lib64 are links into /usr.
for dir in bin sbin lib lib64; do ln -s "usr/$dir" "$root/$dir"; done

is_elf() { [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }
# The path a host file has in the guest when kept at "its own" path: the
# directory with links resolved (so /lib/x/libc.so.6 -> /usr/lib/x/libc.so.6),
# the file's own name kept (a soname link stays a soname).
own_path() {
  local dir
  dir=$(cd "$(dirname "$1")" && pwd -P)
  echo "$dir/$(basename "$1")"
}
declare -A placed=() given_names=()
# place HOST GUEST: copies HOST (links followed) to GUEST, then, for an ELF
# file, the libraries it needs.
place() {
  local host=$1 guest=$2 lib
  [ -z "${placed[$guest]:-}" ] || return 0
  placed[$guest]=1
  [ -f "$host" ] || die "no such file: $host"
  mkdir -p "$root$(dirname "$guest")"
  cp -L "$host" "$root$guest"
  is_elf "$host" || return 0
  objcopy --strip-debug "$root$guest" 2>/dev/null || true
  local libs
  if ! libs=$(ldd "$host" 2>&1); then
    grep -q 'not a dynamic executable' <<<"$libs" && return 0
    die "ldd $host failed: $libs"
  fi
  # A library ldd cannot find is fine when one of the --file arguments has
  # its name: the guest finds that one (e.g. LD_LIBRARY_PATH=/ferry/lib).
  local missing
  missing=$(awk '$2 == "=>" && $3 == "not" { print $1 }' <<<"$libs" | while read -r lib; do
    [ -n "${given_names[$lib]:-}" ] || echo "$lib"
  done)
  [ -z "$missing" ] || die "ldd $host: cannot find $(echo $missing) (give it as a --file?)"
  # "libx.so.1 => /path/libx.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)".
  for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs"); do
    place "$lib" "$(own_path "$lib")"
  done
}

# The guest's own tools, at their host paths; busybox supplies the rest.
place "$(command -v busybox)" /usr/bin/busybox
for tool in rdma ibv_devinfo; do
  host=$(command -v "$tool")
  place "$host" "$(own_path "$host")"
done
place "$provider" "$(own_path "$provider")"
# glibc loads libgcc_s itself (pthread_exit, pthread_cancel unwind with it);
# ldd lists it only for programs that link it.
libgcc_s=$(ldconfig -p | awk '$1 == "libgcc_s.so.1" && /x86-64/ { print $NF; exit }')
[ -n "$libgcc_s" ] || die "libgcc_s.so.1 is missing"
place "$libgcc_s" "$(own_path "$libgcc_s")"
place /etc/libibverbs.d/rxe.driver /etc/libibverbs.d/rxe.driver

# guest_path_of SPEC: where --file SPEC goes in the guest.
guest_path_of() {
  local host=${1%%=*}
  if [[ "$1" == *=* ]]; then
    [[ "${1#*=}" == /* ]] || die "--file $1: the guest path must be absolute"
    echo "${1#*=}"
  elif [[ "$(basename "$host")" == *.so || "$(basename "$host")" == *.so.* ]]; then
    echo "/ferry/lib/$(basename "$host")"
  elif [ -x "$host" ]; then
    echo "/ferry/bin/$(basename "$host")"
  else
    echo "/ferry/data/$(basename "$host")"
  fi
}
for spec in "${files[@]}"; do
  guest=$(guest_path_of "$spec")
  given_names[$(basename "$guest")]=1
done
for spec in "${files[@]}"; do
  place "${spec%%=*}" "$(guest_path_of "$spec")"
done

# busybox applets wherever no real program took the name.
while read -r applet; do
  [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /usr/bin/busybox "$root/$applet"
done < <(busybox --list-full | sed 's|^/||; s|^bin/|usr/bin/|; s|^sbin/|usr/sbin/|')

cp "$here/guest/init.sh" "$root/init"
cp "$here/guest/lib.sh" "$root/ferry/rxe/lib.sh"
chmod 755 "$root/init"
echo "RXE_PROGRAM_TIMEOUT=$program_timeout" >"$root/ferry/rxe/config"
cp "$kernel"/modules/*.ko "$root/ferry/rxe/modules/"
cp "$kernel/modules.load" "$root/ferry/rxe/modules.load"
for i in "${!programs[@]}"; do
  [ -f "${program_scripts[$i]}" ] || die "no such program script: ${program_scripts[$i]}"
  cp "${program_scripts[$i]}" "$root/ferry/rxe/programs/${programs[$i]}.sh"
  echo "${programs[$i]}" >>"$root/ferry/rxe/programs.list"
done

# Uncompressed: the guest unpacks it faster than it could decompress.
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) >"$work/initramfs.cpio"
rm -rf "$root"  # `cpio -t <initramfs.cpio` lists what the guest holds
echo "run_in_rxe_vm: kernel $(cat "$kernel/package"), initramfs $(($(stat -c %s "$work/initramfs.cpio") / 1048576)) MiB," \
  "programs: ${programs[*]}; console log: $work/console.log"

start=$(date +%s)
set +e
# TCG: KVM is often missing or unusable (nested) on test machines; no network
# device (rxe0 sits on a dummy netdev and loops back inside the guest).
timeout --kill-after=10 "$timeout" "$qemu" -accel tcg -m "$memory" -smp "$smp" \
  -nodefaults -display none -no-reboot -monitor none \
  -kernel "$kernel/vmlinuz" -initrd "$work/initramfs.cpio" \
  -append "console=ttyS0 rdinit=/init panic=-1 loglevel=6" \
  -serial "file:$work/console.log" -serial "file:$work/markers.log" \
  </dev/null >"$work/qemu.log" 2>&1
qemu_status=$?
set -e
elapsed=$(($(date +%s) - start))

markers=$(tr -d '\r' <"$work/markers.log" 2>/dev/null | grep '^FERRY-RXE ' || true)
failures=()
if [ "$qemu_status" -eq 124 ] || [ "$qemu_status" -eq 137 ]; then
  failures+=("the VM ran past $timeout s and was killed")
elif [ "$qemu_status" -ne 0 ]; then
  failures+=("qemu exited with status $qemu_status: $(cat "$work/qemu.log")")
fi
while read -r line; do
  [ -n "$line" ] && failures+=("guest: $line")
done < <(grep '^FERRY-RXE FAIL' <<<"$markers" || true)
for name in "${programs[@]}"; do
  grep -qE "^FERRY-RXE (PASS|FAIL) ${name//./\\.}( |\$)" <<<"$markers" ||
    failures+=("$name never finished")
done

echo "$markers"
if ((${#failures[@]})); then
  echo "=== console ($work/console.log) ==="
  tr -d '\r' <"$work/console.log" 2>/dev/null || true
  echo "=== end of console ==="
  printf 'run_in_rxe_vm: FAILED: %s\n' "${failures[@]}"
  echo "run_in_rxe_vm: the VM ran ${elapsed} s"
  exit 1
fi
echo "run_in_rxe_vm: all ${#programs[@]} programs passed; the VM ran ${elapsed} s"
