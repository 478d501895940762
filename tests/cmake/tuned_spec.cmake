# vashista_tuned_spec picks the fastest record of the library's own target: run by ctest as
# `cmake -DSOURCE_DIR=... -DWORK_DIR=... -P tuned_spec.cmake`; fails with a message naming
# the case that picked wrong.
cmake_minimum_required(VERSION 3.28)
include(${SOURCE_DIR}/cmake/VashistaKernels.cmake)
set(CMAKE_CURRENT_BINARY_DIR ${WORK_DIR})
file(REMOVE_RECURSE ${WORK_DIR})
set(shape [["generator":"decode","head_dim":128,"page_size":16,"group_size":4,"kv_type":"bfloat16","layout":"HND","top_pages":64,"top_tokens":128,"summary_type":"bfloat16","solver":"softmax","routing":"bound","group_routing":"per_head","tokens":8192]])
file(WRITE ${WORK_DIR}/db.jsonl
    "{\"status\":\"ok\",\"median_ms\":2.0,\"schedule\":{\"picked\":\"avx2\"},\"workload\":{\"target\":\"x86-64-linux-avx2\",${shape}}}\n"
    "{\"status\":\"ok\",\"median_ms\":1.0,\"schedule\":{\"picked\":\"avx512\"},\"workload\":{\"target\":\"x86-64-linux-avx512\",${shape}}}\n"
    "{\"status\":\"failed\",\"median_ms\":0.5,\"schedule\":{\"picked\":\"failed\"},\"workload\":{\"target\":\"x86-64-linux-avx2\",${shape}}}\n")

function(expect target want)
    vashista_tuned_spec(spec TARGET ${target} DATABASE ${WORK_DIR}/db.jsonl SPEC "head_dim=128")
    if (want STREQUAL "hand")
        if (spec MATCHES "schedule_file")
            message(FATAL_ERROR "${target}: expected the hand schedule, got ${spec}")
        endif ()
        return()
    endif ()
    if (NOT spec MATCHES "schedule_file=(.*)$")
        message(FATAL_ERROR "${target}: expected the ${want} record, got no schedule")
    endif ()
    file(READ "${CMAKE_MATCH_1}" schedule)
    string(JSON picked GET "${schedule}" picked)
    if (NOT picked STREQUAL want)
        message(FATAL_ERROR "${target}: expected the ${want} record, got ${picked}")
    endif ()
endfunction()

expect(x86-64-linux-avx2-strict_float avx2)  # the faster avx512 record is another target's
expect(x86-64-linux-avx512 avx512)
expect(x86-64-linux-sse41 hand)
