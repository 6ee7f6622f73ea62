# Finds every external dependency once, so that the subdirectories only link targets.
# libtorch: from PyPI's torch wheel (torch.utils.cmake_prefix_path) unless CMAKE_PREFIX_PATH already finds one.
if(NOT Torch_DIR AND NOT DEFINED ENV{Torch_DIR})
  # The python3 on PATH is the one pip installed torch into (FindPython3 may pick the system one).
  find_program(RTP_PYTHON3 NAMES python3 python)
  if(RTP_PYTHON3)
    execute_process(COMMAND ${RTP_PYTHON3} -c "import torch;print(torch.utils.cmake_prefix_path)"
                    OUTPUT_VARIABLE _rtp_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(_rtp_torch_prefix)
      list(APPEND CMAKE_PREFIX_PATH ${_rtp_torch_prefix})
    endif()
  endif()
endif()
# The CUDA architectures: Torch's CMake config turns TORCH_CUDA_ARCH_LIST into the -gencode flags of every CUDA
# source and sets CMAKE_CUDA_ARCHITECTURES to OFF, so this list is the one that counts. Without it Torch probes the
# local GPU (and fails where there is none). Default: Hopper with its arch-specific instructions (9.0a: the wgmma
# and TMA prefill kernel) and Ampere as the portable target, with PTX for later GPUs.
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "8.0+PTX;9.0a")
endif()
find_package(Torch REQUIRED)
# Whether the build has sm_90a code (the wgmma prefill kernel is empty otherwise and its launcher never picks it).
if("${TORCH_CUDA_ARCH_LIST};$ENV{TORCH_CUDA_ARCH_LIST}" MATCHES "9\\.0a")
  set(RTPURBO_HAVE_SM90A ON)
else()
  set(RTPURBO_HAVE_SM90A OFF)
endif()
# TorchConfig adds its flags to CMAKE_CXX_FLAGS globally; targets get them through the Torch target instead.
find_package(yaml-cpp REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(cxxopts REQUIRED)
set(HDF5_PREFER_PARALLEL OFF)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(Threads REQUIRED)
# ICU: NFC normalisation and Unicode general categories for the tokenizer's pre-tokenizer regex.
find_package(ICU REQUIRED COMPONENTS uc i18n)
set(RTP_CORE_EXTRA_LIBS ICU::uc ICU::i18n)
# Gloo headers (Debian's libgloo-dev): the PyPI libtorch ships ProcessGroupGloo.hpp but not the gloo headers it
# includes. With them, distributed training runs over c10d ProcessGroupGloo (CPU, and GPU tensors via copies).
find_path(RTP_GLOO_INCLUDE_DIR gloo/algorithm.h)
if(RTP_GLOO_INCLUDE_DIR)
  set(RTPURBO_WITH_GLOO ON)
  message(STATUS "rtpurbo: distributed training over c10d Gloo (gloo headers in ${RTP_GLOO_INCLUDE_DIR})")
else()
  set(RTPURBO_WITH_GLOO OFF)
  message(STATUS "rtpurbo: no gloo headers (apt-get install libgloo-dev): single-process training only")
endif()
