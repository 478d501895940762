// Schedules as data: JSON round trips, rejection of invalid points, and invariance of
// candidates and outputs across randomly drawn valid schedules of the fused decode.
#include "kernel_check.h"

#include <catch2/catch.hpp>

#include <random>

using namespace vashista;

TEST_CASE("schedules round-trip through JSON", "[schedules]") {
    DecodeConfig cfg;
    std::mt19937 rng(11);
    for (int i = 0; i < 50; ++i) {
        DecodeCpuSchedule s = random_point<DecodeCpuSchedule>(cfg, rng);
        DecodeCpuSchedule t = schedule_from_json<DecodeCpuSchedule>(nlohmann::json::parse(schedule_to_json(s).dump()));
        REQUIRE(schedule_to_json(t) == schedule_to_json(s));
    }
    DenseCpuSchedule d;
    d.split_pages = 32;
    REQUIRE(schedule_from_json<DenseCpuSchedule>(schedule_to_json(d)).split_pages == 32);
}

TEST_CASE("invalid schedules are rejected with the knob named", "[schedules]") {
    REQUIRE_THROWS_WITH(schedule_from_json<DecodeCpuSchedule>(nlohmann::json{{"vector_width", 12}}),
                        Catch::Contains("vector_width") && Catch::Contains("12"));
    REQUIRE_THROWS_WITH(schedule_from_json<DecodeCpuSchedule>(nlohmann::json{{"tile", 4}}),
                        Catch::Contains("unknown schedule knob 'tile'"));
    REQUIRE_THROWS_WITH(schedule_from_json<DecodeCpuSchedule>(nlohmann::json{{"parallel", "yes"}}),
                        Catch::Contains("integer"));
    DecodeConfig cfg;
    cfg.head_dim = 40;  // 32 lanes cannot split it
    DecodeCpuSchedule s;
    s.dot_lanes = 32;
    REQUIRE(!DecodeCpuSchedule::space().violation(s, cfg).empty());
    REQUIRE_THROWS_WITH(test::compile_decode(cfg, &s), Catch::Contains("dot_lanes = 32 does not divide head_dim = 40"));
}

TEST_CASE("random valid schedules never violate their space", "[schedules]") {
    std::mt19937 rng(2);
    for (int head_dim : {32, 40, 64, 128}) {
        DecodeConfig cfg;
        cfg.head_dim = head_dim;
        for (int i = 0; i < 200; ++i) {
            DecodeCpuSchedule s = random_point<DecodeCpuSchedule>(cfg, rng);
            REQUIRE(DecodeCpuSchedule::space().violation(s, cfg).empty());
            REQUIRE(head_dim % s.dot_lanes == 0);
            REQUIRE(head_dim % (s.vector_width * s.out_unroll) == 0);
        }
    }
}

namespace {

// Random points of the schedule space against the hand schedule: identical candidate sets,
// outputs within f32 reassociation.
void check_random_schedules(RoutingMode routing, ref::DataKind kind, int trials) {
    DecodeConfig cfg;
    cfg.head_dim = 64;
    cfg.top_pages = 4;
    cfg.top_tokens = 24;
    cfg.group_size = 4;
    cfg.routing = routing;
    ref::ProblemSpec spec;
    spec.kv_heads = 2;
    spec.group = 4;
    spec.head_dim = 64;
    spec.seq_lens = {150, 40, 9};
    spec.kind = kind;
    ref::Problem p = ref::make_problem(spec);
    ref::Summaries sum = ref::summarize(p.cache, p.seqs, ref::DType::BF16);

    auto run_with = [&](const DecodeCpuSchedule &s) {
        auto jit = test::compile_decode(cfg, &s);
        test::DecodeBuffers buf = test::decode_buffers(p, cfg, sum, ref::default_scale(64));
        run(*jit, buf);
        return buf;
    };
    test::DecodeBuffers base = run_with(hand_schedule(cfg));
    std::mt19937 rng(1234);
    for (int trial = 0; trial < trials; ++trial) {
        DecodeCpuSchedule s = random_point<DecodeCpuSchedule>(cfg, rng);
        INFO("schedule " << schedule_to_json(s).dump());
        test::DecodeBuffers b = run_with(s);
        int mismatches = 0;
        double out_diff = 0, lse_diff = 0;
        b.candidates.for_each_element([&](const int *pos) {
            if (b.candidates(pos) != base.candidates(pos)) ++mismatches;
        });
        b.out.for_each_element(
            [&](const int *pos) { out_diff = std::max<double>(out_diff, std::abs(b.out(pos) - base.out(pos))); });
        b.lse.for_each_element(
            [&](const int *pos) { lse_diff = std::max<double>(lse_diff, std::abs(b.lse(pos) - base.lse(pos))); });
        CHECK(mismatches == 0);
        CHECK(out_diff <= 1e-5);  // f32 reassociation only
        CHECK(lse_diff <= 1e-5);
    }
}

}  // namespace

TEST_CASE("20 random schedules of the fused decode give the same candidates and outputs", "[schedules]") {
    check_random_schedules(RoutingMode::Bound, ref::DataKind::Dyadic, 20);
}

// The sketch's sums keep their order under every schedule, so even Gaussian data (no exact
// ties to lean on) must give the same candidates.
TEST_CASE("10 random schedules of sketch routing give the same candidates and outputs", "[schedules]") {
    check_random_schedules(RoutingMode::Sketch, ref::DataKind::Gaussian, 10);
}
