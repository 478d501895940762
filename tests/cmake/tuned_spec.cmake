# vashista_tuned_spec picks, through the database's best-record query (vashista-db-query),
# the record of the library's own target: a verified winner before a faster measurement,
# the longest context unless TOKENS names one. Run by ctest as `cmake -DSOURCE_DIR=...
# -DWORK_DIR=... -DVASHISTA_DB_QUERY_TOOL=... -P tuned_spec.cmake`; fails with a message
# naming the case that picked wrong.
cmake_minimum_required(VERSION 3.28)
include(${SOURCE_DIR}/cmake/VashistaKernels.cmake)
set(CMAKE_CURRENT_BINARY_DIR ${WORK_DIR})
file(REMOVE_RECURSE ${WORK_DIR})
set(shape [["generator":"decode","head_dim":128,"page_size":16,"group_size":4,"kv_type":"bfloat16","layout":"HND","top_pages":64,"top_tokens":128,"summary_type":"bfloat16","solver":"softmax","routing":"bound","group_routing":"per_head","tokens":8192]])
string(REPLACE "\"tokens\":8192" "\"tokens\":32768" shape32k "${shape}")
string(REPLACE "\"head_dim\":128" "\"head_dim\":96" shape96 "${shape}")
set(zen5 x86-64-linux-tune_znver5-avx-avx2-avx512-avx512_cannonlake-avx512_skylake-avx512_zen4-avx512_zen5-avxvnni-f16c-fma-sse41)
set(spr x86-64-linux-avx-avx2-avx512-avx512_cannonlake-avx512_sapphirerapids-avx512_skylake-avxvnni-f16c-fma-sse41)
set(icelake x86-64-linux-avx-avx2-avx512-avx512_cannonlake-avx512_skylake-f16c-fma-sse41)
file(WRITE ${WORK_DIR}/db.jsonl
    "{\"workload_key\":\"k\",\"status\":\"ok\",\"median_ms\":2.0,\"schedule\":{\"picked\":\"avx2\"},\"workload\":{\"target\":\"x86-64-linux-avx2\",${shape}}}\n"
    "{\"workload_key\":\"k\",\"status\":\"ok\",\"median_ms\":1.0,\"schedule\":{\"picked\":\"avx512\"},\"workload\":{\"target\":\"x86-64-linux-avx512\",${shape}}}\n"
    "{\"workload_key\":\"k\",\"status\":\"failed\",\"median_ms\":0.5,\"schedule\":{\"picked\":\"failed\"},\"workload\":{\"target\":\"x86-64-linux-avx2\",${shape}}}\n"
    # A verified winner outranks a faster single measurement of its target.
    "{\"workload_key\":\"k\",\"status\":\"ok\",\"kind\":\"final\",\"median_ms\":3.0,\"schedule\":{\"picked\":\"avx2-final\"},\"workload\":{\"target\":\"x86-64-linux-avx2-strict_float\",${shape}}}\n"
    # The longest context tuned wins, unless TOKENS names one.
    "{\"workload_key\":\"k\",\"status\":\"ok\",\"median_ms\":9.0,\"schedule\":{\"picked\":\"avx512-32k\"},\"workload\":{\"target\":\"x86-64-linux-avx512\",${shape32k}}}\n"
    # Another CPU of the same ISA level serves when the target itself was never tuned.
    "{\"workload_key\":\"k\",\"status\":\"ok\",\"median_ms\":1.0,\"schedule\":{\"picked\":\"zen5\"},\"workload\":{\"target\":\"${zen5}\",${shape96}}}\n"
    "{\"workload_key\":\"k\",\"status\":\"ok\",\"median_ms\":5.0,\"schedule\":{\"picked\":\"spr\"},\"workload\":{\"target\":\"${spr}\",${shape96}}}\n")

function(expect target want spec_in)
    vashista_tuned_spec(spec TARGET ${target} DATABASE ${WORK_DIR}/db.jsonl SPEC "${spec_in}" ${ARGN})
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

expect(x86-64-linux-avx2-strict_float avx2-final head_dim=128)  # the faster avx512 record is another target's
expect(x86-64-linux-avx512 avx512-32k head_dim=128)
expect(x86-64-linux-avx512 avx512 head_dim=128 TOKENS 8192)
expect(x86-64-linux-sse41 hand head_dim=128)
expect(x86-64-linux-avx512 hand head_dim=64)
expect(${spr} spr head_dim=96)         # its own record, though a Zen 5 one is faster
expect(${icelake} zen5 head_dim=96)    # never tuned: the fastest of its ISA level (AVX-512)
expect(x86-64-linux-avx-avx2-f16c-fma-sse41 hand head_dim=96)  # an AVX-512 record never serves AVX2
