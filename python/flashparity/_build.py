"""Build facts of the compiled core plus what this machine offers (``fp.build_info()``)."""

from __future__ import annotations

from typing import Any

from . import _core

KERNEL_IMPLS = ("flash2", "naive")


def kernel_source(impl: str) -> str:
    """The provenance pin of a built-in kernel: ``flashparity:<impl>@<40-hex source digest>``."""
    if impl not in KERNEL_IMPLS:
        raise ValueError(f"impl must be one of {', '.join(KERNEL_IMPLS)}, got {impl!r}")
    return f"flashparity:{impl}@{_core.KERNEL_DIGEST}"


def _discover_with_cuda_python() -> tuple[list[dict[str, Any]], str | None]:
    """Devices seen through cuda-python's driver bindings; ([], why) when that is not possible."""
    try:
        from cuda.bindings import driver  # type: ignore[import-not-found]
    except Exception:  # not installed, or an incompatible build: discovery is best effort
        return [], "cuda-python is not installed"
    try:
        (err,) = driver.cuInit(0)
        if int(err) != 0:
            return [], f"cuInit failed: {_driver_error(driver, err)}"
        err, count = driver.cuDeviceGetCount()
        if int(err) != 0:
            return [], f"cuDeviceGetCount failed: {_driver_error(driver, err)}"
        attr = driver.CUdevice_attribute
        devices = []
        for i in range(count):
            _, dev = driver.cuDeviceGet(i)
            _, raw_name = driver.cuDeviceGetName(256, dev)
            _, major = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
            _, minor = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
            _, sms = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev)
            _, total = driver.cuDeviceTotalMem(dev)
            name = bytes(raw_name).split(b"\0", 1)[0].decode(errors="replace")
            devices.append(
                {
                    "index": i,
                    "name": name,
                    "compute_capability": f"{major}.{minor}",
                    "total_memory": int(total),
                    "multiprocessors": int(sms),
                }
            )
        return devices, None if devices else "no CUDA device"
    except Exception as exc:  # no driver library on this machine: a normal state, not an error
        return [], f"no CUDA driver ({type(exc).__name__})"


def _driver_error(driver: Any, err: Any) -> str:
    try:
        _, name = driver.cuGetErrorName(err)
        return bytes(name).decode() if name else str(err)
    except Exception:
        return str(err)


def _attention_occupancy(index: int) -> list[dict[str, Any]] | str:
    """Resident blocks per SM of each CUDA flash2 specialisation on device `index`, or why not known."""
    try:
        return _core.cuda_attention_occupancy(index)
    except Exception as exc:  # a device the runtime lists but cannot use (e.g. out of memory, busy)
        return f"unavailable: {exc}"


def build_info(*, occupancy: bool = False) -> dict[str, Any]:
    """Version, CUDA build and devices, the CPU SIMD level in use, and the kernel sources.

    Keys: ``version``, ``cuda`` (CUDA kernels compiled in), ``cuda_available`` (compiled in and a
    device is visible), ``cuda_runtime``, ``cuda_driver``, ``cuda_architectures``, ``devices``
    (a list, empty when there is no driver or GPU; with ``occupancy=True`` and the CUDA build each
    entry has ``attention_occupancy``: resident blocks per SM of every flash2 kernel
    specialisation, with its threads and dynamic shared memory; this starts a CUDA context on
    each device, so only ``flashparity info`` asks for it), ``device_discovery`` (``"cudart"``,
    ``"cuda-python"`` or None), ``cuda_status`` (why no device is visible, or None), ``simd``
    (level used now), ``simd_detected``, ``simd_levels`` (this architecture's levels, lowest first:
    the values ``FLASHPARITY_SIMD`` takes; ``avx512amx`` is used only when asked for by name),
    ``cpu_features``, ``amx`` (``"available"``, or why AMX is not: not on this CPU, not enabled by the
    OS, refused by the kernel, not in this build), ``amx_emulation`` (``FLASHPARITY_AMX_EMULATE=1`` in
    effect: bfloat16 flash2 runs the AMX kernels with emulated tiles), ``kernel_digest`` and
    ``kernel_source`` (``{impl: "flashparity:<impl>@<digest>"}``), compilers and build type.
    """
    info = dict(_core.build_info())
    if info["cuda"]:
        info["device_discovery"] = "cudart"
        if occupancy:
            for dev in info["devices"]:
                dev["attention_occupancy"] = _attention_occupancy(dev["index"])
    else:
        devices, status = _discover_with_cuda_python()
        if devices:
            info["devices"] = devices
            info["device_discovery"] = "cuda-python"
            info["cuda_status"] = "GPU present but this build has no CUDA kernels (rebuild with FLASHPARITY_CUDA=ON)"
        else:
            info["device_discovery"] = None
    info["cuda_available"] = bool(info["cuda"] and info["devices"])
    info["kernel_source"] = {impl: kernel_source(impl) for impl in KERNEL_IMPLS}
    info["simd_levels"] = list(_core.simd_levels())
    order = [
        "version", "cuda", "cuda_available", "cuda_runtime", "cuda_driver", "cuda_architectures",
        "devices", "device_discovery", "cuda_status", "simd", "simd_detected", "simd_levels", "cpu_features", "amx", "amx_emulation",
        "kernel_digest", "kernel_source", "build_type", "cxx_compiler", "cuda_compiler",
    ]
    return {k: info[k] for k in order if k in info} | {k: v for k, v in info.items() if k not in order}
