# What vashista_add_kernel_library needs in a project that builds kernel libraries outside
# this project's own build, typically for another architecture (with a cross toolchain):
# the generator executable of a host build, imported as vashista_generators, and the
# runtime and method headers compiled for the target. Used by `vashista build-lib` for
# cross targets and by tests/aarch64.
#   set(VASHISTA_GENERATOR <host build>/generators/vashista_generators)
#   include(<source>/cmake/VashistaStandalone.cmake)
#   vashista_add_kernel_library(my_kernels TARGET arm-64-linux DECODE ...)
include_guard(GLOBAL)
get_filename_component(_vashista_root "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
if (NOT VASHISTA_GENERATOR OR NOT EXISTS "${VASHISTA_GENERATOR}")
    message(FATAL_ERROR "VASHISTA_GENERATOR ('${VASHISTA_GENERATOR}') must name the generator executable of a host "
                        "build (build/generators/vashista_generators)")
endif ()
if (NOT TARGET Halide::Runtime)
    find_package(Halide 21 REQUIRED)
endif ()
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)

add_executable(vashista_generators IMPORTED)
set_target_properties(vashista_generators PROPERTIES IMPORTED_LOCATION "${VASHISTA_GENERATOR}")
add_library(vashista_warnings INTERFACE)
target_compile_options(vashista_warnings INTERFACE -Wall -Wextra)
add_library(vashista_method_types INTERFACE)
target_include_directories(vashista_method_types INTERFACE ${_vashista_root}/generators)
add_library(vashista_runtime_core OBJECT ${_vashista_root}/runtime/vashista.cpp ${_vashista_root}/runtime/kernel_call.cpp
                                        ${_vashista_root}/runtime/run_context.cpp)
target_include_directories(vashista_runtime_core PUBLIC ${_vashista_root}/runtime/include ${_vashista_root}/runtime)
target_link_libraries(vashista_runtime_core PUBLIC Halide::Runtime vashista_method_types PRIVATE vashista_warnings)
set_target_properties(vashista_runtime_core PROPERTIES POSITION_INDEPENDENT_CODE ON)
include(${_vashista_root}/cmake/VashistaKernels.cmake)
