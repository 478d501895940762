# vashista_add_kernel_library(<name>
#     [TARGET <halide target>]             default: host; add -large_buffers for caches whose
#                                          summaries or pages pass 2^31 - 1 elements; several
#                                          targets, comma-separated and the widest first,
#                                          make one library for many CPUs (each call runs the
#                                          first target the CPU supports). A GPU feature
#                                          (host-cuda-cuda_capability_80, host-opencl) gives
#                                          the GPU schedules; such kernels run on the host
#                                          memory the runtime passes, copied to the device
#                                          and back on every call (runtime/kernel_call.h)
#     [DECODE <spec>...] [DENSE <spec>...] [SUMMARIZE <spec>...]
#     [SKETCH <spec>...]                   the token sketch vashista_append keeps for caches
#                                          made with sketch_bits (sketch routing)
#     [PREFIX <p>]                         a library that links into one program with
#                                          others: <name> is then one archive of one object
#                                          whose only global symbols are the C ABI renamed
#                                          <p><function> (p_vashista_decode); everything else
#                                          (runtime, dispatch table, kernels, Halide runtime)
#                                          is local to it. Users of the target get
#                                          VASHISTA_PREFIX=<p> defined, and vashista.h maps
#                                          the names (vashista_prefix.h)
#     [SHARED])                            also a shared library <name>_shared (file
#                                          lib<name>.so in build/lib) exporting the C ABI,
#                                          for engines and tools that load it at run time
#
# Compiles each variant ahead of time from the generators and writes a dispatch table,
# giving a static library <name> that the runtime (vashista_runtime_core) dispatches
# into by shape. A spec is "key=value:key=value", GeneratorParams of that generator;
# keys left out take the defaults below. `schedule_file=<json>` selects a tuned schedule;
# the variant is rebuilt when the path changes, not when the file's content does
# (vashista_tuned_spec names its files by their content for that reason).
include_guard(GLOBAL)

# Generator parameters and their defaults, per generator (inside the function, so a
# project that includes this file from anywhere sees them).
function(_vashista_defaults out kind)
    if (kind STREQUAL "decode")
        set(d head_dim=128 page_size=16 top_pages=64 top_tokens=128 group_size=4 kv_type=bfloat16 summary_type=
              layout=HND solver=softmax routing=bound group_routing=per_head sink_pages=0 local_pages=0
              solver_steps=6 solver_eta=0.2 solver_tau=1.0 sketch_bits=8 sketch_group=16
              super_pages=16 super_expand=8 schedule_file=)
    elseif (kind STREQUAL "dense")
        set(d head_dim=128 page_size=16 group_size=4 kv_type=bfloat16 layout=HND schedule_file=)
    elseif (kind STREQUAL "sketch")
        set(d head_dim=128 page_size=16 kv_type=bfloat16 layout=HND sketch_bits=8 sketch_group=16)
    else ()
        set(d head_dim=128 page_size=16 kv_type=bfloat16 summary_type= layout=HND)
    endif ()
    set(${out} "${d}" PARENT_SCOPE)
endfunction()

function(_vashista_parse_spec out_prefix kind spec)
    _vashista_defaults(defaults ${kind})
    set(keys "")
    foreach (kv IN LISTS defaults)
        string(REGEX MATCH "^([^=]+)=(.*)$" _ "${kv}")
        set(v_${CMAKE_MATCH_1} "${CMAKE_MATCH_2}")
        list(APPEND keys ${CMAKE_MATCH_1})
    endforeach ()
    string(REPLACE ":" ";" items "${spec}")
    foreach (kv IN LISTS items)
        if (NOT kv MATCHES "^([^=]+)=(.*)$")
            message(FATAL_ERROR "vashista ${kind} spec item '${kv}' is not key=value (spec '${spec}')")
        endif ()
        if (NOT CMAKE_MATCH_1 IN_LIST keys)
            message(FATAL_ERROR "vashista ${kind} spec key '${CMAKE_MATCH_1}' is not one of: ${keys}")
        endif ()
        set(v_${CMAKE_MATCH_1} "${CMAKE_MATCH_2}")
    endforeach ()
    if ("summary_type" IN_LIST keys AND v_summary_type STREQUAL "")
        set(v_summary_type "${v_kv_type}")
    endif ()
    set(params "")
    foreach (k IN LISTS keys)
        if (NOT (k STREQUAL "schedule_file" AND v_${k} STREQUAL ""))
            list(APPEND params "${k}=${v_${k}}")
        endif ()
        set(${out_prefix}_${k} "${v_${k}}" PARENT_SCOPE)
    endforeach ()
    set(${out_prefix}_params "${params}" PARENT_SCOPE)
endfunction()

function(_vashista_enum out kind value)
    set(map_dtype_float32 VASHISTA_DTYPE_F32)
    set(map_dtype_float16 VASHISTA_DTYPE_F16)
    set(map_dtype_bfloat16 VASHISTA_DTYPE_BF16)
    set(map_dtype_int8 VASHISTA_DTYPE_I8)
    set(map_layout_HND VASHISTA_LAYOUT_HND)
    set(map_layout_NHD VASHISTA_LAYOUT_NHD)
    set(map_solver_softmax VASHISTA_SOLVER_SOFTMAX)
    set(map_solver_eg VASHISTA_SOLVER_EG)
    set(map_solver_fw VASHISTA_SOLVER_FW)
    set(map_solver_sparsemax VASHISTA_SOLVER_SPARSEMAX)
    set(map_routing_mean VASHISTA_ROUTING_MEAN)
    set(map_routing_bound VASHISTA_ROUTING_BOUND)
    set(map_routing_sketch VASHISTA_ROUTING_SKETCH)
    set(map_routing_hier_bound VASHISTA_ROUTING_HIER_BOUND)
    set(map_group_per_head VASHISTA_GROUP_PER_HEAD)
    set(map_group_shared VASHISTA_GROUP_SHARED)
    if (NOT DEFINED map_${kind}_${value})
        message(FATAL_ERROR "vashista: '${value}' is not a valid ${kind}")
    endif ()
    set(${out} "${map_${kind}_${value}}" PARENT_SCOPE)
endfunction()

function(vashista_add_kernel_library NAME)
    cmake_parse_arguments(ARG "SHARED" "TARGET;PREFIX" "DECODE;DENSE;SUMMARIZE;SKETCH" ${ARGN})
    if (ARG_UNPARSED_ARGUMENTS)
        message(FATAL_ERROR "vashista_add_kernel_library(${NAME}): unknown arguments '${ARG_UNPARSED_ARGUMENTS}' "
                            "(keywords: TARGET, PREFIX, DECODE, DENSE, SUMMARIZE, SKETCH, SHARED)")
    endif ()
    if (DEFINED ARG_PREFIX AND NOT ARG_PREFIX MATCHES "^[A-Za-z_][A-Za-z0-9_]*$")
        message(FATAL_ERROR "vashista_add_kernel_library(${NAME}): PREFIX '${ARG_PREFIX}' is not the start of a C "
                            "identifier (letters, digits and _, not starting with a digit)")
    endif ()
    if (NOT ARG_TARGET)
        set(ARG_TARGET host)
    endif ()
    if (ARG_TARGET MATCHES "large_buffers")
        set(large_buffers true)
    else ()
        set(large_buffers false)
    endif ()
    # Comma-separated targets make a multi-target library: each variant is compiled for
    # every target, and a call runs the first one the CPU supports (list the widest first).
    string(REPLACE "," ";" targets "${ARG_TARGET}")
    set(rt ${NAME}_halide_runtime)
    add_halide_runtime(${rt} TARGETS ${targets})
    set(libs "")
    set(includes "")
    set(decode_rows "")
    set(dense_rows "")
    set(summarize_rows "")
    set(sketch_rows "")
    set(seen "")
    foreach (kind IN ITEMS decode dense summarize sketch)
        string(TOUPPER "${kind}" KIND)
        foreach (spec IN LISTS ARG_${KIND})
            _vashista_parse_spec(s ${kind} "${spec}")
            string(MD5 tag "${kind}:${s_params}")
            string(SUBSTRING "${tag}" 0 10 tag)
            set(fn "${NAME}_${kind}_${tag}")
            if (fn IN_LIST seen)
                continue()
            endif ()
            list(APPEND seen ${fn})
            # Decode kernels need IEEE semantics for their certificate (decode_target()).
            # Every kernel takes a user context: the runtime passes a run's workspace through
            # it to halide_malloc (vashista_run allocates nothing) and the engine's parallel-for.
            set(target "")
            foreach (t IN LISTS targets)
                if (kind STREQUAL "decode" AND NOT t MATCHES "strict_float")
                    string(APPEND t "-strict_float")
                endif ()
                # and f64 scores, which OpenCL has only with cl_doubles.
                if (kind STREQUAL "decode" AND t MATCHES "opencl" AND NOT t MATCHES "cl_doubles")
                    string(APPEND t "-cl_doubles")
                endif ()
                if (NOT t MATCHES "user_context")
                    string(APPEND t "-user_context")
                endif ()
                list(APPEND target "${t}")
            endforeach ()
            add_halide_library(${fn} FROM vashista_generators
                GENERATOR vashista_${kind}
                FUNCTION_NAME ${fn}
                USE_RUNTIME ${rt}
                TARGETS ${target}
                PARAMS ${s_params})
            list(APPEND libs ${fn})
            string(APPEND includes "#include \"${fn}.h\"\n")
            _vashista_enum(kv dtype ${s_kv_type})
            _vashista_enum(lay layout ${s_layout})
            string(REPLACE ";" " " readable "${s_params}")
            set(kernel "{\"${fn}\", ${fn}_argv, ${fn}_metadata}")
            if (kind STREQUAL "decode")
                _vashista_enum(sum dtype ${s_summary_type})
                _vashista_enum(sol solver ${s_solver})
                _vashista_enum(rout routing ${s_routing})
                _vashista_enum(grp group ${s_group_routing})
                string(APPEND decode_rows "        {\"${readable}\", ${s_head_dim}, ${s_page_size}, "
                       "${s_top_pages}, ${s_top_tokens}, ${s_group_size}, ${s_sink_pages}, ${s_local_pages}, "
                       "${kv}, ${sum}, ${lay}, ${sol}, ${rout}, ${grp}, "
                       "${s_solver_steps}, float(${s_solver_eta}), float(${s_solver_tau}), ${s_sketch_bits}, ${s_sketch_group}, "
                       "${s_super_pages}, ${s_super_expand}, ${kernel}},\n")
            elseif (kind STREQUAL "dense")
                string(APPEND dense_rows "        {\"${readable}\", "
                       "${s_head_dim}, ${s_page_size}, ${s_group_size}, ${kv}, ${lay}, ${kernel}},\n")
            elseif (kind STREQUAL "sketch")
                string(APPEND sketch_rows "        {\"${readable}\", ${s_head_dim}, ${s_page_size}, ${kv}, ${lay}, "
                       "${s_sketch_bits}, ${s_sketch_group}, ${kernel}},\n")
            else ()
                _vashista_enum(sum dtype ${s_summary_type})
                string(APPEND summarize_rows "        {\"${readable}\", "
                       "${s_head_dim}, ${s_page_size}, ${kv}, ${sum}, ${lay}, ${kernel}},\n")
            endif ()
        endforeach ()
    endforeach ()
    set(table "${CMAKE_CURRENT_BINARY_DIR}/${NAME}_dispatch.cpp")
    file(CONFIGURE OUTPUT "${table}" CONTENT
"// Generated by vashista_add_kernel_library(${NAME}); do not edit.
#include \"variants.h\"
@includes@
namespace vashista::runtime {
const std::vector<DecodeVariant> &decode_variants() {
    static const std::vector<DecodeVariant> v = {
@decode_rows@    };
    return v;
}
const std::vector<DenseVariant> &dense_variants() {
    static const std::vector<DenseVariant> v = {
@dense_rows@    };
    return v;
}
const std::vector<SummarizeVariant> &summarize_variants() {
    static const std::vector<SummarizeVariant> v = {
@summarize_rows@    };
    return v;
}
const std::vector<SketchVariant> &sketch_variants() {
    static const std::vector<SketchVariant> v = {
@sketch_rows@    };
    return v;
}
bool large_buffers() { return @large_buffers@; }
}  // namespace vashista::runtime
" @ONLY)
    # With a prefix, the dispatch table and what it links are the parts of <name>'s one object.
    if (DEFINED ARG_PREFIX)
        set(parts ${NAME}_parts)
    else ()
        set(parts ${NAME})
    endif ()
    add_library(${parts} STATIC "${table}")
    target_link_libraries(${parts} PUBLIC vashista_runtime_core ${libs} ${rt})
    if (TARGET vashista_warnings)
        target_link_libraries(${parts} PRIVATE vashista_warnings)
    endif ()
    target_include_directories(${parts} PUBLIC $<TARGET_PROPERTY:vashista_runtime_core,INTERFACE_INCLUDE_DIRECTORIES>)
    # What _vashista_single_archive merges: the kernels and the Halide runtime they share.
    set_target_properties(${parts} PROPERTIES POSITION_INDEPENDENT_CODE ON VASHISTA_KERNEL_TARGETS "${libs};${rt}")
    if (DEFINED ARG_PREFIX)
        set_target_properties(${parts} PROPERTIES EXCLUDE_FROM_ALL ON)
        _vashista_single_archive(${NAME} FROM ${parts} PREFIX ${ARG_PREFIX})
    endif ()
    if (ARG_SHARED)
        if (DEFINED ARG_PREFIX)
            # The same one object: the shared library exports only the prefixed C ABI.
            get_target_property(object ${NAME} VASHISTA_SINGLE_OBJECT)
            add_library(${NAME}_shared SHARED "${object}")
            set_target_properties(${NAME}_shared PROPERTIES LINKER_LANGUAGE CXX)
            target_link_libraries(${NAME}_shared PRIVATE Threads::Threads ${CMAKE_DL_LIBS} $<$<PLATFORM_ID:Linux>:m>)
            add_dependencies(${NAME}_shared ${NAME})  # the object's command runs once, for <name>
        else ()
            add_library(${NAME}_shared SHARED "${table}")
            target_link_libraries(${NAME}_shared PRIVATE vashista_runtime_core ${libs} ${rt})
            if (TARGET vashista_warnings)
                target_link_libraries(${NAME}_shared PRIVATE vashista_warnings)
            endif ()
        endif ()
        set_target_properties(${NAME}_shared PROPERTIES OUTPUT_NAME ${NAME}
                              LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib)
    endif ()
endfunction()

# The C ABI's functions: what vashista.h declares (a line that starts with a return type and
# names vashista_<name>( ), in the header's order.
function(_vashista_api_functions OUT)
    set(header "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/../runtime/include/vashista.h")
    file(STRINGS "${header}" lines REGEX "^[A-Za-z_][A-Za-z0-9_ ]*[ *]vashista_[a-z0-9_]+\\(")
    set(names "")
    foreach (line IN LISTS lines)
        if (line MATCHES "^typedef" OR NOT line MATCHES "[ *](vashista_[a-z0-9_]+)\\(")
            continue()
        endif ()
        list(APPEND names "${CMAKE_MATCH_1}")
    endforeach ()
    list(REMOVE_DUPLICATES names)
    if (NOT names)
        message(FATAL_ERROR "vashista: found no function declarations in ${header}")
    endif ()
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${header}")
    set(${OUT} "${names}" PARENT_SCOPE)
endfunction()

# _vashista_single_archive(<target> FROM <library> [PREFIX <p>] [OUTPUT_NAME <file name>])
#
# <target>: a static library of one relocatable object (ld -r) holding everything <library>
# (made by vashista_add_kernel_library) links: its dispatch table, the runtime objects, every
# kernel and the Halide runtime, so that one file serves programs built outside this build
# (the installed package) and needs only the system's libraries (C++ runtime, pthread, dl,
# m). With PREFIX, objcopy then renames every symbol the object defines to <p><symbol> and
# keeps global only the C ABI (vashista.h's functions as <p><function>): two such libraries
# link into one program without a clash, C++ inline functions' COMDAT groups included (the
# linker merges groups by name, so a group's name must differ between libraries too).
function(_vashista_single_archive TARGET)
    cmake_parse_arguments(ARG "" "FROM;PREFIX;OUTPUT_NAME" "" ${ARGN})
    get_target_property(components ${ARG_FROM} VASHISTA_KERNEL_TARGETS)
    if (NOT components)
        message(FATAL_ERROR "vashista: ${ARG_FROM} is not a library made by vashista_add_kernel_library")
    endif ()
    foreach (tool IN ITEMS LINKER NM OBJCOPY)
        if (NOT CMAKE_${tool})
            message(FATAL_ERROR "vashista: a single-archive kernel library (${TARGET}) needs ld -r, nm and objcopy; "
                                "CMake found no CMAKE_${tool} for this toolchain")
        endif ()
    endforeach ()
    set(header "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/../runtime/include/vashista.h")
    set(script "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/VashistaCombine.cmake")
    set(work "${CMAKE_CURRENT_BINARY_DIR}/${TARGET}_single")
    set(object "${work}/${TARGET}.o")
    # The library's own archive holds its dispatch table and the runtime's objects (an object
    # library linked to a static library is archived into it).
    set(inputs "$<TARGET_FILE:${ARG_FROM}>")
    foreach (c IN LISTS components)
        list(APPEND inputs "$<TARGET_FILE:${c}>")
    endforeach ()
    set(inputs_file "${work}/inputs-$<CONFIG>.txt")
    file(GENERATE OUTPUT "${inputs_file}" CONTENT "$<JOIN:${inputs},\n>\n")
    set(prefix_args "")
    if (DEFINED ARG_PREFIX)
        _vashista_api_functions(api)
        list(JOIN api "\n" api_lines)
        file(CONFIGURE OUTPUT "${work}/api.txt" CONTENT "${api_lines}\n")
        set(prefix_args "-DPREFIX=${ARG_PREFIX}" "-DAPI_FILE=${work}/api.txt")
        set(what "one object, C ABI prefixed ${ARG_PREFIX}")
    else ()
        set(what "one object")
    endif ()
    add_custom_command(
        OUTPUT "${object}"
        COMMAND "${CMAKE_COMMAND}" "-DLINKER=${CMAKE_LINKER}" "-DNM=${CMAKE_NM}" "-DOBJCOPY=${CMAKE_OBJCOPY}"
                "-DINPUTS_FILE=${inputs_file}" "-DOUTPUT=${object}" "-DLIBRARY=${TARGET}" ${prefix_args}
                -P "${script}"
        DEPENDS ${ARG_FROM} vashista_runtime_core ${inputs} "${inputs_file}" "${script}" "${header}"
        COMMENT "Combining kernel library ${ARG_FROM} into ${TARGET} (${what})"
        VERBATIM)
    # An empty C++ source makes the archive a C++ library to CMake, so that programs linking
    # it (C ones too) link with the C++ compiler and its runtime; exported, the package's
    # imported target says the same (IMPORTED_LINK_INTERFACE_LANGUAGES).
    file(CONFIGURE OUTPUT "${work}/cxx.cpp" CONTENT "// ${TARGET} holds C++ code (see _vashista_single_archive).\n")
    add_library(${TARGET} STATIC "${object}" "${work}/cxx.cpp")
    set_source_files_properties("${object}" PROPERTIES EXTERNAL_OBJECT ON GENERATED ON)
    set_target_properties(${TARGET} PROPERTIES VASHISTA_SINGLE_OBJECT "${object}")
    if (ARG_OUTPUT_NAME)
        set_target_properties(${TARGET} PROPERTIES OUTPUT_NAME ${ARG_OUTPUT_NAME} ARCHIVE_OUTPUT_DIRECTORY "${work}")
    endif ()
    # What the Halide runtime and the C++ runtime code call: threads, dlopen (Halide's
    # runtime looks up optional libraries), libm.
    find_package(Threads REQUIRED)
    target_link_libraries(${TARGET} INTERFACE Threads::Threads ${CMAKE_DL_LIBS} $<$<PLATFORM_ID:Linux>:m>)
    target_include_directories(${TARGET} INTERFACE
        $<BUILD_INTERFACE:$<TARGET_PROPERTY:vashista_runtime_core,INTERFACE_INCLUDE_DIRECTORIES>>)
    if (DEFINED ARG_PREFIX)
        target_compile_definitions(${TARGET} INTERFACE VASHISTA_PREFIX=${ARG_PREFIX})
    endif ()
endfunction()

# A Halide target string with "host" resolved to this machine's target (Halide's
# get_host_target, as the tuner resolves it).
function(_vashista_resolve_host OUT target_string)
    if (target_string STREQUAL "host" OR target_string MATCHES "^host-")
        get_property(host GLOBAL PROPERTY VASHISTA_HOST_TARGET)
        if (NOT host)
            get_target_property(tool Halide::get_host_target LOCATION)
            execute_process(COMMAND "${tool}" OUTPUT_VARIABLE host OUTPUT_STRIP_TRAILING_WHITESPACE
                            RESULT_VARIABLE rc)
            if (NOT rc EQUAL 0 OR host STREQUAL "")
                message(FATAL_ERROR "vashista: could not resolve the host target with ${tool}")
            endif ()
            set_property(GLOBAL PROPERTY VASHISTA_HOST_TARGET "${host}")
        endif ()
        string(REGEX REPLACE "^host" "${host}" target_string "${target_string}")
    endif ()
    set(${OUT} "${target_string}" PARENT_SCOPE)
endfunction()

# The best-record query of the tuner's database (autotune/database.cpp), as a small program
# built at configure time, so that the kernel library and `vashista db` pick records alike.
set(_vashista_autotune_dir "${CMAKE_CURRENT_LIST_DIR}/../autotune")
function(_vashista_db_query_tool OUT)
    get_property(tool GLOBAL PROPERTY VASHISTA_DB_QUERY_TOOL)
    if (NOT tool AND VASHISTA_DB_QUERY_TOOL)  # given, e.g. to a script run with cmake -P
        set(tool "${VASHISTA_DB_QUERY_TOOL}")
    endif ()
    if (NOT tool)
        set(tool "${CMAKE_BINARY_DIR}/vashista-db-query")
        if (NOT TARGET nlohmann_json::nlohmann_json)
            find_package(nlohmann_json 3 REQUIRED)
        endif ()
        try_compile(built SOURCES "${_vashista_autotune_dir}/db_query_main.cpp" "${_vashista_autotune_dir}/database.cpp"
                    LINK_LIBRARIES nlohmann_json::nlohmann_json CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON
                    OUTPUT_VARIABLE log COPY_FILE "${tool}")
        if (NOT built)
            message(FATAL_ERROR "vashista: building the database query tool failed:\n${log}")
        endif ()
        set_property(GLOBAL PROPERTY VASHISTA_DB_QUERY_TOOL "${tool}")
        set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_vashista_autotune_dir}/db_query_main.cpp"
                     "${_vashista_autotune_dir}/database.cpp" "${_vashista_autotune_dir}/database.h")
    endif ()
    set(${OUT} "${tool}" PARENT_SCOPE)
endfunction()

# vashista_tuned_spec(<out-var> DATABASE <db.jsonl> SPEC <decode or dense spec>
#                     [GENERATOR decode|dense] [TOKENS <T>] [TARGET <halide target>])
#
# What `vashista build-lib` does, inside CMake: asks the database's best-record query
# (vashista-db-query, database.h) for the record whose workload matches SPEC, tuned on
# TARGET (default host) or else on another CPU of TARGET's ISA level (never a higher or
# lower one), at TOKENS or else the longest context tuned, a verified winner before the
# fastest measurement, and says which it used and why; writes its
# schedule into the build folder and returns SPEC with schedule_file= added. A spec never
# tuned for the target comes back unchanged, with a message saying the hand schedule is used.
function(vashista_tuned_spec OUT)
    cmake_parse_arguments(ARG "" "DATABASE;SPEC;GENERATOR;TOKENS;TARGET" "" ${ARGN})
    if (NOT ARG_GENERATOR)
        set(ARG_GENERATOR decode)
    endif ()
    if (NOT ARG_TARGET)
        set(ARG_TARGET host)
    endif ()
    _vashista_resolve_host(want_target "${ARG_TARGET}")
    _vashista_parse_spec(s ${ARG_GENERATOR} "${ARG_SPEC}")
    set(query ${s_params})  # the variant's GeneratorParams; the query picks the fields it matches
    if (ARG_TOKENS)
        list(APPEND query --tokens ${ARG_TOKENS})
    endif ()
    if (EXISTS "${ARG_DATABASE}")
        set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${ARG_DATABASE}")
    endif ()
    _vashista_db_query_tool(tool)
    execute_process(COMMAND "${tool}" --db "${ARG_DATABASE}" --generator ${ARG_GENERATOR} --target "${want_target}"
                            ${query}
                    OUTPUT_VARIABLE found RESULT_VARIABLE rc ERROR_VARIABLE problems)
    if (NOT rc EQUAL 0)
        message(FATAL_ERROR "vashista: querying ${ARG_DATABASE} failed: ${problems}")
    elseif (problems)
        message(WARNING "vashista: ${problems}")
    endif ()
    string(JSON best_line ERROR_VARIABLE missing GET "${found}" schedule)
    if (missing)
        string(JSON n LENGTH "${found}" other_targets)
        if (n GREATER 0)
            set(others "")
            math(EXPR last "${n} - 1")
            foreach (i RANGE ${last})
                string(JSON t GET "${found}" other_targets ${i})
                list(APPEND others "${t}")
            endforeach ()
            list(JOIN others ", " others)
            message(STATUS "vashista: ${ARG_GENERATOR} '${ARG_SPEC}' was tuned in ${ARG_DATABASE} only for "
                           "${others}, not for ${want_target} nor its ISA level; using the hand schedule")
        else ()
            message(VERBOSE "vashista: ${ARG_GENERATOR} '${ARG_SPEC}' was never tuned in ${ARG_DATABASE}; "
                            "using the hand schedule")
        endif ()
        set(${OUT} "${ARG_SPEC}" PARENT_SCOPE)
        return()
    endif ()
    string(JSON best_tokens GET "${found}" tokens)
    string(JSON best_ms GET "${found}" median_ms)
    string(JSON how GET "${found}" how)
    set(schedule "${best_line}")
    string(MD5 tag "${ARG_GENERATOR}:${ARG_SPEC}:${schedule}")
    set(file "${CMAKE_CURRENT_BINARY_DIR}/tuned_schedules/${ARG_GENERATOR}_${tag}.json")
    file(WRITE "${file}" "${schedule}\n")
    message(STATUS "vashista: ${ARG_GENERATOR} '${ARG_SPEC}' uses the schedule tuned at T=${best_tokens} "
                   "(${best_ms} ms), ${how}")
    set(${OUT} "${ARG_SPEC}:schedule_file=${file}" PARENT_SCOPE)
endfunction()
