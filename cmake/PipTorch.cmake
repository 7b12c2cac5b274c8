# pip builds (scikit-build-core sets SKBUILD and Python_EXECUTABLE): compile
# against the torch of the Python running pip, which must already be there
# (--no-build-isolation), rather than the first LibTorch CMake finds.
set(DYNAMOE_PIP_TORCH_VERSION "")
if(SKBUILD AND EXISTS "${Python_EXECUTABLE}")
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import torch, torch.utils; print(torch.__version__); print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _dynamoe_torch OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_VARIABLE _dynamoe_torch_err RESULT_VARIABLE _dynamoe_torch_rc)
  if(NOT _dynamoe_torch_rc EQUAL 0)
    message(FATAL_ERROR "dynamoe: the pip build needs torch importable by ${Python_EXECUTABLE}; "
                        "install torch first and pass --no-build-isolation. Python said: ${_dynamoe_torch_err}")
  endif()
  string(REPLACE "\n" ";" _dynamoe_torch "${_dynamoe_torch}")
  list(GET _dynamoe_torch 0 DYNAMOE_PIP_TORCH_VERSION)
  list(GET _dynamoe_torch 1 DYNAMOE_PIP_TORCH_CMAKE_DIR)
  # pip wheels ship LibTorch's CMake files inside the package; Debian's
  # python3-torch does not (its LibTorch is found on the system paths).
  if(EXISTS "${DYNAMOE_PIP_TORCH_CMAKE_DIR}/Torch/TorchConfig.cmake")
    list(PREPEND CMAKE_PREFIX_PATH "${DYNAMOE_PIP_TORCH_CMAKE_DIR}")
  else()
    set(DYNAMOE_PIP_TORCH_CMAKE_DIR "")
  endif()
  message(STATUS "dynamoe: pip build for torch ${DYNAMOE_PIP_TORCH_VERSION} of ${Python_EXECUTABLE}")
endif()

# Called after find_package(Torch): a build directory reused with another
# environment must not link the old LibTorch into this one's package.
function(dynamoe_check_pip_torch)
  if(NOT DYNAMOE_PIP_TORCH_VERSION)
    return()
  endif()
  if(DYNAMOE_PIP_TORCH_CMAKE_DIR)
    get_filename_component(_want "${DYNAMOE_PIP_TORCH_CMAKE_DIR}/Torch" REALPATH)
    get_filename_component(_have "${Torch_DIR}" REALPATH)
    if(NOT _want STREQUAL _have)
      message(FATAL_ERROR "dynamoe: Python's torch is at ${_want} but this build directory uses "
                          "LibTorch from ${_have}; use a fresh build-dir or pass -DTorch_DIR=${_want}")
    endif()
  else()
    string(REGEX MATCH "^[0-9]+\\.[0-9]+" _want "${DYNAMOE_PIP_TORCH_VERSION}")
    string(REGEX MATCH "^[0-9]+\\.[0-9]+" _have "${Torch_VERSION}")
    if(NOT _want STREQUAL _have)
      message(FATAL_ERROR "dynamoe: Python's torch is ${DYNAMOE_PIP_TORCH_VERSION} but CMake found "
                          "LibTorch ${Torch_VERSION} at ${Torch_DIR}; pass -DTorch_DIR=<that torch's share/cmake/Torch>")
    endif()
  endif()
endfunction()
