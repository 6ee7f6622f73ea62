#!/usr/bin/env bash
# One device call: build the kernel targets, run the CPU-reference and GPU tests, run the benchmark.
# Builds a standalone project (kernels + sparse ops + tests + bench only) so that work in progress
# elsewhere in lib/ cannot break the measurement. Usage (device machine, repo root):
#   scripts/device/kernels_bench.sh [bench args...]
set -o pipefail
source .devdeps/prelude.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SRC=$PWD
mkdir -p /tmp/kstand && cat > /tmp/kstand/CMakeLists.txt <<CM
cmake_minimum_required(VERSION 3.24)
project(kstand LANGUAGES C CXX CUDA)
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_BUILD_TYPE Release)
find_package(CUDAToolkit REQUIRED)
find_program(PY NAMES python3)
execute_process(COMMAND \${PY} -c "import torch;print(torch.utils.cmake_prefix_path)" OUTPUT_VARIABLE TP OUTPUT_STRIP_TRAILING_WHITESPACE)
list(APPEND CMAKE_PREFIX_PATH \${TP})
find_package(Torch REQUIRED)
find_package(GTest REQUIRED)
find_package(cxxopts REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(yaml-cpp REQUIRED)
file(GLOB KS $SRC/kernels/src/*.cpp $SRC/kernels/src/*.cu)
add_library(k STATIC \${KS})
target_include_directories(k PUBLIC $SRC/kernels/include)
target_compile_definitions(k PUBLIC RTPURBO_WITH_CUDA=1)
target_compile_options(k PRIVATE \$<\$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
target_link_libraries(k PUBLIC CUDA::cudart)
target_compile_definitions(k PRIVATE RTPURBO_HAVE_SM90A=1)
add_library(ops STATIC $SRC/lib/src/torch/ops/sparse_attention.cpp)
target_include_directories(ops PUBLIC $SRC/lib/include)
target_link_libraries(ops PUBLIC k \${TORCH_LIBRARIES})
foreach(t sparse_attention_ref_test sparse_attention_gpu_test)
  add_executable(\${t} $SRC/tests/kernels/\${t}.cpp)
  target_link_libraries(\${t} PRIVATE ops GTest::gtest GTest::gtest_main)
endforeach()
# The strict command line (tools/common/tool_args.h) and the atomic JSON write use two torch-free core sources.
add_executable(rtpurbo-bench $SRC/tools/rtpurbo-bench/main.cpp $SRC/lib/src/core/config_registry.cpp
               $SRC/lib/src/core/file_io.cpp)
target_include_directories(rtpurbo-bench PRIVATE $SRC/tools/common)
target_link_libraries(rtpurbo-bench PRIVATE ops cxxopts::cxxopts nlohmann_json::nlohmann_json yaml-cpp)
CM
cmake -S /tmp/kstand -B build-gpu-k -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a -DTORCH_CUDA_ARCH_LIST=9.0a > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
ninja -C build-gpu-k -j16 > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" -A5 "$OUT/build.log" | head -60; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
build-gpu-k/sparse_attention_ref_test 2>&1 | tail -3 | tee "$OUT/ref_test.log"
timeout -k 5 ${GPU_TEST_LIMIT:-150} build-gpu-k/sparse_attention_gpu_test 2>&1 | grep -E "err|Jaccard|OK|FAIL|Failure|Expected|actual|PASSED|SKIP|Which|rel|exception|description" | tee "$OUT/gpu_test.log"
# BENCH_AFTER=FILE: wait for FILE before timing (another job sharing the GPU signals its end with it).
if [ -n "${BENCH_AFTER:-}" ]; then while [ ! -e "$BENCH_AFTER" ]; do sleep 2; done; fi
timeout -k 5 ${BENCH_LIMIT:-300} build-gpu-k/rtpurbo-bench --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
