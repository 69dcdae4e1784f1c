#!/usr/bin/env python3
"""Build-time check that no instruction above a CPU's level is reachable on it (x86-64).

Runs after `_core` links, over the object files of the C++ sources. Each object belongs to a level:
per-ISA units by their file name (`*_avx2.cpp.o`, ...), every other object to the baseline (x86-64,
SSE2). The rules:

1. every function of an object uses only instructions its level allows;
2. every function the linker can see (global, weak or unique binding), in any object, uses baseline
   instructions only: when several units emit the same inline function or template instantiation
   and the linker keeps one copy, any copy is safe on every CPU;
3. a per-ISA unit exports no function, and no data but its own dispatch tables
   (`flashparity::isa_<level>::*_table`);
4. no function a unit exports (its weak baseline copies) reaches, through the calls and references
   in its code, a local function with instructions above the baseline;
5. a per-ISA unit runs no code at load or unload time (.init_array*, .ctors*, .preinit_array*,
   .fini_array*, .dtors*);
6. only cpu_dispatch (the dispatcher, which checks the CPU first) refers to what a unit exports;
7. a unit above the baseline does use its level (its target region took effect).

With 2-6, a unit's instructions above the baseline sit in local functions reached only through its
dispatch tables, and the dispatcher hands a table out only on a CPU that has its level. The check
fails closed: an instruction it does not know is refused, an object it cannot read (no machine
code, LTO bytecode, objdump output it cannot parse) is an error.

Usage: check_isa.py [--objdump PATH] OBJECT...   (exit status 1 and a report on any violation)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

BASE = {"sse3", "sse4", "popcnt", "avx2", "pclmul"}
LEVELS = {
    "baseline": set(),
    "scalar": set(),
    "avx2": BASE,
    "avx512": BASE | {"avx512f"},
    "avx512icl": BASE | {"avx512f", "gfni", "avx512bitalg"},
    "avx512bf16": BASE | {"avx512f", "avx512bf16"},
    "avx512amx": BASE | {"avx512f", "avx512bf16", "amx"},
}
# what a unit of each level must use somewhere (rule 7)
SIGNATURE = {"avx2": {"avx2"}, "avx512": {"avx512f"}, "avx512icl": {"gfni", "avx512bitalg"},
             "avx512bf16": {"avx512bf16"}, "avx512amx": {"amx"}}

UNIT_RE = re.compile(r"_(scalar|avx2|avx512|avx512icl|avx512bf16|avx512amx)\.(?:cpp|cc|cxx)\.o(?:bj)?$")
ISA_SYMBOL_RE = re.compile(r"^_ZN\w*?11flashparity\d+isa_")  # anything in namespace flashparity::isa_*
LOAD_TIME_RE = re.compile(r"^\.(init_array|preinit_array|ctors|fini_array|dtors)(\.|$)")

LEGACY_PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3}
SSE3 = {"haddps", "haddpd", "hsubps", "hsubpd", "addsubps", "addsubpd", "movddup", "movsldup",
        "movshdup", "lddqu", "fisttp", "fisttps", "fisttpl", "fisttpll", "monitor", "mwait"}
BMI = {"andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext", "rorx", "sarx",
       "shlx", "shrx"}
OTHER_LEGACY = re.compile(r"^(rdrand|rdseed|prefetchw|clflushopt|clwb|xsave|xrstor|rdpid|serialize|"
                          r"wbnoinvd|movdir|enqcmd|tpause|umonitor|umwait|xbegin|xend|xabort|xtest|"
                          r"rdfsbase|rdgsbase|wrfsbase|wrgsbase|adcx|adox)")
# extensions outside every level (whatever their encoding), then those some levels allow
FAMILIES = [
    (re.compile(r"^v?aes"), "aes"),
    (re.compile(r"^v?pclmul"), "pclmul"),
    (re.compile(r"^v?sha|^vsm3|^vsm4"), "sha"),
    (re.compile(r"^v?gf2p8"), "gfni"),
    (re.compile(r"^vp2intersect"), "avx512vp2intersect"),
    (re.compile(r"^v(dpbf16ps|cvtne2ps2bf16|cvtneps2bf16)"), "avx512bf16"),
    (re.compile(r"^vp(shufbitqmb|popcnt[bw])"), "avx512bitalg"),
    (re.compile(r"^vpopcnt[dq]"), "avx512vpopcntdq"),
    (re.compile(r"^vpdp"), "vnni"),
    (re.compile(r"^vp(ermb|ermi2b|ermt2b|multishiftqb)"), "avx512vbmi"),
    (re.compile(r"^vp(compress[bw]|expand[bw]|shld|shrd)"), "avx512vbmi2"),
    (re.compile(r"^vpmadd52"), "ifma"),
    (re.compile(r"^vp(conflict|lzcnt|broadcastm)"), "avx512cd"),
    (re.compile(r"^v(cvtne[eo]|bcstne)"), "avx-ne-convert"),
    (re.compile(r"^(v(?!cvtph2ps|cvtps2ph)\w+(ph|sh)x?)$"), "avx512fp16"),
]


def instruction_feature(raw: list[int], mnemonic: str) -> str | None:
    """The CPU feature an instruction needs beyond x86-64's baseline (None: baseline)."""
    i = 0
    while i < len(raw) and raw[i] in LEGACY_PREFIXES:
        i += 1
    prefixes = set(raw[:i])
    if i < len(raw) and 0x40 <= raw[i] <= 0x4F:  # REX
        i += 1
    if i >= len(raw):
        return None
    op, nxt = raw[i], (raw[i + 1] if i + 1 < len(raw) else 0)
    if op == 0x62:  # EVEX (BOUND does not exist in 64-bit mode)
        evex_map = nxt & 0x7
        if evex_map in (5, 6):
            return "avx512fp16"
        if evex_map not in (1, 2, 3):
            return "evex-map%d" % evex_map  # APX (map 4) and anything newer
        for pattern, feature in FAMILIES:
            if pattern.match(mnemonic):
                return feature
        return "avx512f"
    if op in (0xC4, 0xC5):  # VEX: AVX, AVX2, FMA, F16C; BMI; AVX-512's mask-register instructions
        if mnemonic.startswith("k"):
            return "avx512f"
        if mnemonic in BMI:
            return "bmi"
        if op == 0xC4 and (nxt & 0x1F) not in (1, 2, 3):
            return "vex-map%d" % (nxt & 0x1F)  # (AMX's tile instructions are map 2: caught below)
        if mnemonic.startswith("t") or "tmm" in mnemonic or mnemonic in ("ldtilecfg", "sttilecfg"):
            return "amx"
        for pattern, feature in FAMILIES:
            if pattern.match(mnemonic):
                return feature if feature in ("gfni", "aes", "pclmul", "sha") else "avx-" + feature
        return "avx2"
    if op == 0x8F and (nxt & 0x1F) >= 8:  # XOP (AMD): POP's ModRM has reg = 0, never map >= 8
        return "xop"
    if mnemonic in BMI:
        return "bmi"
    if op == 0x0F and nxt == 0xB8 and 0xF3 in prefixes:
        return "popcnt"
    if op == 0x0F and nxt == 0xBD and 0xF3 in prefixes:
        return "lzcnt"  # (F3 0F BC, `rep bsf`, is what GCC emits for a baseline ctz: BSF everywhere)
    if mnemonic.startswith("movbe"):
        return "movbe"
    if mnemonic in SSE3:
        return "sse3"
    if OTHER_LEGACY.match(mnemonic):
        return "other:" + mnemonic
    if op == 0x0F and nxt in (0x38, 0x3A):  # SSSE3, SSE4.1/4.2, CRC32; AES, SHA, GFNI, PCLMULQDQ
        for pattern, feature in FAMILIES[:4]:
            if pattern.match(mnemonic):
                return feature
        return "sse4"
    return None


@dataclass
class Function:
    name: str
    section: str
    start: int
    binding: str = "local"
    features: dict[str, str] = field(default_factory=dict)  # feature -> an example instruction
    refs: set[str] = field(default_factory=set)  # symbols and "section+addend" it refers to
    end: int = 0


@dataclass
class Object:
    path: str
    level: str
    functions: dict[tuple[str, str], Function]
    defined: dict[str, tuple[str, str]]  # name -> (binding, kind: F function, O data, or ' ')
    undefined: set[str]
    sections: set[str]
    instructions: int  # parsed from the disassembly; -1: the object has no code

    @property
    def short(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def run(objdump: str, *args: str) -> str:
    return subprocess.run([objdump, *args], check=True, capture_output=True, text=True).stdout


SYM_RE = re.compile(r"^[0-9a-f]+ (.{7}) (\S+)\s+[0-9a-f]+\s+(?:\S+\s+)?(\S+)$")
TARGET_RE = re.compile(r"<([^>+]+)(?:\+0x[0-9a-f]+)?>")
PREFIX_WORDS = {"rep", "repz", "repe", "repnz", "repne", "lock", "data16", "addr32", "notrack", "bnd",
                "cs", "ds", "ss", "es", "fs", "gs"}


def binding_of(flags: str) -> str:
    if flags[1] == "w":
        return "weak"
    if flags[0] == "l":
        return "local"
    if flags[0] == "u":
        return "unique"
    return "global"  # g, ! and anything unknown: visible to the linker (fails closed)


def read_object(objdump: str, path: str) -> Object:
    m = UNIT_RE.search(path)
    defined: dict[str, tuple[str, str]] = {}
    bindings: dict[tuple[str, str], str] = {}
    undefined: set[str] = set()
    for line in run(objdump, "-t", "-w", path).splitlines():
        m2 = SYM_RE.match(line)
        if not m2:
            continue
        flags, section, name = m2.groups()
        if section == "*UND*":
            undefined.add(name)
            continue
        if flags[6] == "d" or flags[6] == "f":  # section and file symbols
            continue
        defined[name] = (binding_of(flags), flags[6])
        if flags[6] == "F":
            bindings[(section, name)] = binding_of(flags)
    sections, code_bytes = set(), 0
    for line in run(objdump, "-h", "-w", path).splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0].isdigit():
            sections.add(parts[1])
            if parts[1].startswith(".text"):
                code_bytes += int(parts[2], 16)
    functions: dict[tuple[str, str], Function] = {}
    section, current, count = "", None, 0
    for line in run(objdump, "-d", "-r", "-w", path).splitlines():
        if line.startswith("Disassembly of section "):
            section, current = line[len("Disassembly of section "):].rstrip(":"), None
            continue
        head = re.match(r"^([0-9a-f]+) <(.+)>:$", line)
        if head:
            key = (section, head.group(2))
            current = functions.setdefault(key, Function(head.group(2), section, int(head.group(1), 16),
                                                         bindings.get(key, "local")))
            continue
        if current is None:
            continue
        if "\tR_X86_64_" in line or " R_X86_64_" in line:  # a relocation: what this code refers to
            current.refs.add(line.split()[-1])
            continue
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].strip().endswith(":"):
            continue
        try:
            raw = [int(b, 16) for b in parts[1].split()]
            addr = int(parts[0].strip()[:-1], 16)
        except ValueError:
            continue
        count += 1
        current.end = max(current.end, addr + len(raw))
        text = parts[2].strip()
        words = text.split()
        while words and (words[0] in PREFIX_WORDS or words[0].startswith("{")):
            words = words[1:]
        mnemonic = words[0] if words else ""
        if mnemonic.startswith(("call", "j")):  # a branch resolved by the assembler: its target by name
            t = TARGET_RE.search(text)
            if t and t.group(1) != current.name:
                current.refs.add(t.group(1))
        feature = instruction_feature(raw, mnemonic)
        if feature is not None and feature not in current.features:
            current.features[feature] = text
    return Object(path, m.group(1) if m else "baseline", functions, defined, undefined, sections,
                  count if code_bytes else -1)


def demangle(names: list[str]) -> list[str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def referenced_functions(obj: Object, fn: Function) -> list[Function]:
    """The functions of obj that fn's code refers to (by name, or by section + addend, taking every
    function within the 16 bytes a PC-relative addend may sit before its target)."""
    out = []
    for ref in fn.refs:
        m = re.match(r"^(.*?)([+-]0x[0-9a-f]+)?$", ref)
        name, addend = m.group(1), int(m.group(2), 16) if m.group(2) else 0
        by_name = [f for (s, n), f in obj.functions.items() if n == name]
        if by_name:
            out.extend(by_name)
            continue
        for (s, n), f in obj.functions.items():  # `name` is a section symbol
            if s == name and f.start < addend + 16 and addend < max(f.end, f.start + 1):
                out.append(f)
    return out


def check(objdump: str, objects: list[str]) -> list[str]:
    version = run(objdump, "--version").splitlines()[:1]
    if not version or "GNU objdump" not in version[0]:
        return [f"{objdump}: not GNU objdump ({version[0] if version else 'no version'}); its output is the "
                f"format this check reads"]
    errors: list[str] = []
    objs = [read_object(objdump, p) for p in objects]
    exported_by_units: dict[str, str] = {}  # symbol -> unit
    for o in objs:
        if o.level != "baseline":
            for name, (binding, _kind) in o.defined.items():
                if binding != "local":
                    exported_by_units[name] = o.short
    for o in objs:
        allowed = LEVELS[o.level]
        if any(s.startswith(".gnu.lto_") for s in o.sections):
            errors.append(f"{o.short}: LTO bytecode, no machine code to check (build without LTO, "
                          f"or configure with -DFLASHPARITY_ISA_CHECK=OFF)")
            continue
        if o.instructions == 0:
            errors.append(f"{o.short}: has code but objdump's output gave no instruction to check")
        used: set[str] = set()
        for fn in o.functions.values():
            used.update(fn.features)
            above = {f: t for f, t in fn.features.items() if f not in allowed}
            shared = fn.binding != "local" and fn.features
            if above or shared:
                name = demangle([fn.name])[0]
                bad = fn.features if shared else above
                what = ", ".join(f"{f} ({t})" for f, t in sorted(bad.items()))
                if shared:
                    errors.append(f"{o.short}: {fn.binding} function {name} [{fn.section}] uses {what}: "
                                  f"the linker may give this copy to code of any level")
                else:
                    errors.append(f"{o.short} (level {o.level}): {name} uses {what}")
        if o.level != "baseline":
            table_re = re.compile(rf"^_ZN11flashparity{len('isa_' + o.level)}isa_{o.level}\d+\w+_tableE$")
            for name, (binding, kind) in sorted(o.defined.items()):
                if binding == "local" or (kind == "F" and binding == "weak"):
                    continue  # (weak functions: rules 2 and 4)
                if kind == "O" and binding == "weak" and name.startswith("DW.ref."):
                    continue  # the exception-handling personality's address, shared by every object
                if kind == "F" or not table_re.match(name):
                    errors.append(f"{o.short}: exports {demangle([name])[0]} ({binding}); a per-ISA unit "
                                  f"exports its isa_{o.level} dispatch tables and nothing else")
            above_memo: dict[int, bool] = {}

            def reaches_above(fn: Function, path: tuple[int, ...] = ()) -> bool:
                if id(fn) in above_memo:
                    return above_memo[id(fn)]
                if id(fn) in path:
                    return False
                r = bool(fn.features) or any(
                    reaches_above(g, path + (id(fn),)) for g in referenced_functions(o, fn) if g is not fn)
                above_memo[id(fn)] = r
                return r

            for fn in o.functions.values():
                if fn.binding != "local" and not fn.features and reaches_above(fn):
                    errors.append(f"{o.short}: {fn.binding} function {demangle([fn.name])[0]} reaches code above "
                                  f"the baseline without the dispatcher")
            for s in sorted(o.sections):
                if LOAD_TIME_RE.match(s):
                    errors.append(f"{o.short}: per-ISA unit has {s}: code that runs at load or unload time "
                                  f"on every CPU")
            sig = SIGNATURE.get(o.level)
            if sig and not (used & sig):
                errors.append(f"{o.short}: level {o.level} but no instruction of it ({', '.join(sorted(sig))}): "
                              f"the target region did not take effect")
        elif not o.short.startswith("cpu_dispatch."):
            refs = sorted(n for n in o.undefined if ISA_SYMBOL_RE.search(n) or n in exported_by_units)
            for name in refs:
                errors.append(f"{o.short}: refers to {demangle([name])[0]}"
                              + (f" (from {exported_by_units[name]})" if name in exported_by_units else "")
                              + "; only cpu_dispatch may use what a per-ISA unit exports")
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
