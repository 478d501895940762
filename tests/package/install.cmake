# The package as an engine's build meets it: `cmake --install` of this build into an empty
# prefix, then the C project consumer/ configured against that prefix
# (find_package(VashistaKernels)), built and run. Run by ctest:
#   cmake -DBUILD_DIR=<build> -DSOURCE_DIR=<source> -DWORK=<scratch> -DC_COMPILER=<cc> -DCXX_COMPILER=<c++>
#         -P install.cmake
cmake_minimum_required(VERSION 3.28)
foreach (v IN ITEMS BUILD_DIR SOURCE_DIR WORK C_COMPILER CXX_COMPILER)
    if (NOT ${v})
        message(FATAL_ERROR "install.cmake: -D${v}=... is required")
    endif ()
endforeach ()
file(REMOVE_RECURSE "${WORK}")
function(run what)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    message("${out}${err}")
    if (NOT rc EQUAL 0)
        list(JOIN ARGN " " command)
        message(FATAL_ERROR "${what} failed (${rc}): ${command}")
    endif ()
endfunction()
run("installing the build" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${WORK}/prefix")
foreach (f IN ITEMS include/vashista.h include/vashista_prefix.h)
    if (NOT EXISTS "${WORK}/prefix/${f}")
        message(FATAL_ERROR "the install has no ${f}")
    endif ()
endforeach ()
foreach (cxx IN ITEMS OFF ON)
    set(build "${WORK}/build-cxx-${cxx}")
    run("configuring the consumer (WITH_CXX=${cxx})" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}/tests/package/consumer"
        -B "${build}" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_C_COMPILER=${C_COMPILER}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
        "-DCMAKE_PREFIX_PATH=${WORK}/prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF "-DWITH_CXX=${cxx}")
    # The package the consumer found must be this install, not a copy installed elsewhere.
    file(STRINGS "${build}/CMakeCache.txt" found REGEX "^VashistaKernels_DIR:")
    if (NOT found MATCHES "=${WORK}/prefix/")
        message(FATAL_ERROR "the consumer found another VashistaKernels package: ${found}")
    endif ()
    run("building the consumer (WITH_CXX=${cxx})" "${CMAKE_COMMAND}" --build "${build}" --verbose)
    run("running the consumer (WITH_CXX=${cxx})" "${build}/consumer")
endforeach ()
