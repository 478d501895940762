// A linked kernel library's cache over a reference problem (the demo shape's D and S, two
// KV heads), appended through the C ABI, and helpers for the tests that call the C ABI.
#pragma once

#include "problem.h"
#include "vashista.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

namespace vashista::testing {

constexpr int H = 2, D = 128, S = 16;

struct Fixture {
    ref::Problem p;
    std::vector<uint8_t> k_pages, v_pages;
    vashista_cache *cache = nullptr;
    int G;

    KvLayout layout;

    int sketch_bits = 0;  // the token sketch the cache keeps (groups of 16 channels), 0 for none
    vashista_dtype summary_dtype = VASHISTA_DTYPE_BF16;
    int super_pages = 0;  // the super-page boxes the cache keeps (hier_bound routing), 0 for none

    explicit Fixture(int group = 4, std::vector<int> lens = {3000, 777}, ref::DataKind kind = ref::DataKind::Planted,
                     KvLayout layout_ = KvLayout::HND, const std::function<void(ref::Problem &)> &edit = {},
                     int sketch_bits_ = 0, vashista_dtype summary_dtype_ = VASHISTA_DTYPE_BF16, int super_pages_ = 0)
        : G(group),
          layout(layout_),
          sketch_bits(sketch_bits_),
          summary_dtype(summary_dtype_),
          super_pages(super_pages_) {
        ref::ProblemSpec spec;
        spec.kv_heads = H;
        spec.group = group;
        spec.head_dim = D;
        spec.seq_lens = lens;
        spec.kind = kind;
        spec.needle_score = 30;
        spec.layout = layout;
        p = ref::make_problem(spec);
        if (edit) edit(p);
        k_pages.assign(p.cache.k.size() * 2, 0);
        v_pages.assign(p.cache.v.size() * 2, 0);
        vashista_cache_desc desc = describe();
        REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_OK);
        for (int b = 0; b < p.seqs.batch; ++b) append_all(b);
    }
    ~Fixture() { vashista_cache_destroy(cache); }

    vashista_cache_desc describe() {
        return vashista_cache_desc{sizeof(vashista_cache_desc),
                                   p.seqs.batch,
                                   H,
                                   D,
                                   S,
                                   p.cache.num_pages,
                                   p.seqs.max_pages,
                                   VASHISTA_DTYPE_BF16,
                                   summary_dtype,
                                   layout == KvLayout::HND ? VASHISTA_LAYOUT_HND : VASHISTA_LAYOUT_NHD,
                                   k_pages.data(),
                                   v_pages.data(),
                                   p.seqs.page_table.data(),
                                   sketch_bits,
                                   sketch_bits ? kSketchGroupDefault : 0,
                                   super_pages};
    }
    // Tokens [start, start + n) of sequence b, as [n][H][D] bf16.
    std::vector<uint16_t> tokens(const std::vector<float> &src, int b, int start, int n) {
        const std::vector<uint8_t> bytes = ref::token_bytes(p.cache, p.seqs, src, b, start, n);
        std::vector<uint16_t> out(bytes.size() / 2);
        std::memcpy(out.data(), bytes.data(), bytes.size());
        return out;
    }
    void append_all(int b) {
        // Uneven chunks so pages are summarized while partial and again when full.
        const int len = p.seqs.seq_lens[b];
        for (int start = 0; start < len;) {
            const int n = std::min(len - start, 1 + (start * 7) % 53);
            auto k = tokens(p.cache.k, b, start, n), v = tokens(p.cache.v, b, start, n);
            REQUIRE(vashista_append(cache, b, start, n, k.data(), v.data()) == VASHISTA_OK);
            start += n;
        }
    }
};

// Stores an integer into a C enum field the way a C caller can, without C++'s
// undefined behaviour for out-of-range enum values.
template <typename E>
inline void store_raw(E &field, int value) {
    static_assert(sizeof(E) == sizeof(int), "C enums are int-sized");
    std::memcpy(&field, &value, sizeof value);
}

inline vashista_decode_config default_config() {
    vashista_decode_config c;
    vashista_decode_config_default(&c);
    return c;
}

// The reference's options for a softmax config of the runtime.
inline ref::SparseOptions options_of(const vashista_decode_config &c) {
    ref::SparseOptions opt;
    opt.top_pages = c.top_pages;
    opt.top_tokens = c.top_tokens;
    opt.routing = c.routing == VASHISTA_ROUTING_BOUND        ? RoutingMode::Bound
                  : c.routing == VASHISTA_ROUTING_SKETCH     ? RoutingMode::Sketch
                  : c.routing == VASHISTA_ROUTING_HIER_BOUND ? RoutingMode::HierBound
                                                             : RoutingMode::Mean;
    opt.group_routing = c.group_routing == VASHISTA_GROUP_SHARED ? GroupRouting::Shared : GroupRouting::PerHead;
    opt.sink_pages = c.sink_pages;
    opt.local_pages = c.local_pages;
    opt.super_expand = c.super_expand;  // super_pages: the cache's (kSuperPagesDefault in these tests)
    return opt;
}

}  // namespace vashista::testing
