# Install rules, in two components:
#   dev    (a plain `cmake --install`): the static libraries, the headers and
#          the CMake package, so C++ projects do find_package(dynamoe CONFIG)
#          and link dynamoe::dynamoe;
#   python (only when asked for, as pip's scikit-build-core does):
#          libdynamoe_ops.so inside the dynamoe package, dynamoe-replay as a script.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(DYNAMOE_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/dynamoe)
# dynamoe and everything it links (static libraries carry their dependencies
# into the consumer's link line, so each must be exported).
set(_dynamoe_exported dynamoe dynamoe_scheduler dynamoe_comm dynamoe_config dynamoe_placement
                      dynamoe_monitor dynamoe_kernels dynamoe_common)
if(TARGET dynamoe_kernels_cuda)
  list(APPEND _dynamoe_exported dynamoe_kernels_cuda)
endif()
# Not linked by dynamoe: the replay engine for C++ callers (dynamoe::dynamoe_replay).
list(APPEND _dynamoe_exported dynamoe_replay)

# Headers are included by their path from the repository root
# ("bindings/moe_layer.h"): the source root in the build, include/ when installed.
set_property(TARGET dynamoe_common PROPERTY INTERFACE_INCLUDE_DIRECTORIES
             "$<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>" "$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>")
# The headers use C++17; say so to consumers that do not set a standard.
set_property(TARGET dynamoe APPEND PROPERTY INTERFACE_COMPILE_FEATURES cxx_std_17)
# A pip torch's CUDA build loads NCCL, cuDNN, ... from the nvidia-* wheels
# beside it (its RUNPATH); a consumer's linker must look there as well, not
# at an older NCCL under /usr/local/cuda.
file(GLOB _dynamoe_wheel_libs LIST_DIRECTORIES true "${TORCH_INSTALL_PREFIX}/../nvidia/*/lib")
foreach(_dir IN LISTS _dynamoe_wheel_libs)
  set_property(TARGET dynamoe APPEND PROPERTY INTERFACE_LINK_OPTIONS "$<INSTALL_INTERFACE:LINKER:-rpath-link,${_dir}>")
endforeach()

install(TARGETS ${_dynamoe_exported} EXPORT dynamoeTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
install(DIRECTORY common placement replay monitor kernels config runtime scheduler bindings
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev
        FILES_MATCHING PATTERN "*.h" PATTERN "*.cuh" PATTERN "*.def")
install(EXPORT dynamoeTargets NAMESPACE dynamoe:: DESTINATION ${DYNAMOE_INSTALL_CMAKEDIR} COMPONENT dev)

# Values the package config needs to find the same dependencies again.
set(DYNAMOE_CONFIG_TORCH_DIR "${Torch_DIR}")
set(DYNAMOE_CONFIG_CAFFE2_DIR "${Caffe2_DIR}")
set(DYNAMOE_CONFIG_PROMETHEUS OFF)
if(TARGET prometheus-cpp::core)
  set(DYNAMOE_CONFIG_PROMETHEUS ON)
endif()
set(DYNAMOE_CONFIG_CUDA ${DYNAMOE_HAVE_CUDA})
configure_package_config_file(cmake/dynamoeConfig.cmake.in ${PROJECT_BINARY_DIR}/dynamoeConfig.cmake
                              INSTALL_DESTINATION ${DYNAMOE_INSTALL_CMAKEDIR})
# 0.x: a new minor version may change the C++ API.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/dynamoeConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/dynamoeConfig.cmake ${PROJECT_BINARY_DIR}/dynamoeConfigVersion.cmake
        DESTINATION ${DYNAMOE_INSTALL_CMAKEDIR} COMPONENT dev)
install(TARGETS dynamoe-replay RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT dev)

# The Python package. Installed paths are relative to the wheel's platlib
# (scikit-build-core's install prefix). The installed library keeps the
# directories of what it links (a pip torch's lib/, CUDA) as its RUNPATH.
set_target_properties(dynamoe_ops PROPERTIES INSTALL_RPATH_USE_LINK_PATH TRUE)
install(TARGETS dynamoe_ops LIBRARY DESTINATION dynamoe COMPONENT python EXCLUDE_FROM_ALL)
if(SKBUILD_SCRIPTS_DIR)
  install(TARGETS dynamoe-replay RUNTIME DESTINATION ${SKBUILD_SCRIPTS_DIR} COMPONENT python EXCLUDE_FROM_ALL)
endif()
