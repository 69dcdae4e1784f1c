"""fp.build_info(), the kernel-source pin, and `flashparity info`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from emulation import python_command

import flashparity as fp
from flashparity import _build, _core

HEX40 = re.compile(r"[0-9a-f]{40}")


def test_build_info_keys_and_types():
    info = fp.build_info()
    assert info["version"] == fp.__version__
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_available"], bool)
    assert isinstance(info["devices"], list)
    assert info["simd"] in _core.simd_levels() and info["simd_detected"] in _core.simd_levels()
    assert _core.simd_levels() in (["scalar", "avx2", "avx512", "avx512icl", "avx512amx"], ["neon", "neonbf16"],
                                   ["scalar"])
    assert isinstance(info["amx"], str) and info["amx"]
    assert info["simd_levels"] == _core.simd_levels()
    assert HEX40.fullmatch(info["kernel_digest"])
    assert info["kernel_source"] == {
        "flash2": f"flashparity:flash2@{info['kernel_digest']}",
        "naive": f"flashparity:naive@{info['kernel_digest']}",
    }
    json.dumps(info)  # JSON-ready


def test_cuda_facts_are_consistent():
    info = fp.build_info()
    assert info["cuda"] is _core.CUDA_COMPILED
    if info["cuda"]:
        assert re.fullmatch(r"\d+\.\d+", info["cuda_runtime"])
        assert info["cuda_architectures"]
        assert info["device_discovery"] == "cudart"
    else:
        assert info["cuda_runtime"] is None
    if not info["devices"]:
        assert info["cuda_available"] is False
        assert info["cuda_status"]  # says why no device is visible
    for dev in info["devices"]:
        assert set(dev) >= {"index", "name", "compute_capability", "total_memory", "multiprocessors"}


@pytest.mark.skipif(not os.environ.get("FLASHPARITY_EXPECT_SIMD"), reason="set by CI's emulated-CPU stages")
def test_detected_level_is_the_emulated_cpus():
    # .ci/run runs the suite under qemu as a Haswell (avx2) and as a Nehalem (scalar): the
    # dispatcher must see that CPU, else the stage tests the host's level once more
    assert fp.build_info()["simd_detected"] == os.environ["FLASHPARITY_EXPECT_SIMD"]


def test_simd_cap_from_environment(monkeypatch):
    detected = fp.build_info()["simd_detected"]
    levels = _core.simd_levels()
    monkeypatch.setenv("FLASHPARITY_SIMD", levels[0])
    assert _core.simd_level() == levels[0]
    monkeypatch.setenv("FLASHPARITY_SIMD", levels[-1])
    assert _core.simd_level() == detected  # a cap never raises the level above the CPU's
    monkeypatch.setenv("FLASHPARITY_SIMD", "sse9")
    names = levels[0] if len(levels) == 1 else ", ".join(levels[:-1]) + " or " + levels[-1]
    with pytest.raises(ValueError, match=f"^FLASHPARITY_SIMD must be {names}, got 'sse9'$"):
        _core.simd_level()


def test_kernel_source_rejects_unknown_impl():
    with pytest.raises(ValueError, match="impl must be one of flash2, naive, got 'tiled'"):
        _build.kernel_source("tiled")


class _FakeDriver:
    """Stands in for cuda.bindings.driver: two devices."""

    class CUdevice_attribute:
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = "major"
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = "minor"
        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = "sms"

    @staticmethod
    def cuInit(flags):
        return (0,)

    @staticmethod
    def cuDeviceGetCount():
        return 0, 2

    @staticmethod
    def cuDeviceGet(i):
        return 0, i

    @staticmethod
    def cuDeviceGetName(n, dev):
        return 0, (b"NVIDIA H100 80GB HBM3" if dev == 0 else b"NVIDIA A100").ljust(n, b"\0")

    @staticmethod
    def cuDeviceGetAttribute(attr, dev):
        return 0, {"major": 9 if dev == 0 else 8, "minor": 0, "sms": 132 if dev == 0 else 108}[attr]

    @staticmethod
    def cuDeviceTotalMem(dev):
        return 0, 80 * 2**30


def _install_fake_cuda(monkeypatch, driver):
    import types

    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.driver = driver
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)


def test_cuda_python_discovery_parses_devices(monkeypatch):
    _install_fake_cuda(monkeypatch, _FakeDriver)
    devices, status = _build._discover_with_cuda_python()
    assert status is None
    assert devices == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
         "total_memory": 80 * 2**30, "multiprocessors": 132},
        {"index": 1, "name": "NVIDIA A100", "compute_capability": "8.0",
         "total_memory": 80 * 2**30, "multiprocessors": 108},
    ]


def test_cuda_python_discovery_without_driver(monkeypatch):
    class NoDriver(_FakeDriver):
        @staticmethod
        def cuInit(flags):
            raise RuntimeError('"cuda" is an NVIDIA driver library and can only be found via system search')

    _install_fake_cuda(monkeypatch, NoDriver)
    devices, status = _build._discover_with_cuda_python()
    assert devices == [] and status.startswith("no CUDA driver")


def test_cuda_python_discovery_reports_init_error(monkeypatch):
    class InitFails(_FakeDriver):
        @staticmethod
        def cuInit(flags):
            return (100,)

        @staticmethod
        def cuGetErrorName(err):
            return 0, b"CUDA_ERROR_NO_DEVICE"

    _install_fake_cuda(monkeypatch, InitFails)
    assert _build._discover_with_cuda_python() == ([], "cuInit failed: CUDA_ERROR_NO_DEVICE")


def test_cpu_build_reports_cuda_python_devices(monkeypatch):
    if _core.CUDA_COMPILED:
        pytest.skip("this build has CUDA: discovery goes through cudart")
    _install_fake_cuda(monkeypatch, _FakeDriver)
    info = fp.build_info()
    assert info["device_discovery"] == "cuda-python"
    assert [d["name"] for d in info["devices"]] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100"]
    assert info["cuda_available"] is False  # a GPU is there, but this build cannot run on it
    assert "FLASHPARITY_CUDA=ON" in info["cuda_status"]


def test_import_in_fresh_process_has_no_side_effects():
    code = "import flashparity as fp, json; print(json.dumps(fp.build_info()))"
    res = subprocess.run([*python_command(), "-c", code], capture_output=True, text=True, check=True)
    assert res.stderr == ""
    assert json.loads(res.stdout)["version"] == fp.__version__


def test_cudart_is_linked_statically():
    # (readelf reads the module's dynamic section whatever its architecture; ldd would run it)
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf is not available")
    res = subprocess.run([readelf, "-d", _core.__file__], capture_output=True, text=True, check=True)
    assert "NEEDED" in res.stdout
    assert "libcudart" not in res.stdout  # a CPU machine without the CUDA toolkit can import _core


def _cuda_tool(name: str) -> str | None:
    """A CUDA binary tool on PATH or from its PyPI wheel (nvidia/cu*/bin in this environment)."""
    found = shutil.which(name)
    if found:
        return found
    import glob
    import sysconfig

    hits = sorted(glob.glob(f"{sysconfig.get_paths()['purelib']}/nvidia/cu*/bin/{name}"))
    return hits[-1] if hits else None


def test_flash2_machine_code_uses_tensor_cores():
    # Every float16/bfloat16 flash2 specialisation, on every architecture compiled, issues
    # HMMA.16816 (mma.sync m16n8k16), LDSM (ldmatrix, .MT88 = transposed for V) and LDGSTS (cp.async).
    if not _core.CUDA_COMPILED:
        pytest.skip("CPU-only build")
    cuobjdump, nvdisasm = _cuda_tool("cuobjdump"), _cuda_tool("nvdisasm")
    if cuobjdump is None or nvdisasm is None:
        pytest.skip("cuobjdump/nvdisasm not installed (PyPI nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm)")
    env = {**os.environ, "PATH": f"{Path(nvdisasm).parent}:{os.environ.get('PATH', '')}"}
    sass = subprocess.run([cuobjdump, "--dump-sass", _core.__file__], capture_output=True, text=True, check=True,
                          env=env).stdout
    kernels: dict[tuple[str, str], str] = {}
    arch, name = "", None
    for line in sass.splitlines():
        if m := re.match(r"\s*arch = (sm_\d+)", line):
            arch, name = m.group(1), None
        elif m := re.match(r"\s*Function : (\S+)", line):
            name = m.group(1) if "Flash2MmaKernel" in m.group(1) else None
            if name:
                kernels[(arch, name)] = ""
        elif name:
            kernels[(arch, name)] += line + "\n"
    archs = sorted({a for a, _ in kernels})
    assert archs == sorted(f"sm_{a}" for a in fp.build_info()["cuda_architectures"].split(";"))
    for a in archs:
        names = [n for aa, n in kernels if aa == a]
        assert len(names) == 16, names  # 8 head dims x {float16, bfloat16}
    for (a, n), body in kernels.items():
        bf16 = "ILb1E" in n
        assert re.search(r"HMMA\.16816\.F32\.BF16" if bf16 else r"HMMA\.16816\.F32 ", body), (a, n)
        assert "LDSM.16.M88.4" in body and "LDSM.16.MT88.4" in body and "LDGSTS" in body, (a, n)
