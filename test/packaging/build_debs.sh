#!/bin/sh
# The ctest fixture "ferry_debs" (test/packaging/CMakeLists.txt): builds the
# .deb packages from the build as it stands (cpack installs, it compiles
# nothing) into OUT and unpacks each with dpkg -x into OUT/root, for
# packaging_test.
#   build_debs.sh BUILD_DIR OUT
set -eu
build=$1
out=$2
rm -rf "$out"
mkdir -p "$out"
if ! cpack --config "$build/CPackConfig.cmake" -G DEB -B "$out" > "$out/cpack.log" 2>&1; then
  cat "$out/cpack.log"
  echo "build_debs: cpack failed" >&2
  exit 1
fi
mkdir "$out/root"
for deb in "$out"/*.deb; do
  dpkg -x "$deb" "$out/root"
  echo "build_debs: $(basename "$deb") unpacked into $out/root"
done
