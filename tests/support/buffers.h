// Halide buffers of a reference problem, in the layouts the kernels read, and a decode
// kernel's outputs.
#pragma once

#include "jit.h"
#include "problem.h"

namespace vashista::test {

struct DecodeBuffers {
    Halide::Buffer<float> q;                          // (d, g, h, b)
    Halide::Buffer<> k_cache, v_cache;                // 4-D per layout
    Halide::Buffer<int32_t> page_table, seq_lens;     // (j, b), (b)
    Halide::Buffer<int32_t> route_pages, route_rank;  // (j, b): route_order of each row
    Halide::Buffer<> summary;                         // (d, c, p, h)
    Halide::Buffer<float> value_norm, key_absmax;     // (p, h)
    Halide::Buffer<> summary_scale;                   // (x, p, h) bf16
    Halide::Buffer<uint8_t> sketch;                   // (s, byte, p, h)
    Halide::Buffer<> sketch_scale;                    // (s, group, p, h) bf16
    Halide::Buffer<float> super_summary;              // (d, c, slot, h), hier_bound
    Halide::Buffer<int32_t> super_table;              // (s, b) -> slot
    float scale = 0;
    Halide::Buffer<float> out, lse, diag;       // (d,g,h,b), (g,h,b), (k,g,h,b)
    Halide::Buffer<int32_t> candidates, pages;  // (c,g,h,b), (i,g,h,b)
};

// Inputs for a decode step; summaries come from the reference rounded to
// cfg.summary_type, so routing sees exactly the values the reference uses.
DecodeBuffers decode_buffers(const ref::Problem &p, const DecodeConfig &cfg, const ref::Summaries &sum, double scale);

// Runs a decode kernel (GeneratorJit of vashista_decode) on `buf`, writing its outputs.
void run(GeneratorJit &decode, DecodeBuffers &buf);

}  // namespace vashista::test
