#!/usr/bin/env python3
"""Build-time proof that no instruction above a CPU's level is reachable on it (x86-64).

Runs after `_core` links, over the object files of the C++ sources. Each object belongs to a level:
per-ISA units by their file name (`*_avx2.cpp.o`, ...), every other object to the baseline (x86-64,
SSE2). The rules:

1. every function of an object uses only instructions its level allows;
2. every function the linker can see (global, weak or unique binding) uses baseline instructions
   only, whatever its object's level: when several units emit the same inline function or template
   instantiation and the linker keeps one copy, any copy is safe on every CPU;
3. a per-ISA unit runs no code at load time (no .init_array, .ctors or .preinit_array);
4. only cpu_dispatch (the dispatcher, which checks the CPU first) refers to a unit's tables;
5. a unit above the baseline does use its level (its target region took effect).

With 2-4, a unit's instructions above the baseline sit in local functions reached only through its
dispatch table, and the dispatcher hands a table out only on a CPU that has its level.

Usage: check_isa.py [--objdump PATH] OBJECT...   (exit status 1 and a report on any violation)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

LEVELS = {
    "baseline": set(),
    "scalar": set(),
    "avx2": {"sse3", "sse4", "popcnt", "avx2"},
    "avx512": {"sse3", "sse4", "popcnt", "avx2", "avx512f"},
    "avx512icl": {"sse3", "sse4", "popcnt", "avx2", "avx512f", "gfni", "avx512bitalg"},
    "avx512bf16": {"sse3", "sse4", "popcnt", "avx2", "avx512f", "avx512bf16"},
}
# what a unit of each level must use somewhere (rule 5)
SIGNATURE = {"avx2": {"avx2"}, "avx512": {"avx512f"}, "avx512icl": {"gfni", "avx512bitalg"},
             "avx512bf16": {"avx512bf16"}}

UNIT_RE = re.compile(r"_(scalar|avx2|avx512|avx512icl|avx512bf16)\.(?:cpp|cc|cxx)\.o(?:bj)?$")
ISA_SYMBOL_RE = re.compile(r"^_ZN\w*?11flashparity\d+isa_")  # anything in namespace flashparity::isa_*

LEGACY_PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3}
SSE3 = {"haddps", "haddpd", "hsubps", "hsubpd", "addsubps", "addsubpd", "movddup", "movsldup",
        "movshdup", "lddqu", "fisttp", "fisttps", "fisttpl", "fisttpll", "monitor", "mwait"}
BMI = {"andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext", "rorx", "sarx",
       "shlx", "shrx", "tzcnt"}
EVEX_EXT = [
    (re.compile(r"^v(dpbf16ps|cvtne2ps2bf16|cvtneps2bf16)"), "avx512bf16"),
    (re.compile(r"^v?gf2p8"), "gfni"),
    (re.compile(r"^vp(shufbitqmb|popcnt[bw])"), "avx512bitalg"),
    (re.compile(r"^vpopcnt[dq]"), "avx512vpopcntdq"),
    (re.compile(r"^vpdp(bus|wss)"), "avx512vnni"),
    (re.compile(r"^vp(ermb|ermi2b|ermt2b|multishiftqb)"), "avx512vbmi"),
    (re.compile(r"^vp(compress[bw]|expand[bw]|shld|shrd)"), "avx512vbmi2"),
    (re.compile(r"^vpmadd52"), "avx512ifma"),
    (re.compile(r"^vp(conflict|lzcnt|broadcastm)"), "avx512cd"),
]


def instruction_feature(raw: list[int], mnemonic: str) -> str | None:
    """The CPU feature an instruction needs beyond x86-64's baseline (None: baseline)."""
    i = 0
    while i < len(raw) and raw[i] in LEGACY_PREFIXES:
        i += 1
    if i < len(raw) and 0x40 <= raw[i] <= 0x4F:  # REX
        i += 1
    if i >= len(raw):
        return None
    op = raw[i]
    if op == 0x62:  # EVEX (BOUND does not exist in 64-bit mode)
        for pattern, feature in EVEX_EXT:
            if pattern.match(mnemonic):
                return feature
        if i + 1 < len(raw) and (raw[i + 1] & 0x7) in (5, 6):  # maps 5 and 6: AVX512-FP16
            return "avx512fp16"
        return "avx512f"
    if op in (0xC4, 0xC5):  # VEX: AVX, AVX2, FMA, F16C; BMI; AVX-512's mask-register instructions
        if mnemonic.startswith("k"):
            return "avx512f"
        if mnemonic in BMI:
            return "bmi"
        for pattern, feature in EVEX_EXT:  # VEX forms of GFNI and AVX-VNNI
            if pattern.match(mnemonic):
                return feature if feature == "gfni" else "avx-" + feature
        return "avx2"
    if mnemonic in BMI:
        return "bmi"
    if mnemonic.startswith("popcnt"):
        return "popcnt"
    if mnemonic.startswith("lzcnt"):
        return "lzcnt"
    if mnemonic.startswith("movbe"):
        return "movbe"
    if mnemonic in SSE3:
        return "sse3"
    if op == 0x0F and i + 1 < len(raw) and raw[i + 1] in (0x38, 0x3A):  # SSSE3, SSE4.1/4.2, AES, SHA, ...
        if mnemonic.startswith("gf2p8"):
            return "gfni"
        return "sse4"
    return None


@dataclass
class Function:
    name: str
    section: str
    binding: str = "local"
    features: dict[str, str] = field(default_factory=dict)  # feature -> an example instruction


def run(objdump: str, *args: str) -> str:
    return subprocess.run([objdump, *args], check=True, capture_output=True, text=True).stdout


SYM_RE = re.compile(r"^[0-9a-f]+ (.{7}) (\S+)\s+[0-9a-f]+\s+(?:\S+\s+)?(\S+)$")


def read_object(objdump: str, path: str):
    """(functions keyed by (section, name), section names, undefined symbols) of one object."""
    bindings: dict[tuple[str, str], str] = {}
    undefined: set[str] = set()
    for line in run(objdump, "-t", "-w", path).splitlines():
        m = SYM_RE.match(line)
        if not m:
            continue
        flags, section, name = m.groups()
        if section == "*UND*":
            undefined.add(name)
            continue
        if flags[6] != "F":
            continue
        if flags[1] == "w":
            bindings[(section, name)] = "weak"
        elif flags[0] in "gu!":
            bindings[(section, name)] = "global" if flags[0] != "u" else "unique"
        else:
            bindings[(section, name)] = "local"
    sections = set()
    for line in run(objdump, "-h", "-w", path).splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0].isdigit():
            sections.add(parts[1])
    functions: dict[tuple[str, str], Function] = {}
    section = ""
    current: Function | None = None
    for line in run(objdump, "-d", "-w", path).splitlines():
        if line.startswith("Disassembly of section "):
            section = line[len("Disassembly of section "):].rstrip(":")
            current = None
            continue
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            key = (section, m.group(1))
            current = functions.setdefault(key, Function(m.group(1), section, bindings.get(key, "local")))
            continue
        parts = line.split("\t")
        if current is None or len(parts) < 3 or not parts[0].strip().endswith(":"):
            continue
        try:
            raw = [int(b, 16) for b in parts[1].split()]
        except ValueError:
            continue
        text = parts[2].strip()
        words = text.split()
        # skip prefixes objdump prints as words (rep, lock, data16, notrack, bnd, {evex}...)
        while words and (words[0] in ("rep", "repz", "repe", "repnz", "repne", "lock", "data16", "addr32",
                                      "notrack", "bnd", "cs", "ds", "ss", "es", "fs", "gs") or
                         words[0].startswith("{")):
            words = words[1:]
        mnemonic = words[0] if words else ""
        feature = instruction_feature(raw, mnemonic)
        if feature is not None and feature not in current.features:
            current.features[feature] = text
    return functions, sections, undefined


def demangle(names: list[str]) -> list[str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def check(objdump: str, objects: list[str]) -> list[str]:
    errors: list[str] = []
    for path in objects:
        m = UNIT_RE.search(path)
        level = m.group(1) if m else "baseline"
        allowed = LEVELS[level]
        functions, sections, undefined = read_object(objdump, path)
        short = path.rsplit("/", 1)[-1]
        used: set[str] = set()
        for fn in functions.values():
            used.update(fn.features)
            above = {f: t for f, t in fn.features.items() if f not in allowed}
            shared = fn.binding != "local" and fn.features
            if above or shared:
                name = demangle([fn.name])[0]
                bad = fn.features if shared else above
                what = ", ".join(f"{f} ({t})" for f, t in sorted(bad.items()))
                if shared:
                    errors.append(f"{short}: {fn.binding} function {name} [{fn.section}] uses {what}: "
                                  f"the linker may give this copy to code of any level")
                else:
                    errors.append(f"{short} (level {level}): {name} uses {what}")
        if level != "baseline":
            for s in sorted(sections & {".init_array", ".ctors", ".preinit_array"}):
                errors.append(f"{short}: per-ISA unit has {s}: code that runs at load time on every CPU")
            sig = SIGNATURE.get(level)
            if sig and not (used & sig):
                errors.append(f"{short}: level {level} but no instruction of it ({', '.join(sorted(sig))}): "
                              f"the target region did not take effect")
        if not short.startswith("cpu_dispatch."):
            refs = sorted(n for n in undefined if ISA_SYMBOL_RE.search(n))
            for name in demangle(refs):
                errors.append(f"{short}: refers to {name}; only cpu_dispatch may name a unit's table")
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objdump", default=shutil.which("objdump") or "objdump")
    ap.add_argument("objects", nargs="+")
    args = ap.parse_args(argv)
    errors = check(args.objdump, args.objects)
    if errors:
        print("check_isa: instructions above a CPU's level are reachable without the dispatcher:", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    units = sum(1 for o in args.objects if UNIT_RE.search(o))
    print(f"check_isa: {len(args.objects)} objects ({units} per-ISA units) pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
