"""What the framework probes share: one verdict line per probe and a summary.

A probe is a function returning a detail string; it passes when it returns,
fails when it raises (the exception is its detail), and is skipped when it
raises Skip. Each line reads "PASS|FAIL|SKIP <framework>.<probe> <seconds>s
<detail>"; scripts/test-frameworks.sh counts them. The last line is
"probes-done <framework>", so a process that dies part-way (a crash in the
stub, a timeout) is told apart from one that ran every probe.
"""
import os
import sys
import time
import traceback


class Skip(Exception):
    """The probe does not apply here; its message says why."""


class Probes:
    def __init__(self, framework):
        self.framework = framework
        self.failed = 0

    def run(self, name, fn):
        start = time.perf_counter()
        try:
            detail, verdict = fn(), "PASS"
        except Skip as reason:
            detail, verdict = str(reason), "SKIP"
        except Exception as error:  # noqa: BLE001 - any failure is this probe's
            traceback.print_exc(file=sys.stderr)
            first_line = (str(error).strip().splitlines() or [""])[0]
            detail, verdict = "%s: %s" % (type(error).__name__, first_line[:200]), "FAIL"
            self.failed += 1
        seconds = time.perf_counter() - start
        print("%s %s.%s %.2fs %s" % (verdict, self.framework, name, seconds, detail),
              flush=True)

    def finish(self):
        print("probes-done %s" % self.framework, flush=True)
        return 1 if self.failed else 0


def check(condition, message):
    """A probe's assertion (assert statements vanish under python -O)."""
    if not condition:
        raise AssertionError(message)


def loaded_libcuda():
    """Every libcuda.so* this process mapped (/proc/self/maps)."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and os.path.basename(parts[5]).startswith("libcuda.so"):
                paths.add(parts[5])
    return sorted(paths)


def check_ferry_libcuda():
    """The process must run on ferry's libcuda.so.1 (FERRY_LIBCUDA_DIR names
    its folder), not some other driver found first."""
    expected = os.environ.get("FERRY_LIBCUDA_DIR")
    paths = loaded_libcuda()
    check(paths, "no libcuda.so mapped")
    if expected:
        expected = os.path.realpath(expected)
        foreign = [p for p in paths if os.path.dirname(os.path.realpath(p)) != expected]
        check(not foreign, "libcuda from elsewhere: %s" % foreign)
    return ", ".join(paths)
