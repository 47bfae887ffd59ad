#!/usr/bin/env bash
# GPU checks for kvflow's `cuda` build, in two halves:
#
#   scripts/gpu-check.sh build   # here, with Go, gcc and the CUDA kit (nvcc, cuda.h, libcuda):
#                                # compiles the PTX and the test binaries into build/gpu/
#   scripts/gpu-check.sh run     # on a machine with an NVIDIA GPU (no Go needed): runs the
#                                # GPU tests and benchmarks from build/gpu/, prints a table last
#
# With no argument it builds when Go is present, then runs when a GPU is.
# The CUDA kit on Debian 12: add `contrib non-free` to the Components of
# /etc/apt/sources.list.d/debian.sources, then
#   apt-get install --no-install-recommends nvidia-cuda-toolkit nvidia-cuda-dev
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/gpu
export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g} -Wno-deprecated-declarations"

build() {
  mkdir -p "$out"
  (cd gpu && go generate -tags cuda ./)            # nvcc: kernels/decode.cu -> decode.ptx
  # Stripped: the device machine takes at most 64 MiB of tree and binaries.
  go test -tags cuda -ldflags "-s -w" -c -o "$out/gpu.test" ./gpu
  go test -tags cuda -ldflags "-s -w" -c -o "$out/devicetest.test" ./storage/devicetest
  go test -tags cuda -ldflags "-s -w" -c -o "$out/stages.test" ./stages
  echo "built: $(ls "$out" | tr '\n' ' ')"
}

run() {
  local log="$out/run.log"
  : > "$log"
  echo "== discovery (NVML)" | tee -a "$log"
  (cd gpu && "../$out/gpu.test" -test.v -test.run 'TestDiscoverHere' 2>&1) | tee -a "$log" | grep -E 'discover_test|GPU' || true
  echo "== gpu tests" | tee -a "$log"
  (cd gpu && "../$out/gpu.test" -test.v -test.count=1 -test.run . 2>&1) | tee -a "$log" | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|GPU vs|errors vs' || true
  echo "== device tier tests" | tee -a "$log"
  (cd storage/devicetest && "../../$out/devicetest.test" -test.v -test.count=1 -test.run . 2>&1) | tee -a "$log" | grep -E '^(--- |PASS|FAIL)' || true
  echo "== pipeline with a gpu tier" | tee -a "$log"
  (cd stages && "../$out/stages.test" -test.v -test.count=1 -test.run 'TestRunGPUTier|TestRunCachedOutputsEqualRecompute' 2>&1) | tee -a "$log" | grep -E '^(--- |PASS|FAIL)|gpu tier|_test.go' || true
  echo "== benchmarks" | tee -a "$log"
  (cd gpu && "../$out/gpu.test" -test.run '^$' -test.bench . -test.benchtime 5x 2>&1) | tee -a "$log" | grep -E '^Benchmark' || true
  (cd storage/devicetest && "../../$out/devicetest.test" -test.run '^$' -test.bench . -test.benchtime 3x 2>&1) | tee -a "$log" | grep -E '^Benchmark' || true
  echo
  echo "== summary"
  local fails
  fails=$(grep -c -- '^--- FAIL' "$log" || true)
  printf '%-44s %s\n' "tests failed" "$fails"
  grep -E '^Benchmark(DecodeGPU|HostToDevice|Promote)' "$log" | sed -E 's/-[0-9]+ +/ /' | awk '{
    line=$1; for (i=2;i<=NF;i++) if ($(i) ~ /(bw_ratio|kv_GB\/s|copy_GB\/s|ratio|promote_GB\/s|pinned_GB\/s|MB\/s|us\/decode)$/) line=line"  "$(i-1)" "$(i); print line }'
  [ "$fails" = 0 ]
}

case "${1:-auto}" in
  build) build ;;
  run) run ;;
  auto)
    if command -v go >/dev/null 2>&1; then build; fi
    if command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; then run; fi ;;
  *) echo "usage: $0 [build|run]" >&2; exit 2 ;;
esac
