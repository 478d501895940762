# Script (cmake -P) behind _vashista_single_archive (VashistaKernels.cmake): merges a kernel
# library's objects and archives into one relocatable object and, with PREFIX, gives it its
# own names.
#   -DLINKER=ld -DNM=nm -DOBJCOPY=objcopy
#   -DINPUTS_FILE=<file: one object or archive per line>  -DOUTPUT=<object>  -DLIBRARY=<name>
#   [-DPREFIX=<p> -DAPI_FILE=<file: the C ABI's function names, one per line>]
# With PREFIX every symbol the object defines is renamed <p><symbol> (C++ inline functions and
# their COMDAT groups too: the linker keeps one group per name, so a group another library
# also has must not share its name), and only the C ABI, <p><function>, stays global.
cmake_minimum_required(VERSION 3.28)

foreach (v IN ITEMS LINKER NM OBJCOPY INPUTS_FILE OUTPUT LIBRARY)
    if (NOT ${v})
        message(FATAL_ERROR "VashistaCombine.cmake: -D${v}=... is required")
    endif ()
endforeach ()

function(run what)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if (NOT rc EQUAL 0)
        list(JOIN ARGN " " command)
        message(FATAL_ERROR "vashista: ${what} for kernel library ${LIBRARY} failed (${rc}):\n${command}\n${out}${err}")
    endif ()
    set(run_output "${out}" PARENT_SCOPE)
endfunction()

# Names from `nm -P` output (name type [value size]), one symbol per line; with a third
# argument, only symbols of the types that regex matches.
function(symbol_names out text)
    set(types "${ARGV2}")
    if (NOT types)
        set(types ".")
    endif ()
    string(REPLACE "\n" ";" lines "${text}")
    set(names "")
    foreach (line IN LISTS lines)
        if (line MATCHES "^([^ ]+) (${types}) ")
            list(APPEND names "${CMAKE_MATCH_1}")
        endif ()
    endforeach ()
    list(REMOVE_DUPLICATES names)
    set(${out} "${names}" PARENT_SCOPE)
endfunction()

file(STRINGS "${INPUTS_FILE}" inputs)
foreach (f IN LISTS inputs)
    if (NOT EXISTS "${f}")
        message(FATAL_ERROR "vashista: ${f}, a part of kernel library ${LIBRARY}, does not exist")
    endif ()
endforeach ()
get_filename_component(dir "${OUTPUT}" DIRECTORY)
file(MAKE_DIRECTORY "${dir}")
set(merged "${OUTPUT}.merged.o")
# --whole-archive: every member, whether or not another input refers to it yet.
run("the partial link (ld -r)" "${LINKER}" -r -o "${merged}" --whole-archive ${inputs} --no-whole-archive)

if (NOT DEFINED PREFIX)
    file(RENAME "${merged}" "${OUTPUT}")
    return()
endif ()

file(STRINGS "${API_FILE}" api)
run("nm" "${NM}" -P --defined-only "${merged}")
symbol_names(defined "${run_output}")
run("nm" "${NM}" -P -g --defined-only "${merged}")
symbol_names(global "${run_output}")
run("nm" "${NM}" -P -u "${merged}")
symbol_names(undefined "${run_output}")
set(missing "")
foreach (f IN LISTS api)
    if (NOT f IN_LIST global)
        list(APPEND missing "${f}")
    endif ()
endforeach ()
if (missing)
    list(JOIN missing ", " missing)
    message(FATAL_ERROR "vashista: vashista.h declares ${missing}, but no object of kernel library ${LIBRARY} "
                        "defines it (runtime/vashista.cpp and runtime/include/vashista.h disagree)")
endif ()
# Rename what is defined here; a name that is also referenced from outside (undefined here)
# keeps its name, or the reference would follow the rename.
set(map "")
foreach (s IN LISTS defined)
    if (NOT s IN_LIST undefined)
        string(APPEND map "${s} ${PREFIX}${s}\n")
    endif ()
endforeach ()
set(keep "")
foreach (f IN LISTS api)
    string(APPEND keep "${PREFIX}${f}\n")
endforeach ()
file(WRITE "${OUTPUT}.redefine.txt" "${map}")
file(WRITE "${OUTPUT}.keep.txt" "${keep}")
run("objcopy" "${OBJCOPY}" "--redefine-syms=${OUTPUT}.redefine.txt" "--keep-global-symbols=${OUTPUT}.keep.txt"
    "${merged}" "${OUTPUT}.tmp.o")

# What is left global must be the prefixed C ABI, and besides only GNU unique symbols (nm
# type u: static data of inline functions, as in the Halide runtime), which objcopy does not
# localize; they carry the prefix too, so they are the library's own.
run("nm" "${NM}" -P -g --defined-only "${OUTPUT}.tmp.o")
symbol_names(exported "${run_output}")
symbol_names(unique "${run_output}" "u")
string(STRIP "${keep}" keep)
string(REPLACE "\n" ";" keep "${keep}")
set(extra "")
foreach (s IN LISTS exported)
    if (NOT s IN_LIST keep AND NOT (s IN_LIST unique AND s MATCHES "^${PREFIX}"))
        list(APPEND extra "${s}")
    endif ()
endforeach ()
if (extra OR NOT exported)
    list(JOIN extra ", " extra)
    message(FATAL_ERROR "vashista: after objcopy, kernel library ${LIBRARY} still exports symbols other than its "
                        "prefixed C ABI: ${extra}")
endif ()
file(REMOVE "${merged}")
file(RENAME "${OUTPUT}.tmp.o" "${OUTPUT}")
