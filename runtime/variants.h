// The dispatch table a kernel library provides (written by vashista_add_kernel_library).
#pragma once

#include "kernel_call.h"
#include "vashista.h"

#include <vector>

namespace vashista::runtime {

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
    int super_pages, super_expand;  // read in hier_bound routing only
    Kernel kernel;                  // arguments as its Generator declares them
};

struct DenseVariant {
    const char *name;
    int head_dim, page_size, group_size;
    vashista_dtype kv_dtype;
    vashista_layout layout;
    Kernel kernel;  // arguments as its Generator declares them
};

struct SummarizeVariant {
    const char *name;
    int head_dim, page_size;
    vashista_dtype kv_dtype, summary_dtype;
    vashista_layout layout;
    Kernel kernel;  // arguments as its Generator declares them
};

// The token sketch of touched pages (sketch routing): codes (s, byte, h, n) and
// bf16 scales (s, group, h, n).
struct SketchVariant {
    const char *name;
    int head_dim, page_size;
    vashista_dtype kv_dtype;
    vashista_layout layout;
    int sketch_bits, sketch_group;
    Kernel kernel;  // arguments as its Generator declares them
};

const std::vector<DecodeVariant> &decode_variants();
const std::vector<DenseVariant> &dense_variants();
const std::vector<SummarizeVariant> &summarize_variants();
const std::vector<SketchVariant> &sketch_variants();
// Whether the library's kernels were compiled with Halide's large_buffers feature: then a
// buffer may hold more than 2^31 - 1 elements (each dimension's stride still fits int32).
bool large_buffers();

}  // namespace vashista::runtime
