#!/usr/bin/env bash
# Everything that needs a GPU, as one prepared run for a lent machine: build with CUDA, the GPU tests,
# compute-sanitizer (memcheck, racecheck) on the attention, serving, merge and parity GPU tests, and
# the GPU benchmark. Logs go to $OUT (or ./gpu-logs).
#
#     bash bench/gpu_session.sh            # full
#     QUICK=1 bash bench/gpu_session.sh    # benchmark --quick
#     PREBUILT=dir bash bench/gpu_session.sh
#     SKIP_BENCH=1 bash bench/gpu_session.sh   # tests and compute-sanitizer only
#
# The lent machines reach no package index: this builds with the Python that is there (which holds
# scikit-build-core, pybind11, CMake, ninja, NumPy, pytest, hypothesis, ml_dtypes, safetensors,
# cuda-bindings and PyTorch), without build isolation or dependency downloads, for the GPU's own
# architecture only. PREBUILT=dir skips the build: dir holds a `flashparity` package (the Python
# files and a _core module built elsewhere for that machine's Python), put first on PYTHONPATH.
# Each stage has a time limit (seconds: T_TESTS, T_SANITIZER per tool, T_BENCH) so that one stuck
# stage cannot eat the lease.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-logs}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$out/card.txt"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
py="${PYTHON:-python3}"

t0=$SECONDS
if [ -n "${PREBUILT:-}" ]; then
  export PYTHONPATH="$(cd "$PREBUILT" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
  echo "prebuilt: $PREBUILT" | tee "$out/build.txt"
else
  FLASHPARITY_CUDA=ON "$py" -m pip install -q --no-build-isolation --no-deps --no-index \
    --config-settings=cmake.define.FLASHPARITY_CUDA_ARCHITECTURES="${arch:-90}" . 2>&1 | tail -20 | tee "$out/build.txt"
  echo "build: $((SECONDS - t0)) s (sm_${arch:-90})" | tee -a "$out/build.txt"
fi
"$py" -m flashparity info 2>&1 | tee -a "$out/build.txt"
"$py" -m flashparity info --json > "$out/info.json" 2>&1  # attention_occupancy per specialisation

t0=$SECONDS
timeout "${T_TESTS:-300}" "$py" -m pytest -q -m gpu -p no:cacheprovider -rfE --durations=15 \
  -o faulthandler_timeout=60 tests 2>&1 | tee "$out/gpu-tests.txt" | tail -40
echo "gpu tests: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$out/gpu-tests.txt"

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck; do
    t0=$SECONDS
    timeout "${T_SANITIZER:-150}" "$sanitizer" --tool "$tool" --error-exitcode 99 "$py" -m pytest -q -p no:cacheprovider \
      "tests/test_attention_gpu.py::test_decode_split_kv" \
      "tests/test_attention_gpu.py::test_flash2_every_head_dim_specialisation" \
      "tests/test_attention_gpu.py::test_non_contiguous_device_views" \
      "tests/test_attention_gpu.py::test_masked_keys_contribute_nothing_on_the_gpu" \
      "tests/test_attention_gpu.py::test_inputs_whose_elements_are_not_aligned" \
      "tests/test_attention_gpu.py::test_empty_inputs_give_empty_outputs" \
      "tests/test_serving.py::test_paged_cache_matches_reference" \
      "tests/test_serving.py::test_varlen_matches_reference" \
      "tests/test_merge_states.py::test_gpu_matches_cpu" \
      "tests/test_attention_fp8.py::test_fp8_attention_matches_the_dequantized_reference" \
      "tests/test_attention_fp8.py::test_fp8_varlen_and_paged_cache" \
      tests/test_parity_gpu.py 2>&1 | tail -60 > "$out/sanitizer-$tool.txt"
    echo "compute-sanitizer $tool: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$out/sanitizer-$tool.txt"
  done
else
  echo "compute-sanitizer not found" | tee "$out/sanitizer-memcheck.txt"
fi

[ -n "${SKIP_BENCH:-}" ] && exit 0
"$py" -c "import torch" 2>/dev/null || echo "no PyTorch: the SDPA column stays empty"
(cd bench && timeout "${T_BENCH:-200}" "$py" bench_gpu.py ${QUICK:+--quick} --repeat 5 2>&1 | tee "$out/bench.txt" | tail -40)
cp BENCHMARKS.md "$out/" 2>/dev/null || true
