"""flashparity info (build facts) and flashparity kernels (the kernels kernel parity can judge)."""

from __future__ import annotations

import argparse

from .._build import build_info
from ._common import EXIT_OK, _dump



def _amx_line(info: dict) -> str:
    """AMX's state: where the CPU has it, the avx512amx level is an opt-in until it has run in tests."""
    amx = info["amx"]
    if amx != "available":
        return f"{amx}; bfloat16 attention runs on the AVX-512 BF16 dot products where the CPU has them"
    if info["simd"] == "avx512amx":
        return "available, in use (FLASHPARITY_SIMD=avx512amx)"
    return "available; opt in with FLASHPARITY_SIMD=avx512amx (not yet the default: untested on AMX hardware)"


def _cmd_kernels(args: argparse.Namespace) -> int:
    from ..kernels.adapters import ADAPTERS, CONVENTIONS, HUB_PATTERN, adapter_status

    rows = [adapter_status(name) for name in (*ADAPTERS, HUB_PATTERN)]
    if args.json:
        print(_dump({"adapters": rows, "conventions": list(CONVENTIONS)}))
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)
    lines = ["attention kernels flashparity can judge (kernel parity --impl NAME [--suite quick|default|full]):"]
    for r in rows:
        state = f"{r['package']} {r['version']}" if r["installed"] else f"not installed: {r['install']}"
        lines.append(f"  {r['name']:<{width}}  {state}" + (f"  ({r['note']})" if r.get("note") else ""))
    lines.append(f"  package.module:function with --convention {'|'.join(CONVENTIONS)}")
    print("\n".join(lines))
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    info = build_info(occupancy=True)
    if args.json:
        print(_dump(info))
        return EXIT_OK
    if info["cuda"]:
        cuda = f"CUDA {info['cuda_runtime']} compiled in ({info['cuda_compiler']}, architectures {info['cuda_architectures']}, static cudart)"
    else:
        cuda = "CPU only (built without CUDA)"
    if info["devices"]:
        devs = "; ".join(
            f"{d['index']}: {d['name']} (sm_{d['compute_capability'].replace('.', '')}, "
            f"{d['total_memory'] / 2**30:.1f} GiB, {d['multiprocessors']} SMs)"
            for d in info["devices"]
        )
    else:
        devs = f"none ({info['cuda_status']})" if info.get("cuda_status") else "none"
    lines = [
        f"flashparity {info['version']}",
        f"  build         {info['build_type']}, {info['cxx_compiler']}",
        f"  cuda          {cuda}",
        f"  cuda driver   {info['cuda_driver'] or 'none'}",
        f"  devices       {devs}",
        f"  cpu simd      {info['simd']} (detected {info['simd_detected']}: {' '.join(info['cpu_features']) or '-'})",
        f"  simd levels   {' '.join(info['simd_levels'])} (FLASHPARITY_SIMD caps the level)",
        f"  amx           {_amx_line(info)}",
        f"  kernel digest {info['kernel_digest']}",
    ]
    lines += [f"  kernel        {src}" for src in info["kernel_source"].values()]
    print("\n".join(lines))
    return EXIT_OK


def add_parser(sub) -> None:
    p_info = sub.add_parser("info", help="build info: version, CUDA, devices, SIMD level, kernel sources")
    p_info.add_argument("--json", action="store_true", help="print one JSON object")
    p_info.set_defaults(func=_cmd_info)

    p_kernels = sub.add_parser("kernels", help="the attention kernels kernel parity --impl can judge, and whether "
                               "each is installed")
    p_kernels.add_argument("--json", action="store_true", help="print one JSON object")
    p_kernels.set_defaults(func=_cmd_kernels)
