// Runs a JIT-compiled decode on a reference problem and compares with the reference.
#pragma once

#include "buffers.h"

#include <memory>
#include <string>

namespace vashista::test {

struct Tolerance {
    double out = 1e-4;       // max |o_kernel - o_ref|, values O(1)
    double lse = 1e-4;       // relative to 1 + |lse|
    double diag_rel = 1e-3;  // leakage and bound, relative, plus diag_abs
    double diag_abs = 1e-5;
};

struct Comparison {
    int heads = 0, candidate_mismatches = 0, page_mismatches = 0;
    double max_out_err = 0, max_lse_err = 0, max_diag_err = 0;
    std::string first_problem;  // a description of the first mismatch
};

ref::SparseOptions sparse_options(const DecodeConfig &cfg, double scale);

// A fused decode compiled for this machine with `schedule`, or the hand schedule.
std::unique_ptr<GeneratorJit> compile_decode(const DecodeConfig &cfg, const DecodeCpuSchedule *schedule = nullptr);
Comparison compare_with_reference(const ref::Problem &p, const DecodeConfig &cfg, const DecodeBuffers &buf,
                                  const ref::Summaries &sum, const Tolerance &tol);

}  // namespace vashista::test
