#!/usr/bin/env python3
"""Build-time check of the aarch64 objects: no instruction above ARMv8.0-A's NEON baseline is
reachable without the dispatcher choosing a unit for a CPU that has it (the aarch64 counterpart
of check_isa.py).

aarch64 instructions have one fixed width, so they are classified by mnemonic and operands: the
extensions a kernel could pick up (BF16, FP16 arithmetic, FHM, dot products, I8MM, SVE, LSE
atomics, RCPC, RDM, JSCVT, FCMA, FRINTTS, CRC32) are named; everything else is ARMv8.0-A. The
rules:

1. BF16 instructions only in attention_neonbf16 (the dispatcher picks it on CPUs with FEAT_BF16),
   and that unit has some (its target region took effect);
2. CRC32 instructions only in parity_block_neon's crc32_hw and crc32_stream, which its crc32()
   calls only when cpu_has_crc32() says the CPU has them;
3. no other extension anywhere;
4. a function holding an extension instruction is local, so the linker cannot pick it as the one
   copy of an inline function several units emit (the weak copies, std::vector's members and the
   like, are compiled outside the units' target regions: baseline code).

Usage: check_isa_aarch64.py [--objdump PATH] OBJECT...   (exit status 1 and a report on any violation)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

EXTENSIONS = [
    (re.compile(r"^bf(dot|mmla|mlal[bt]|cvtn2?|cvt)$"), "bf16"),
    (re.compile(r"^crc32c?[bhwx]$"), "crc32"),
    (re.compile(r"^(ld(add|clr|eor|set|smax|smin|umax|umin)|swp|casp?)(a|al|l)?[bh]?$"), "lse"),
    (re.compile(r"^[su]dot$"), "dotprod"),
    (re.compile(r"^(smmla|ummla|usmmla|usdot|sudot)$"), "i8mm"),
    (re.compile(r"^fmls?l2?$"), "fhm"),
    (re.compile(r"^sqrdml[as]h$"), "rdm"),
    (re.compile(r"^ldapu?r"), "rcpc"),
    (re.compile(r"^fjcvtzs$"), "jscvt"),
    (re.compile(r"^fc(mla|add)$"), "fcma"),
    (re.compile(r"^frint(32|64)[xz]$"), "frintts"),
]
SVE_OPERAND = re.compile(r"\b[zp]\d+(\.[bhsdq]|/[zm])")
HALF_OPERAND = re.compile(r"\bh\d+\b|\.\d*h\b")
UNIT_RE = re.compile(r"_(neon|neonbf16)\.(?:cpp|cc|cxx)\.o(?:bj)?$")
FUNC_RE = re.compile(r"^[0-9a-f]+ <(.+)>:$")
INSN_RE = re.compile(r"^\s+[0-9a-f]+:\s+(?:[0-9a-f]{8}\s+)?(\S+)\s*(.*)$")
SYM_RE = re.compile(r"^[0-9a-f]+ (.{7}) (\S+)\s+[0-9a-f]+\s+(?:\S+\s+)?(\S+)$")


def feature(mnemonic: str, operands: str) -> str | None:
    """The extension an instruction needs beyond ARMv8.0-A with NEON (None: baseline)."""
    if SVE_OPERAND.search(operands):
        return "sve"
    for pattern, name in EXTENSIONS:
        if pattern.match(mnemonic):
            return name
    # FP16 arithmetic: a floating-point instruction on half-precision registers or lanes (the
    # conversions to and from float32, FCVT*, are ARMv8.0; loads and stores are not f-prefixed)
    if mnemonic.startswith("f") and not mnemonic.startswith("fcvt") and HALF_OPERAND.search(operands):
        return "fp16"
    return None


def run(objdump: str, *args: str) -> str:
    return subprocess.run([objdump, *args], check=True, capture_output=True, text=True).stdout


def check(objdump: str, path: str) -> list[str]:
    name = path.rsplit("/", 1)[-1]
    m = UNIT_RE.search(name)
    unit = m.group(1) if m else None
    problems: list[str] = []
    binding: dict[str, str] = {}
    for line in run(objdump, "-t", "-w", path).splitlines():
        s = SYM_RE.match(line)
        if s and s.group(2) != "*UND*" and s.group(1)[6] == "F":
            binding[s.group(3)] = "local" if s.group(1)[0] == "l" else "exported"
    func, seen_bf16, code = None, False, False
    for line in run(objdump, "-d", "-w", "--no-show-raw-insn", path).splitlines():
        f = FUNC_RE.match(line)
        if f:
            func = f.group(1)
            continue
        i = INSN_RE.match(line)
        if not i or func is None:
            continue
        code = True
        ext = feature(i.group(1), i.group(2))
        if ext is None:
            continue
        where = f"{name}: {func}: `{i.group(1)} {i.group(2)}`"
        if ext == "bf16" and unit == "neonbf16":
            seen_bf16 = True
        elif ext == "crc32" and unit == "neon" and name.startswith("parity_block_neon") and (
                "crc32_hw" in func or "crc32_stream" in func):
            pass
        else:
            problems.append(f"{where}: needs {ext}, which this object's level does not have")
            continue
        if binding.get(func, "local") != "local":
            problems.append(f"{where}: {ext} in a function the linker can see")
    if unit == "neonbf16" and code and not seen_bf16:
        problems.append(f"{name}: no BF16 instruction: the unit's target region did not take effect")
    if not code:
        problems.append(f"{name}: no machine code read (LTO bytecode, or objdump output not understood)")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objdump", default="objdump")
    ap.add_argument("objects", nargs="+")
    args = ap.parse_args()
    problems = [p for path in args.objects for p in check(args.objdump, path)]
    for p in problems:
        print("check_isa_aarch64: " + p, file=sys.stderr)
    if not problems:
        print(f"check_isa_aarch64: {len(args.objects)} objects: no instruction above their level")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
