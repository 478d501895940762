// One kernel library for many CPUs: every variant of vashista_multitarget_kernels is compiled
// for AVX-512, AVX2 and baseline x86-64, and a call runs the best one the CPU supports.
// Halide's CPU-feature query is narrowed (halide_set_custom_can_use_target_features) to
// the ISA level in VASHISTA_FORCE_ISA_LEVEL (2 AVX-512, 1 AVX2, 0 baseline); ctest runs
// this once per level, since a multi-target kernel picks its code once per process.
// Every kernel must run that level's code and match the reference.
#include "HalideRuntime.h"
#include "library_check.h"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <set>

using namespace vashista;

namespace {

// The widest ISA level the feature query admits, and the levels of the code it admitted
// (how many times).
int g_allowed = 2, g_chosen = 0;
std::set<int> g_levels;

bool has(const uint64_t *features, int bit) { return (features[bit / 64] >> (bit % 64)) & 1; }

int level(const uint64_t *features) {
    if (has(features, halide_target_feature_avx512)) return 2;
    if (has(features, halide_target_feature_avx2)) return 1;
    return 0;
}

int narrowed(int count, const uint64_t *features) {
    if (level(features) > g_allowed || !halide_default_can_use_target_features(count, features)) return 0;
    g_levels.insert(level(features));
    ++g_chosen;
    return 1;
}

}  // namespace

TEST_CASE("a multi-target library runs the forced ISA level's code and matches the reference",
          "[runtime][multitarget]") {
    const char *forced = std::getenv("VASHISTA_FORCE_ISA_LEVEL");
    REQUIRE(forced != nullptr);
    g_allowed = std::atoi(forced);
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    if (g_allowed == 2 && !avx512) {
        // ctest reports this run as skipped (SKIP_REGULAR_EXPRESSION).
        WARN("skipped: this CPU has no AVX-512, so the AVX-512 path cannot run here");
        return;
    }
    INFO("ISA level allowed: " << g_allowed);
    halide_set_custom_can_use_target_features(narrowed);
    // Append (the summarize kernel), sparse decode and dense, each with this level's code.
    testing::check_library_matches_reference({});
    // A kernel runs the widest of its targets the query admits (it may ask about narrower
    // ones too): the widest admitted is the forced level, except for the baseline, the last
    // target, which a kernel takes without asking.
    if (g_allowed > 0) {
        REQUIRE(g_chosen >= 3);  // summarize, decode and dense asked at least once each
        REQUIRE(*g_levels.rbegin() == g_allowed);
    } else {
        REQUIRE(g_levels.empty());
    }
}
