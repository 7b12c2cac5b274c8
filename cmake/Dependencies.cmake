# Third-party packages. Torch is only needed from runtime/ upwards; placement/,
# monitor/, kernels/ and common/ build without it.
find_package(absl CONFIG REQUIRED)
find_package(Threads REQUIRED)
# Metrics exposer (Debian prometheus-cpp-dev 1.0.1; no version asked). Optional:
# without it the layer runs and DYNAMOE_METRICS_PORT reports that it is missing.
find_package(prometheus-cpp CONFIG QUIET)
# A CUDA torch's config adds nvcc flags for every architecture it was built
# for (compute_50 included, which CUDA 13 refuses) to CMAKE_CUDA_FLAGS; ours
# are CMAKE_CUDA_ARCHITECTURES (80;90 unless set), so hand it the same list.
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  if(DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(_dynamoe_archs ${CMAKE_CUDA_ARCHITECTURES})
  else()
    set(_dynamoe_archs 80 90)
  endif()
  set(TORCH_CUDA_ARCH_LIST "")
  foreach(arch IN LISTS _dynamoe_archs)
    string(REGEX REPLACE "^([0-9]+)([0-9])$" "\\1.\\2" arch "${arch}")
    list(APPEND TORCH_CUDA_ARCH_LIST "${arch}")
  endforeach()
endif()
find_package(Torch REQUIRED)
# torch >= 2.10: the caller's process groups are reached through its group
# registry (runtime/process_group_communicator.h), C++ jobs build theirs with
# ProcessGroup(store, rank, size); 2.11 (the GPU machine) and 2.15 (CI) are
# the versions built.
if(Torch_VERSION VERSION_LESS 2.10)
  message(FATAL_ERROR "dynamoe needs torch >= 2.10, found ${Torch_VERSION} (${Torch_DIR}); "
                      "./scripts/venv.sh installs one into .venv, and ./scripts/build.sh builds against it")
endif()
# Torch's config adds its flags to CMAKE_CXX_FLAGS on some versions; keep the
# link line through the imported target only.
find_library(TORCH_PYTHON_LIBRARY torch_python PATHS ${TORCH_INSTALL_PREFIX}/lib NO_DEFAULT_PATH)
# pip torch's CUDA build loads NCCL, cuDNN, ... from the nvidia-* wheels beside
# it (its RPATH); the linker resolving libtorch_cuda's own dependencies must
# find those too, not an older NCCL under /usr/local/cuda.
file(GLOB DYNAMOE_TORCH_WHEEL_LIBS LIST_DIRECTORIES true "${TORCH_INSTALL_PREFIX}/../nvidia/*/lib")
foreach(dir IN LISTS DYNAMOE_TORCH_WHEEL_LIBS)
  add_link_options("LINKER:-rpath-link,${dir}")
endforeach()

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
