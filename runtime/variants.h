// The dispatch table a kernel library provides (written by vashista_add_kernel_library).
#pragma once

#include "HalideRuntime.h"
#include "vashista.h"

#include <vector>

namespace vashista::runtime {

using DecodeFn = int (*)(halide_buffer_t *q, halide_buffer_t *k_cache, halide_buffer_t *v_cache,
                         halide_buffer_t *page_table, halide_buffer_t *seq_lens, halide_buffer_t *summary,
                         halide_buffer_t *value_norm, halide_buffer_t *key_absmax, halide_buffer_t *sketch,
                         halide_buffer_t *sketch_scale, float scale, halide_buffer_t *out, halide_buffer_t *lse,
                         halide_buffer_t *diag, halide_buffer_t *candidates, halide_buffer_t *pages);
using DenseFn = int (*)(halide_buffer_t *q, halide_buffer_t *k_cache, halide_buffer_t *v_cache,
                        halide_buffer_t *page_table, halide_buffer_t *seq_lens, float scale, halide_buffer_t *out,
                        halide_buffer_t *lse);
using SummarizeFn = int (*)(halide_buffer_t *k_cache, halide_buffer_t *v_cache, halide_buffer_t *page_table,
                            halide_buffer_t *seq_lens, halide_buffer_t *touched, halide_buffer_t *summary,
                            halide_buffer_t *value_norm, halide_buffer_t *key_absmax);
using SketchFn = int (*)(halide_buffer_t *k_cache, halide_buffer_t *page_table, halide_buffer_t *seq_lens,
                         halide_buffer_t *touched, halide_buffer_t *codes, halide_buffer_t *scales);

struct DecodeVariant {
    const char *name;
    int head_dim, page_size, top_pages, top_tokens, group_size, sink_pages, local_pages;
    vashista_dtype kv_dtype, summary_dtype;
    vashista_layout layout;
    vashista_solver solver;
    vashista_routing routing;
    vashista_group_routing group_routing;
    int solver_steps;
    float solver_eta, solver_tau;
    int sketch_bits, sketch_group;  // read in sketch routing only
    DecodeFn fn;
};

struct DenseVariant {
    const char *name;
    int head_dim, page_size, group_size;
    vashista_dtype kv_dtype;
    vashista_layout layout;
    DenseFn fn;
};

struct SummarizeVariant {
    const char *name;
    int head_dim, page_size;
    vashista_dtype kv_dtype, summary_dtype;
    vashista_layout layout;
    SummarizeFn fn;
};

// The token sketch of touched pages (sketch routing): codes (s, byte, h, n) and
// bf16 scales (s, group, h, n).
struct SketchVariant {
    const char *name;
    int head_dim, page_size;
    vashista_dtype kv_dtype;
    vashista_layout layout;
    int sketch_bits, sketch_group;
    SketchFn fn;
};

const std::vector<DecodeVariant> &decode_variants();
const std::vector<DenseVariant> &dense_variants();
const std::vector<SummarizeVariant> &summarize_variants();
const std::vector<SketchVariant> &sketch_variants();
// Whether the library's kernels were compiled with Halide's large_buffers feature: then a
// buffer may hold more than 2^31 - 1 elements (each dimension's stride still fits int32).
bool large_buffers();

}  // namespace vashista::runtime
