# NVIDIA's nvml.h, for the NVML stand-in (client/nvml) and the CUDA backend's
# telemetry (server/backend/cuda): the target ferry_nvml_headers.
#
# The CUDA toolkit here lacks nvml.h, and its text may not be copied into the
# repository, so the build takes it from PyPI's nvidia-nvml-dev wheel, pinned
# to one version by its SHA-256: the header is a build input like cuda.h, and
# fetching it here (once per build folder, no root, no pip) gives every build
# the same declarations and export list, whether or not
# scripts/install-deps.sh ran. Offline: -DFERRY_NVML_HEADER=/path/to/nvml.h
# (the header of nvidia-nvml-dev 13.5.37, or of a CUDA 13 toolkit's
# cuda-nvml-dev package).
set(FERRY_NVML_HEADER "" CACHE FILEPATH "nvml.h to use instead of downloading nvidia-nvml-dev")
set(FERRY_NVML_WHEEL_VERSION 13.5.37)
set(FERRY_NVML_WHEEL_URL
  "https://files.pythonhosted.org/packages/45/fb/ad75b492a5ccdead49262e20a1c4ee64a8de059ebb22759461e33f15ac50/nvidia_nvml_dev-13.5.37-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl")
set(FERRY_NVML_WHEEL_SHA256 7394fcbefa9ba537e8238cbb1caa4cd2db6bbfbff208d217a8a884947113ae6d)

if(FERRY_NVML_HEADER)
  if(NOT EXISTS ${FERRY_NVML_HEADER})
    message(FATAL_ERROR "FERRY_NVML_HEADER names ${FERRY_NVML_HEADER}, which does not exist")
  endif()
  get_filename_component(FERRY_NVML_INCLUDE_DIR ${FERRY_NVML_HEADER} DIRECTORY)
else()
  set(wheel ${CMAKE_BINARY_DIR}/_deps/nvidia_nvml_dev-${FERRY_NVML_WHEEL_VERSION}.whl)
  set(FERRY_NVML_INCLUDE_DIR ${CMAKE_BINARY_DIR}/_deps/nvml-${FERRY_NVML_WHEEL_VERSION}/nvidia/cu13/include)
  if(NOT EXISTS ${FERRY_NVML_INCLUDE_DIR}/nvml.h)
    message(STATUS "Fetching nvml.h from nvidia-nvml-dev ${FERRY_NVML_WHEEL_VERSION} (PyPI)")
    file(DOWNLOAD ${FERRY_NVML_WHEEL_URL} ${wheel}
      EXPECTED_HASH SHA256=${FERRY_NVML_WHEEL_SHA256} STATUS download TLS_VERIFY ON)
    list(GET download 0 download_code)
    if(NOT download_code EQUAL 0)
      list(GET download 1 download_error)
      message(FATAL_ERROR "cannot fetch nvidia-nvml-dev ${FERRY_NVML_WHEEL_VERSION} for nvml.h "
        "(${download_error}); offline, pass -DFERRY_NVML_HEADER=/path/to/nvml.h")
    endif()
    file(ARCHIVE_EXTRACT INPUT ${wheel}
      DESTINATION ${CMAKE_BINARY_DIR}/_deps/nvml-${FERRY_NVML_WHEEL_VERSION}
      PATTERNS nvidia/cu13/include/nvml.h)
    file(REMOVE ${wheel})
  endif()
endif()
set(FERRY_NVML_HEADER_FILE ${FERRY_NVML_INCLUDE_DIR}/nvml.h)

add_library(ferry_nvml_headers INTERFACE)
target_include_directories(ferry_nvml_headers SYSTEM INTERFACE ${FERRY_NVML_INCLUDE_DIR})
