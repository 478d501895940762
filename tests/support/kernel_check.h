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
// The same for `target` (decode_target added), `schedule` the JSON of a point of the
// target's schedule space, empty for its hand schedule.
std::unique_ptr<GeneratorJit> compile_decode(const DecodeConfig &cfg, const Halide::Target &target,
                                             const std::string &schedule);
Comparison compare_with_reference(const ref::Problem &p, const DecodeConfig &cfg, const DecodeBuffers &buf,
                                  const ref::Summaries &sum, const Tolerance &tol);

// The fused decode for `target` (see compile_decode) against the reference over the kernel
// matrix: exact candidate sets and pages, outputs and lse within the tolerances, the
// diagnostics within diag_rel / diag_abs. Only the cases of `solvers`; with `half`, one of
// the two group routings of each (solver, routing mode), alternating (12 of the 24 cases).
void check_decode_matrix(const Halide::Target &target, const std::string &schedule,
                         const std::vector<Solver> &solvers = {Solver::Softmax, Solver::EG, Solver::FW,
                                                               Solver::Sparsemax},
                         bool half = false);

// The page kernels for `target` (page_kernels_check.cpp), over every key dtype and layout:
// summarize (min/max rows, int8 scales and key_absmax bit for bit with the reference,
// value norms at or above it), sketch (codes and scales bit for bit), dense (`schedule`:
// JSON of the target's schedule space, empty for its hand schedule; out within 1e-4 of
// the f64 reference, lse within 1e-5 relative).
void check_summarize_kernel(const Halide::Target &target);
void check_sketch_kernel(const Halide::Target &target);
void check_dense_kernel(const Halide::Target &target, const std::string &schedule);

}  // namespace vashista::test
