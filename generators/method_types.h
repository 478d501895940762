// The method's named choices (../shared/method.md), shared by the algorithm
// definitions, the runtime and the reference. No Halide here.
#pragma once

namespace vashista {

enum class KvLayout { HND, NHD };
enum class Solver { Softmax, EG, FW, Sparsemax };
enum class RoutingMode { Mean, Bound };
enum class GroupRouting { PerHead, Shared };

// Pages per summary block: routing scores 16 pages per vector with no horizontal sums.
constexpr int kSummaryBlock = 16;
// Summary channels, in the order of the c dimension.
enum SummaryChannel { kSummaryMean = 0, kSummaryMin = 1, kSummaryMax = 2, kSummaryChannels = 3 };

// Per-head diagnostics, in the order of the `diag` output's first dimension.
enum DiagField {
    kDiagSupportGap = 0,   // Δ̂ = min candidate score - largest score outside the candidates
    kDiagLeakage = 1,      // L (a bound in bound mode, an estimate in mean mode)
    kDiagErrorBound = 2,   // delta * (V_out + ||o||), delta = L / (1 + L)
    kDiagOutsideMass = 3,  // delta
    kDiagOutsideValueNorm = 4,
    kDiagCandidates = 5,   // number of candidates kept
    kDiagFwGap = 6,        // Frank-Wolfe duality gap (fw solver), else 0
    kDiagMaxScore = 7,     // m = max candidate score
    kDiagFields = 8
};

}  // namespace vashista
