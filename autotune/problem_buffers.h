// Buffers of a reference problem in the layouts the kernels read, with the Halide
// runtime's Buffer only (no compiler), so a bundle's runner can use them too.
#pragma once

#include "HalideBuffer.h"
#include "problem.h"

namespace vashista {

struct ProblemBuffers {
    Halide::Runtime::Buffer<float> q;                          // (d, g, h, b)
    Halide::Runtime::Buffer<void> k_cache, v_cache;            // 4-D per layout
    Halide::Runtime::Buffer<int32_t> page_table, seq_lens;     // (j, b), (b)
    Halide::Runtime::Buffer<int32_t> route_pages, route_rank;  // (j, b): route_order of each row
    Halide::Runtime::Buffer<void> summary;                     // (d, c, p, h)
    Halide::Runtime::Buffer<float> value_norm, key_absmax;     // (p, h)
    Halide::Runtime::Buffer<void> summary_scale;               // (x, p, h) bf16; one group but for int8
    Halide::Runtime::Buffer<uint8_t> sketch;                   // (s, byte, p, h); 1 element without one
    Halide::Runtime::Buffer<void> sketch_scale;                // (s, group, p, h) bf16
    // hier_bound routing: super-page boxes and bounds (d, c = lo/hi/bounds, slot, h), f32, and each
    // sequence's super-page slots (s, b); slot b * max_supers + s here. 1 element without.
    Halide::Runtime::Buffer<float> super_summary;
    Halide::Runtime::Buffer<int32_t> super_table;
};

// Summaries come from the reference, rounded outward to `summary_dtype` as the
// summarize kernel rounds them (int8: the codes of the reference's values and scales),
// each sequence's pages at the physical pages its block table maps them to; value norms
// are inflated as the kernel inflates them.
ProblemBuffers problem_buffers(const ref::Problem &p, const ref::Summaries &sum, ref::DType summary_dtype);

}  // namespace vashista
