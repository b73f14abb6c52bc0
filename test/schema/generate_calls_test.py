#!/usr/bin/env python3
"""schema/generate_calls.py fails loudly on a schema whose call descriptions
are incomplete or wrong, and succeeds on the real one.

Each case copies schema/ferry.capnp, breaks one member's description, runs the
generator on the copy, and expects exit status 1, a message that names the
member, and no generated files.

Usage: generate_calls_test.py GENERATOR SCHEMA
"""

import os
import re
import subprocess
import sys
import tempfile

GENERATOR, SCHEMA = sys.argv[1], sys.argv[2]
with open(SCHEMA) as f:
    GOOD = f.read()


def run(text):
    with tempfile.TemporaryDirectory() as tmp:
        schema = os.path.join(tmp, "ferry.capnp")
        out = os.path.join(tmp, "out")
        with open(schema, "w") as f:
            f.write(text)
        result = subprocess.run(
            [sys.executable, GENERATOR, "--schema", schema, "--out-dir", out],
            capture_output=True, text=True, timeout=60)
        produced = sorted(os.listdir(out)) if os.path.isdir(out) else []
        return result.returncode, result.stderr, produced


def broken(old, new):
    assert GOOD.count(old) == 1, f"the schema no longer holds {old!r}; update this test"
    return GOOD.replace(old, new)


failures = []


def expect_failure(what, text, *needles):
    code, stderr, produced = run(text)
    if code != 1:
        failures.append(f"{what}: exit status {code}, want 1 (stderr: {stderr!r})")
    for needle in needles:
        if needle not in stderr:
            failures.append(f"{what}: stderr lacks {needle!r}: {stderr!r}")
    if produced:
        failures.append(f"{what}: generated {produced} anyway")


code, stderr, produced = run(GOOD)
if code != 0 or produced != ["call_table.h", "session_dispatch.inc", "session_handlers.inc"]:
    failures.append(f"the real schema: exit {code}, files {produced}, stderr {stderr!r}")

# A member with no $waits at all.
expect_failure(
    "unannotated member",
    re.sub(r'(memFree @11 :MemFree)\s+\$waits\("never"\)', r"\1", GOOD),
    "memFree", "no $waits")
# A $waits value outside the set.
expect_failure("bad $waits value", broken('memset @17 :Memset\n        $waits("never")',
                                          'memset @17 :Memset\n        $waits("sometimes")'),
               "memset", "sometimes")
# A handle field the argument struct lacks.
expect_failure("unknown handle field",
               broken('ctxDestroy @5 :CtxRef\n        $waits("never") $handles(["ctx"])',
                      'ctxDestroy @5 :CtxRef\n        $waits("never") $handles(["stream"])'),
               "ctxDestroy", "'stream'")
# A misspelt annotation.
expect_failure("unknown annotation",
               broken('memFree @11 :MemFree\n        $waits("never") $ranges(["dptr"])',
                      'memFree @11 :MemFree\n        $waits("never") $range(["dptr"])'),
               "memFree", "$range")
# A new member without any description.
expect_failure("new member without description",
               broken("  union {\n    ping @3", "  union {\n    brandNew @99 :CtxRef;\n    ping @3"),
               "brandNew", "no $waits")

for failure in failures:
    print("FAIL:", failure)
print(f"{'FAILED' if failures else 'PASSED'}")
sys.exit(1 if failures else 0)
