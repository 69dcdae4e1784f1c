#!/usr/bin/env bash
# Everything that needs a GPU, as one prepared run for a lent machine (about 10 minutes on an H100):
# build with CUDA, the GPU tests, compute-sanitizer (memcheck, racecheck) on the flash2 and parity
# GPU tests, and the GPU benchmark. Logs go to $OUT (or ./gpu-logs).
#
#     bash bench/gpu_session.sh            # full
#     QUICK=1 bash bench/gpu_session.sh    # benchmark --quick
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-logs}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/card.txt"

python3 -m venv /tmp/fpvenv && source /tmp/fpvenv/bin/activate
t0=$SECONDS
FLASHPARITY_CUDA=ON pip install -q '.[test]' 2>&1 | tail -5
echo "build: $((SECONDS - t0)) s" | tee "$out/build.txt"
python -m flashparity info | tee -a "$out/build.txt"

python -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu-tests.txt" | tail -15

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck; do
    "$sanitizer" --tool "$tool" --error-exitcode 99 python -m pytest -q -x -p no:cacheprovider \
      "tests/test_attention_gpu.py::test_decode_split_kv" \
      "tests/test_attention_gpu.py::test_flash2_every_head_dim_specialisation" \
      "tests/test_attention_gpu.py::test_non_contiguous_device_views" \
      tests/test_parity_gpu.py 2>&1 | tail -20 > "$out/sanitizer-$tool.txt"
    echo "compute-sanitizer $tool: exit ${PIPESTATUS[0]}" | tee -a "$out/sanitizer-$tool.txt"
  done
else
  echo "compute-sanitizer not found" | tee "$out/sanitizer-memcheck.txt"
fi

pip install -q torch 2>/dev/null || echo "no PyTorch: the SDPA column stays empty"
(cd bench && python bench_gpu.py ${QUICK:+--quick} --repeat 5 2>&1 | tee "../$out/bench.txt" | tail -40)
cp BENCHMARKS.md "$out/" 2>/dev/null || true
