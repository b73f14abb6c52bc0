#!/usr/bin/env python3
"""Generates the mechanical parts of forwarding a call from schema/ferry.capnp.

Each member of Call's union describes itself with annotations declared in the
schema ($waits, $orderedOn, $handles, $ranges, $usesContext; schema/README.md
explains them). This script reads the schema text with a strict parser: a
member without $waits, an unknown annotation, a value outside the allowed
set, or a field name the member's argument struct does not have stops the
build with a message that names the member. capnp itself compiles the same
file, so the schema stays valid Cap'n Proto.

Outputs (in --out-dir, never committed):
  session_dispatch.inc  the body of Session::Dispatch: a switch over
                        wire::Call::Which calling each member's handler
  session_handlers.inc  the handler declarations inside class Session
  call_table.h          ferry::wire::kCallWaits and kCallDescriptions, indexed
                        by Call::which()
"""

import argparse
import json
import os
import re
import sys

WAITS = {
    "always": "kAlways",
    "never": "kNever",
    "by-flag": "kByFlag",
    "gate": "kGate",
}
ANNOTATIONS = {"waits", "orderedOn", "handles", "ranges", "usesContext"}


class SchemaError(Exception):
    pass


def strip_comments(text):
    """Removes `#` comments, keeping quoted strings intact and line numbers."""
    out = []
    for line in text.split("\n"):
        in_string = False
        cut = len(line)
        for i, c in enumerate(line):
            if c == '"':
                in_string = not in_string
            elif c == "#" and not in_string:
                cut = i
                break
        out.append(line[:cut])
    return "\n".join(out)


def block_after(text, start_pattern, start=0):
    """The text between the braces that follow `start_pattern`'s match."""
    m = re.compile(start_pattern).search(text, start)
    if not m:
        raise SchemaError(f"no match for {start_pattern!r}")
    open_at = text.index("{", m.start())
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i], open_at + 1
    raise SchemaError(f"unbalanced braces after {start_pattern!r}")


def struct_fields(text):
    """Top-level field names of every struct: {struct name: set(field names)}."""
    fields = {}
    for m in re.finditer(r"\bstruct\s+(\w+)\s*\{", text):
        body, _ = block_after(text, r"\bstruct\s+" + m.group(1) + r"\s*\{", m.start())
        names = set()
        # Fields at depth 0 of the body: drop nested blocks first.
        flat = body
        while re.search(r"\{[^{}]*\}", flat):
            flat = re.sub(r"\{[^{}]*\}", "", flat)
        for f in re.finditer(r"\b(\w+)\s+@\d+\s*:", flat):
            names.add(f.group(1))
        fields[m.group(1)] = names
    return fields


MEMBER = re.compile(r"^(\w+)\s+@(\d+)\s*:\s*(\w+)\s*(.*)$", re.S)
ANNOTATION = re.compile(r"\s*\$(\w+)(?:\(([^()]*)\))?")


def parse_members(text):
    text = strip_comments(text)
    call_body, _ = block_after(text, r"\bstruct\s+Call\s*\{")
    union_body, _ = block_after(call_body, r"\bunion\s*\{")
    if re.search(r"\b(union|group)\b|\{", union_body):
        raise SchemaError("Call's union holds a nested group or union; the generator "
                          "supports plain members only")
    fields = struct_fields(text)
    members = []
    for statement in union_body.split(";"):
        statement = statement.strip()
        if not statement:
            continue
        m = MEMBER.match(statement)
        if not m:
            raise SchemaError(f"cannot parse Call member: {' '.join(statement.split())!r}")
        name, ordinal, type_name, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        annotations = {}
        pos = 0
        rest = rest.rstrip()
        while pos < len(rest):
            a = ANNOTATION.match(rest, pos)
            if not a or a.end() == pos:
                raise SchemaError(f"Call member {name}: cannot parse {rest[pos:].strip()!r}")
            key = a.group(1)
            if key not in ANNOTATIONS:
                raise SchemaError(f"Call member {name}: unknown annotation ${key}")
            if key in annotations:
                raise SchemaError(f"Call member {name}: ${key} given twice")
            value = a.group(2)
            try:
                annotations[key] = json.loads(value) if value is not None else True
            except json.JSONDecodeError as e:
                raise SchemaError(f"Call member {name}: bad ${key} value {value!r}: {e}")
            pos = a.end()
        members.append(describe(name, ordinal, type_name, annotations, fields))
    if not members:
        raise SchemaError("Call's union has no members")
    ordinals = [m["ordinal"] for m in members]
    if len(set(ordinals)) != len(ordinals):
        raise SchemaError("Call's union repeats an ordinal")
    # capnp numbers a union's discriminants in ordinal order.
    members.sort(key=lambda m: m["ordinal"])
    return members


def describe(name, ordinal, type_name, annotations, fields):
    where = f"Call member {name} @{ordinal}"
    if "waits" not in annotations:
        raise SchemaError(f"{where} has no $waits annotation: say whether the client waits "
                          f"for its reply ({' | '.join(WAITS)})")
    waits = annotations["waits"]
    if waits not in WAITS:
        raise SchemaError(f"{where}: $waits({waits!r}) is not one of {', '.join(WAITS)}")
    void = type_name == "Void"
    if not void and type_name not in fields:
        raise SchemaError(f"{where}: argument type {type_name} is not a struct of the schema")
    arg_fields = fields.get(type_name, set())

    def field_list(key):
        value = annotations.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SchemaError(f"{where}: ${key} wants a list of field names")
        for v in value:
            if v not in arg_fields:
                raise SchemaError(f"{where}: ${key} names {v!r}, not a field of {type_name}")
        return value

    ordered_on = annotations.get("orderedOn")
    if ordered_on is not None:
        if not isinstance(ordered_on, str) or ordered_on not in arg_fields:
            raise SchemaError(f"{where}: $orderedOn names {ordered_on!r}, not a field of "
                              f"{type_name}")
        if "ctx" not in arg_fields:
            raise SchemaError(f"{where}: $orderedOn needs a ctx field in {type_name}")
    if annotations.get("usesContext", True) is not True:
        raise SchemaError(f"{where}: $usesContext takes no value")
    if void and set(annotations) != {"waits"}:
        raise SchemaError(f"{where}: a Void member has no arguments and no handler; "
                          f"it takes $waits only")
    return {
        "name": name,
        "ordinal": ordinal,
        "type": type_name,
        "void": void,
        "waits": waits,
        "ordered_on": ordered_on,
        "handles": field_list("handles"),
        "ranges": field_list("ranges"),
        "uses_context": "usesContext" in annotations,
    }


def upper_snake(name):
    # capnpc-c++'s rule for enumerant names: upper-case every letter and put
    # an underscore before each letter that was upper case (memcpy2D ->
    # MEMCPY2_D, memcpyHtoD -> MEMCPY_HTO_D).
    out = []
    for i, c in enumerate(name):
        if c.isupper() and i > 0:
            out.append("_")
        out.append(c.upper())
    return "".join(out)


def capitalised(name):
    return name[0].upper() + name[1:]


HEADER = "// Generated by schema/generate_calls.py from schema/ferry.capnp. Do not edit.\n"


def dispatch_inc(members):
    lines = [HEADER, "// The body of Session::Dispatch(wire::Call::Reader call, CallContext& cx).",
             "using W = wire::Call;", "switch (call.which()) {"]
    for m in members:
        lines.append(f"  case W::{upper_snake(m['name'])}:")
        if m["void"]:
            lines.append("    return Status::Ok();  // no arguments: executing it in order is all")
            continue
        args = f"call.get{capitalised(m['name'])}()"
        if m["uses_context"]:
            args += ", cx"
        lines.append(f"    return {capitalised(m['name'])}({args});")
    lines.append("}")
    lines.append("return Status::Unimplemented(\"call ordinal \" + "
                 "std::to_string(static_cast<int>(call.which())) +")
    lines.append("                             \" is not known to this ferryd\");")
    return "\n".join(lines) + "\n"


def handlers_inc(members):
    lines = [HEADER, "// Handlers (executor thread), one per Call member with arguments."]
    for m in members:
        if m["void"]:
            continue
        params = f"wire::{m['type']}::Reader args"
        if m["uses_context"]:
            params += ", CallContext& cx"
        lines.append(f"Status {capitalised(m['name'])}({params});")
    return "\n".join(lines) + "\n"


def call_table_h(members):
    n = len(members)
    lines = [
        HEADER,
        "// What each Call member's description says, indexed by Call::which().",
        "// Thread-safety: constants only.",
        "#pragma once",
        "",
        "#include <cstddef>",
        "#include <cstdint>",
        "",
        '#include "schema/ferry.capnp.h"',
        "",
        "namespace ferry::wire {",
        "",
        "// Whether the client waits for a call's reply ($waits in the schema).",
        "enum class CallWaits : uint8_t {",
        "  kAlways,  // sent with wantsReply (Connection::Call or PostExpectingBytes)",
        "  kNever,   // sent without wantsReply (Connection::Post)",
        "  kByFlag,  // either; wantsReply decides per call",
        "  kGate,    // sent without wantsReply through Connection::PostHostGate",
        "};",
        "",
        f"inline constexpr size_t kCallMembers = {n};",
        "",
        "inline constexpr CallWaits kCallWaits[kCallMembers] = {",
    ]
    for m in members:
        lines.append(f"    CallWaits::{WAITS[m['waits']]},  // {m['name']}")
    lines.append("};")
    lines.append("")
    lines += [
        "// The rest of a member's description, for logs and tests: its name and",
        "// the argument fields it is ordered on, carries handles in, and carries",
        "// device addresses in (comma-separated; \"\" = none).",
        "struct CallDescription {",
        "  const char* name;",
        "  const char* ordered_on;",
        "  const char* handles;",
        "  const char* ranges;",
        "};",
        "",
        "inline constexpr CallDescription kCallDescriptions[kCallMembers] = {",
    ]
    for m in members:
        lines.append(f'    {{"{m["name"]}", "{m["ordered_on"] or ""}", "{",".join(m["handles"])}", '
                     f'"{",".join(m["ranges"])}"}},')
    lines.append("};")
    lines.append("")
    lines.append("// The description of `which`; out-of-range values (a newer peer's")
    lines.append("// calls) have none.")
    lines.append("constexpr const CallWaits* FindCallWaits(Call::Which which) {")
    lines.append("  const auto index = static_cast<size_t>(which);")
    lines.append("  return index < kCallMembers ? &kCallWaits[index] : nullptr;")
    lines.append("}")
    lines.append("")
    lines.append("// The tables follow capnp's discriminant numbering.")
    for i, m in enumerate(members):
        lines.append(f"static_assert(static_cast<size_t>(Call::{upper_snake(m['name'])}) == {i});")
    lines.append("")
    lines.append("}  // namespace ferry::wire")
    return "\n".join(lines) + "\n"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schema", required=True)
    parser.add_argument("--out-dir", required=True, help="call_table.h (both sides include it)")
    parser.add_argument(
        "--server-out-dir", help="the session's .inc files (only ferryd sees them); default --out-dir")
    args = parser.parse_args()
    server_out_dir = args.server_out_dir or args.out_dir
    with open(args.schema) as f:
        text = f.read()
    try:
        members = parse_members(text)
    except SchemaError as e:
        print(f"{args.schema}: error: {e}", file=sys.stderr)
        return 1
    os.makedirs(args.out_dir, exist_ok=True)
    os.makedirs(server_out_dir, exist_ok=True)
    write(os.path.join(server_out_dir, "session_dispatch.inc"), dispatch_inc(members))
    write(os.path.join(server_out_dir, "session_handlers.inc"), handlers_inc(members))
    write(os.path.join(args.out_dir, "call_table.h"), call_table_h(members))
    return 0


if __name__ == "__main__":
    sys.exit(main())
