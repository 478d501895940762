// The method's named choices (../shared/method.md), shared by the algorithm
// definitions, the runtime and the reference. No Halide here.
#pragma once

#include <stdexcept>
#include <string>

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

// The names the generators' parameters, workloads and JSON use; parse_* throws on any
// other name, naming it.
inline const char *to_string(KvLayout v) { return v == KvLayout::HND ? "HND" : "NHD"; }
inline const char *to_string(Solver v) {
    switch (v) {
    case Solver::Softmax: return "softmax";
    case Solver::EG: return "eg";
    case Solver::FW: return "fw";
    case Solver::Sparsemax: return "sparsemax";
    }
    return "?";
}
inline const char *to_string(RoutingMode v) { return v == RoutingMode::Mean ? "mean" : "bound"; }
inline const char *to_string(GroupRouting v) { return v == GroupRouting::PerHead ? "per_head" : "shared"; }

namespace detail {
template <typename E, size_t N>
E parse_name(const std::string &s, const E (&values)[N], const char *what) {
    std::string all;
    for (E v : values) {
        if (s == to_string(v)) return v;
        all += std::string(all.empty() ? "" : ", ") + to_string(v);
    }
    throw std::invalid_argument(std::string(what) + " '" + s + "' is not one of " + all);
}
}  // namespace detail

inline KvLayout parse_layout(const std::string &s) {
    static const KvLayout v[] = {KvLayout::HND, KvLayout::NHD};
    return detail::parse_name(s, v, "layout");
}
inline Solver parse_solver(const std::string &s) {
    static const Solver v[] = {Solver::Softmax, Solver::EG, Solver::FW, Solver::Sparsemax};
    return detail::parse_name(s, v, "solver");
}
inline RoutingMode parse_routing(const std::string &s) {
    static const RoutingMode v[] = {RoutingMode::Mean, RoutingMode::Bound};
    return detail::parse_name(s, v, "routing");
}
inline GroupRouting parse_group_routing(const std::string &s) {
    static const GroupRouting v[] = {GroupRouting::PerHead, GroupRouting::Shared};
    return detail::parse_name(s, v, "group_routing");
}

}  // namespace vashista
