# Third-party packages. Torch is only needed from runtime/ upwards; placement/,
# monitor/, kernels/ and common/ build without it.
find_package(absl CONFIG REQUIRED)
find_package(Threads REQUIRED)
# Metrics exposer (Debian prometheus-cpp-dev 1.0.1; no version asked). Optional:
# without it the layer runs and DYNAMOE_METRICS_PORT reports that it is missing.
find_package(prometheus-cpp CONFIG QUIET)
find_package(Torch REQUIRED)
# Torch's config adds its flags to CMAKE_CXX_FLAGS on some versions; keep the
# link line through the imported target only.
find_library(TORCH_PYTHON_LIBRARY torch_python PATHS ${TORCH_INSTALL_PREFIX}/lib NO_DEFAULT_PATH)

if(DYNAMOE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()

set(DYNAMOE_HAVE_CUDA OFF)
if(DYNAMOE_ENABLE_CUDA)
  # nvcc is often installed off PATH, under /usr/local/cuda.
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # 'native' fails on a machine without a GPU: name the architectures.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "80;90")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(DYNAMOE_HAVE_CUDA ON)
  else()
    message(STATUS "dynamoe: nvcc not found, CUDA kernels are not built")
  endif()
endif()
