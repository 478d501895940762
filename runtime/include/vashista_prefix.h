/* Maps the C ABI's names to <VASHISTA_PREFIX><name> when VASHISTA_PREFIX is defined (a kernel
 * library built with vashista_add_kernel_library(... PREFIX <p>), whose CMake target defines
 * VASHISTA_PREFIX=<p> for the code that links it). Included by vashista.h.
 *
 * Two prefixed libraries in one program: include vashista.h in separate translation units,
 * each compiled with its library's VASHISTA_PREFIX (link each library PRIVATE to a static or
 * object library of its own, so that the definitions do not meet).
 *
 * Every function vashista.h declares must be listed here: the test prefix_symbols compares
 * the two headers and the prefixed libraries' exported symbols. */
#ifndef VASHISTA_PREFIX_H
#define VASHISTA_PREFIX_H

#ifdef VASHISTA_PREFIX
#define VASHISTA_PREFIX_CAT_(a, b) a##b
#define VASHISTA_PREFIX_CAT(a, b) VASHISTA_PREFIX_CAT_(a, b)
#define VASHISTA_PREFIXED(name) VASHISTA_PREFIX_CAT(VASHISTA_PREFIX, name)

#define vashista_abi_version VASHISTA_PREFIXED(vashista_abi_version)
#define vashista_cache_create VASHISTA_PREFIXED(vashista_cache_create)
#define vashista_cache_destroy VASHISTA_PREFIXED(vashista_cache_destroy)
#define vashista_append VASHISTA_PREFIXED(vashista_append)
#define vashista_summarize VASHISTA_PREFIXED(vashista_summarize)
#define vashista_truncate VASHISTA_PREFIXED(vashista_truncate)
#define vashista_share_prefix VASHISTA_PREFIXED(vashista_share_prefix)
#define vashista_cache_memory_size VASHISTA_PREFIXED(vashista_cache_memory_size)
#define vashista_appended_tokens VASHISTA_PREFIXED(vashista_appended_tokens)
#define vashista_decode_config_default VASHISTA_PREFIXED(vashista_decode_config_default)
#define vashista_decode VASHISTA_PREFIXED(vashista_decode)
#define vashista_decode_with_candidates VASHISTA_PREFIXED(vashista_decode_with_candidates)
#define vashista_dense VASHISTA_PREFIXED(vashista_dense)
#define vashista_plan_desc_default VASHISTA_PREFIXED(vashista_plan_desc_default)
#define vashista_plan_create VASHISTA_PREFIXED(vashista_plan_create)
#define vashista_plan_destroy VASHISTA_PREFIXED(vashista_plan_destroy)
#define vashista_plan_workspace_size VASHISTA_PREFIXED(vashista_plan_workspace_size)
#define vashista_run VASHISTA_PREFIXED(vashista_run)
#define vashista_set_num_threads VASHISTA_PREFIXED(vashista_set_num_threads)
#define vashista_set_parallel_for VASHISTA_PREFIXED(vashista_set_parallel_for)
#define vashista_last_error VASHISTA_PREFIXED(vashista_last_error)
#define vashista_status_name VASHISTA_PREFIXED(vashista_status_name)
#define vashista_list_variants VASHISTA_PREFIXED(vashista_list_variants)
#endif /* VASHISTA_PREFIX */

#endif /* VASHISTA_PREFIX_H */
