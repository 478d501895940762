# `vashista build-lib --target arm-64-linux`, then a C program linked against the archive
# with the AArch64 cross compiler and run under qemu-user-static (build_lib_smoke.c). Run
# by ctest: cmake -DVASHISTA=... -DOUT=... -DSOURCE_DIR=... -P build_lib.cmake. -O1: Debian's
# aarch64 gcc 12 crashes vectorizing the program's fmax reduction at -O2.
cmake_minimum_required(VERSION 3.28)
file(REMOVE_RECURSE "${OUT}")
function(run)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    message("${out}${err}")
    if (NOT rc EQUAL 0)
        message(FATAL_ERROR "failed (${rc}): ${ARGN}")
    endif ()
endfunction()
run("${VASHISTA}" build-lib --target arm-64-linux --tokens 8192 --out "${OUT}")
run(aarch64-linux-gnu-gcc -static -O1 "${SOURCE_DIR}/tests/aarch64/build_lib_smoke.c" -I "${OUT}" -L "${OUT}"
    -lvashista_tuned -lstdc++ -lpthread -ldl -lm -o "${OUT}/smoke")
run(qemu-aarch64-static "${OUT}/smoke")
