// vashista_run allocates nothing: this binary counts every malloc of the process (an
// interposed malloc family) while plans run, in every policy, with sketch and hier_bound
// routing and with dense fallbacks. Not built under the sanitizers, whose allocators it would replace.
#include "alloc_counter.h"
#include "support/abi_fixture.h"
#include "vashista.h"

#include <catch2/catch.hpp>

#include <vector>

using namespace vashista;
using namespace vashista::testing;

using bench::allocations_in;

TEST_CASE("vashista_run allocates nothing", "[runtime][engine]") {
    // Bound routing, sketch routing (8-bit) and hier_bound routing (super-pages of 16 pages).
    for (const auto &[sketch, hier] : {std::pair{0, false}, std::pair{8, false}, std::pair{0, true}}) {
        Fixture f(4, {3000, 777}, ref::DataKind::Gaussian, KvLayout::HND, {}, sketch, VASHISTA_DTYPE_BF16,
                  hier ? kSuperPagesDefault : 0);
        const int n = 2 * H * 4;
        std::vector<float> out(size_t(n) * D), lse(n);
        std::vector<vashista_head_diag> diag(n);
        std::vector<int32_t> candidates(size_t(n) * 256);
        // The counter sees allocations: making a plan allocates.
        vashista_decode_config cfg = default_config();
        if (sketch) cfg.routing = VASHISTA_ROUTING_SKETCH;
        if (hier) cfg.routing = VASHISTA_ROUTING_HIER_BOUND;
        vashista_plan_desc pd;
        vashista_plan_desc_default(&pd, H * 4);
        vashista_plan *plan = nullptr;
        REQUIRE(allocations_in([&] { REQUIRE(vashista_plan_create(f.cache, &cfg, &pd, &plan) == VASHISTA_OK); }) > 0);
        vashista_plan_destroy(plan);
        for (vashista_policy policy : {VASHISTA_POLICY_NONE, VASHISTA_POLICY_DENSE, VASHISTA_POLICY_WIDEN}) {
            // Tolerance 0 on Gaussian data: every head falls back (dense, or widen then dense).
            cfg.policy = policy;
            cfg.tolerance = 0;
            INFO("sketch bits " << sketch << (hier ? ", hier_bound" : "") << ", policy " << policy);
            REQUIRE(vashista_plan_create(f.cache, &cfg, &pd, &plan) == VASHISTA_OK);
            std::vector<uint8_t> workspace(vashista_plan_workspace_size(plan));
            auto run = [&] {
                REQUIRE(vashista_run(plan, workspace.data(), workspace.size(), nullptr, f.p.q.q.data(),
                                     f.p.seqs.seq_lens.data(), out.data(), lse.data(), diag.data(),
                                     candidates.data()) == VASHISTA_OK);
            };
            run();  // the thread pool starts on first use
            REQUIRE(allocations_in([&] {
                        for (int i = 0; i < 5; ++i) run();
                    }) == 0);
            if (policy != VASHISTA_POLICY_NONE)
                for (int i = 0; i < n; ++i) REQUIRE(diag[i].policy_taken == VASHISTA_TAKEN_DENSE);
            vashista_plan_destroy(plan);
        }
    }
}

TEST_CASE("a cache allocates what vashista_cache_memory_size says, whatever the block table's width",
          "[runtime][engine]") {
    for (int sketch : {0, 8}) {
        Fixture f(4, {3000, 777}, ref::DataKind::Gaussian, KvLayout::HND, {}, sketch);
        for (int columns : {f.p.seqs.max_pages, 64 * f.p.seqs.max_pages}) {
            // Super-page boxes (per sequence, as wide as the block table) with the sketch.
            const int super_pages = sketch ? 16 : 0;
            INFO("sketch bits " << sketch << ", super_pages " << super_pages << ", " << columns
                                << " block-table columns");
            std::vector<int32_t> table(size_t(f.p.seqs.batch) * columns, 0);
            vashista_cache_desc desc = f.describe();
            if (columns > f.p.seqs.max_pages) desc.summary_dtype = VASHISTA_DTYPE_I8;  // and their scales
            INFO("summaries " << (desc.summary_dtype == VASHISTA_DTYPE_I8 ? "int8" : "bf16"));
            desc.max_pages = columns;
            desc.super_pages = super_pages;
            desc.page_table = table.data();
            vashista_cache *cache = nullptr;
            const long calls = allocations_in([&] { REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_OK); });
            const long long asked = bench::counted_bytes();
            vashista_cache_destroy(cache);
            const size_t said = vashista_cache_memory_size(&desc);
            // The buffers it names, plus the cache object and its vectors' headers.
            REQUIRE(said > 0);
            REQUIRE(asked >= (long long)said);
            REQUIRE(asked <= (long long)said + 4096);
            // A fixed few, whatever the sizes; super-pages add their boxes, their table and three
            // bookkeeping vectors.
            REQUIRE(calls < (super_pages ? 32 : 24));
        }
    }
}
