#!/usr/bin/env python3
"""Generates the stand-in driver's tables from the CUDA toolkit at build time.

Inputs: cuda.h (the CUresult enum and its `#define cuX cuX_vN` macros), the
toolkit's stub libcuda.so (the list of every driver symbol, ~637 in CUDA 13)
and the toolkit's *Typedefs.h headers (one `PFN_<name>_v<version>[_ptds|_ptsz]`
typedef per ABI of every driver function). Outputs, into --out-dir:

  cuda_error_table.inc        {code, "CUDA_ERROR_NAME", "description"} rows
  unsupported_entry_points.cc  a weak definition for every exported driver
                               symbol that returns CUDA_ERROR_NOT_SUPPORTED and
                               logs its name once, with its reason from
                               --unsupported-list when it is listed there;
                               ferry's real entry points are strong
                               definitions and take precedence at link time,
                               so no symbol is ever missing.
  proc_address_table.cc        cuGetProcAddress's map: for every driver
                               function name, each ABI version with the
                               exported symbol that implements it (and its
                               per-thread-default-stream export, if any).

A stub takes no parameters: every driver function returns CUresult and the
caller cleans up its own arguments (SysV x86-64 ABI), so ignoring them is safe.
Nothing generated is committed.
"""
import argparse
import os
import re
import subprocess
import sys


def error_table(header_text):
    enum = re.search(r"typedef enum cudaError_enum \{(.*?)\} CUresult;", header_text, re.S)
    if not enum:
        sys.exit("generate_driver_tables: no cudaError_enum in cuda.h")
    rows = []
    for name, value in re.findall(r"\b(CUDA_(?:SUCCESS|ERROR_\w+))\s*=\s*(\d+)", enum.group(1)):
        words = name[len("CUDA_ERROR_"):] if name.startswith("CUDA_ERROR_") else "no error"
        description = words.replace("_", " ").lower()
        rows.append((int(value), name, description))
    if len(rows) < 50:
        sys.exit("generate_driver_tables: found only %d CUresult values" % len(rows))
    return rows


def driver_symbols(stub_library):
    out = subprocess.run(["nm", "-D", "--defined-only", stub_library], check=True,
                         capture_output=True, text=True).stdout
    names = sorted({line.split()[-1] for line in out.splitlines()
                    if len(line.split()) >= 3 and line.split()[1] in ("T", "W")
                    and line.split()[-1].startswith("cu")})
    if len(names) < 400:
        sys.exit("generate_driver_tables: only %d symbols in %s" % (len(names), stub_library))
    return names


# One typedef per ABI of a driver function, e.g.
#   typedef CUresult (CUDAAPI *PFN_cuMemAlloc_v3020)(CUdeviceptr_v2 *dptr, size_t bytesize);
#   typedef CUresult (CUDAAPI *PFN_cuMemcpyHtoDAsync_v7000_ptsz)(...);
PFN_TYPEDEF = re.compile(r"typedef\s+CUresult\s*\(\s*CUDAAPI\s*\*\s*PFN_(cu\w+?)_v(\d+)(_ptds|_ptsz)?\s*\)")


def unsupported_reasons(path, exports):
    """{symbol: reason} from the list of deliberately unsupported functions
    (client/unsupported_functions.txt). A line that names no driver symbol,
    names one twice, or gives no reason stops the build."""
    reasons = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split(None, 1)
            where = "%s:%d" % (path, number)
            if len(parts) < 2:
                sys.exit("generate_driver_tables: %s: %s has no reason" % (where, parts[0]))
            name, reason = parts[0], parts[1].strip()
            if name not in exports:
                sys.exit("generate_driver_tables: %s: %s is not a driver symbol" % (where, name))
            if name in reasons:
                sys.exit("generate_driver_tables: %s: %s is listed twice" % (where, name))
            if '"' in reason or "\\" in reason:
                sys.exit("generate_driver_tables: %s: quotes and backslashes are not allowed" % where)
            reasons[name] = reason
    return reasons


def pfn_typedefs(headers):
    """{name: [(version, suffix)]} from the *Typedefs.h headers; suffix is
    "", "_ptds" or "_ptsz"."""
    by_name = {}
    for path in headers:
        with open(path) as f:
            text = f.read()
        for name, version, suffix in PFN_TYPEDEF.findall(text):
            if int(version) < 1000:
                sys.exit("generate_driver_tables: odd version in PFN_%s_v%s%s" % (name, version, suffix))
            by_name.setdefault(name, set()).add((int(version), suffix or ""))
    if sum(len(v) for v in by_name.values()) < 400:
        sys.exit("generate_driver_tables: only %d PFN typedefs in %s" % (len(by_name), headers))
    return {name: sorted(v) for name, v in by_name.items()}


def version_macros(header_text):
    """cuda.h's `#define cuX cuX_vN` (possibly inside __CUDA_API_PTDS/PTSZ):
    {cuX: cuX_vN}, the newest ABI a program compiled today calls."""
    macros = {}
    pattern = (r"^[ \t]*#define[ \t]+(cu\w+)[ \t]+"
               r"(?:__CUDA_API_PT(?:DS|SZ)\((cu\w+)\)|(cu\w+))[ \t]*$")
    for m in re.finditer(pattern, header_text, re.M):
        macros.setdefault(m.group(1), m.group(2) or m.group(3))
    return macros


def proc_address_map(typedefs, exports, header_text):
    """For each function name, its ABI generations in version order:
    [(version, export, per_thread_version, per_thread_export)].

    The rule (the scheme behind cuda.h's `#define cuMemAlloc cuMemAlloc_v2`
    and the legacy declarations under __CUDA_API_VERSION_INTERNAL): the plain
    typedefs of one name, in version order, are its ABI generations; the
    first is exported under the bare name, the n-th (n >= 2) as `name_vN`.
    A `_ptds`/`_ptsz` typedef at version V is the per-thread-default-stream
    export of the newest generation introduced at or before V, with that
    suffix appended: PFN_cuMemcpyHtoDAsync_v2000 -> cuMemcpyHtoDAsync,
    _v3020 -> cuMemcpyHtoDAsync_v2, _v7000_ptsz -> cuMemcpyHtoDAsync_v2_ptsz.

    Every derived name must be a symbol of the stub library, and the newest
    generation must be what cuda.h's version macro names (where it has one
    for the same function), so a toolkit that breaks the rule stops the build
    instead of resolving to a wrong ABI."""
    macros = version_macros(header_text)
    table = {}
    for name, entries in sorted(typedefs.items()):
        plain = [v for v, suffix in entries if not suffix]
        if not plain:
            sys.exit("generate_driver_tables: %s has per-thread typedefs only" % name)
        generations = []
        for i, version in enumerate(plain):
            generations.append([version, name if i == 0 else "%s_v%d" % (name, i + 1), 0, None])
        for version, suffix in entries:
            if not suffix:
                continue
            older = [g for g in generations if g[0] <= version]
            generation = older[-1] if older else generations[0]
            if generation[3] is not None:
                sys.exit("generate_driver_tables: two per-thread typedefs for %s" % generation[1])
            generation[2] = version
            generation[3] = generation[1] + suffix
        for g in generations:
            for symbol in (g[1], g[3]):
                if symbol is not None and symbol not in exports:
                    sys.exit("generate_driver_tables: PFN rule gives %s for %s, which the stub "
                             "library does not export" % (symbol, name))
        target = macros.get(name)
        if target is not None:
            target = re.sub(r"_pt(ds|sz)$", "", target)
            if target.startswith(name + "_v") and target != generations[-1][1]:
                sys.exit("generate_driver_tables: cuda.h maps %s to %s but the PFN rule gives %s"
                         % (name, target, generations[-1][1]))
        table[name] = [tuple(g) for g in generations]
    unreachable = set(exports) - {s for gens in table.values() for g in gens for s in (g[1], g[3])}
    if unreachable:
        print("generate_driver_tables: no PFN typedef for %s; cuGetProcAddress will not find them"
              % ", ".join(sorted(unreachable)), file=sys.stderr)
    return table


def write_proc_address_table(path, table):
    symbols = sorted({s for gens in table.values() for g in gens for s in (g[1], g[3]) if s})
    with open(path, "w") as f:
        f.write("// Generated by client/generate_driver_tables.py from the toolkit's *Typedefs.h.\n")
        f.write("// Do not edit. %d names, %d exported symbols.\n" % (len(table), len(symbols)))
        f.write('#include "client/proc_address.h"\n\n')
        f.write("// Declared without parameters: only their addresses are taken here, and\n")
        f.write("// this file must not see cuda.h, whose declarations of them differ.\n")
        f.write('extern "C" {\n')
        for symbol in symbols:
            f.write("void %s();\n" % symbol)
        f.write("}\n\nnamespace ferry::client {\n\n")
        f.write("const ProcAddressEntry kProcAddressEntries[] = {\n")
        for name in sorted(table):
            for version, symbol, pt_version, pt_symbol in table[name]:
                f.write('    {"%s", %d, &%s, %d, %s},\n'
                        % (name, version, symbol, pt_version, "&" + pt_symbol if pt_symbol else "nullptr"))
        f.write("};\n")
        f.write("const size_t kProcAddressEntryCount = sizeof(kProcAddressEntries) / "
                "sizeof(kProcAddressEntries[0]);\n\n")
        f.write("}  // namespace ferry::client\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cuda-header", required=True)
    parser.add_argument("--stub-library", required=True)
    parser.add_argument("--typedefs-header", action="append", required=True,
                        help="cudaTypedefs.h, cudaProfilerTypedefs.h (repeatable)")
    parser.add_argument("--unsupported-list", required=True,
                        help="client/unsupported_functions.txt")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    with open(args.cuda_header) as f:
        header = f.read()
    os.makedirs(args.out_dir, exist_ok=True)

    with open(os.path.join(args.out_dir, "cuda_error_table.inc"), "w") as f:
        f.write("// Generated by client/generate_driver_tables.py from cuda.h. Do not edit.\n")
        for code, name, description in error_table(header):
            f.write('{%d, "%s", "%s"},\n' % (code, name, description))

    names = driver_symbols(args.stub_library)
    reasons = unsupported_reasons(args.unsupported_list, set(names))
    with open(os.path.join(args.out_dir, "unsupported_entry_points.cc"), "w") as f:
        f.write("// Generated by client/generate_driver_tables.py. Do not edit.\n")
        f.write("// %d driver symbols; ferry's own definitions override these weak ones.\n" % len(names))
        f.write('#include "client/unsupported.h"\n\nextern "C" {\n')
        for name in names:
            reason = '"%s"' % reasons[name] if name in reasons else "nullptr"
            f.write('__attribute__((weak, visibility("default"))) int %s(void) '
                    '{ return ferry::client::UnsupportedCall("%s", %s); }\n' % (name, name, reason))
        f.write("}\n")
    with open(os.path.join(args.out_dir, "driver_symbols.txt"), "w") as f:
        f.write("\n".join(names) + "\n")

    table = proc_address_map(pfn_typedefs(args.typedefs_header), set(names), header)
    write_proc_address_table(os.path.join(args.out_dir, "proc_address_table.cc"), table)


if __name__ == "__main__":
    main()
