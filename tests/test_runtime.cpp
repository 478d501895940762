// The linked library (AOT kernels, runtime) at the demo shape: summaries on append,
// decode against the reference, the fallback policies, and every validation error,
// each checked to write nothing.
#include "HalideBuffer.h"
#include "kernel_call.h"
#include "problem.h"
#include "support/abi_fixture.h"
#include "vashista.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include <sys/mman.h>

using namespace vashista;

using namespace vashista::testing;

// A kernel of two arguments, as a Halide AOT object declares it: an input buffer `x`
// (2-D float32) and a scalar `scale`; its argv entry point records what it was given.
namespace fake_kernel {
void *seen[2];
int argv(void **args) {
    seen[0] = args[0];
    seen[1] = args[1];
    return 0;
}
const halide_filter_argument_t arguments[2] = {
    {"x", halide_argument_kind_input_buffer, 2, halide_type_t(halide_type_float, 32), nullptr, nullptr, nullptr,
     nullptr, nullptr},
    {"scale", halide_argument_kind_input_scalar, 0, halide_type_t(halide_type_float, 32), nullptr, nullptr, nullptr,
     nullptr, nullptr}};
const halide_filter_metadata_t metadata{halide_filter_metadata_t::VERSION, 2, arguments, "host", "fake"};
const halide_filter_metadata_t *get_metadata() { return &metadata; }
}  // namespace fake_kernel

TEST_CASE("kernels are called by argument name, checked against their metadata", "[runtime]") {
    const runtime::Kernel k{"fake", fake_kernel::argv, fake_kernel::get_metadata};
    Halide::Runtime::Buffer<float> x(4, 3);
    Halide::Runtime::Buffer<float> x3(4, 3, 2);
    Halide::Runtime::Buffer<int32_t> xi(4, 3);
    {  // Bound in any order; passed in the metadata's order.
        runtime::KernelCall call(k);
        call.scalar("scale", 0.5f).buffer("x", x.raw_buffer());
        REQUIRE(call.run() == 0);
        REQUIRE(fake_kernel::seen[0] == x.raw_buffer());
        REQUIRE(*static_cast<float *>(fake_kernel::seen[1]) == 0.5f);
    }
    auto refused = [&](runtime::KernelCall &call) {
        fake_kernel::seen[0] = fake_kernel::seen[1] = nullptr;
        REQUIRE(call.run() == runtime::KernelCall::kBindError);
        REQUIRE(fake_kernel::seen[0] == nullptr);  // never called
        return call.error();
    };
    runtime::KernelCall unknown(k);
    unknown.buffer("y", x.raw_buffer()).scalar("scale", 1);
    REQUIRE_THAT(refused(unknown), Catch::Contains("kernel fake has no argument 'y' (its arguments: x, scale)"));
    runtime::KernelCall missing(k);
    missing.buffer("x", x.raw_buffer());
    REQUIRE_THAT(refused(missing), Catch::Contains("kernel fake was called without its argument 'scale'"));
    runtime::KernelCall dims(k);
    dims.buffer("x", x3.raw_buffer()).scalar("scale", 1);
    REQUIRE_THAT(refused(dims), Catch::Contains("takes 'x' as float32 with 2 dimensions, not float32 with 3"));
    runtime::KernelCall type(k);
    type.buffer("x", xi.raw_buffer()).scalar("scale", 1);
    REQUIRE_THAT(refused(type), Catch::Contains("not int32 with 2"));
    runtime::KernelCall kind(k);
    kind.buffer("scale", x.raw_buffer()).buffer("x", x.raw_buffer());
    REQUIRE_THAT(refused(kind), Catch::Contains("takes 'scale' as a scalar input, not an input buffer"));
}

TEST_CASE("decode through the library (tuned where the database has a schedule) matches the reference", "[runtime]") {
    // Bound routing for G = 1 and 4; for G = 4 sketch routing (the sketch kept on append) and
    // hier_bound routing (super-pages of 16 pages kept on append, 8 expanded).
    for (const auto &[group, routing] :
         {std::pair{1, VASHISTA_ROUTING_BOUND}, std::pair{4, VASHISTA_ROUTING_BOUND},
          std::pair{4, VASHISTA_ROUTING_SKETCH}, std::pair{4, VASHISTA_ROUTING_HIER_BOUND}}) {
        const bool sketch = routing == VASHISTA_ROUTING_SKETCH, hier = routing == VASHISTA_ROUTING_HIER_BOUND;
        Fixture f(group, {3000, 777}, ref::DataKind::Planted, KvLayout::HND, {}, sketch ? 8 : 0, VASHISTA_DTYPE_BF16,
                  hier ? kSuperPagesDefault : 0);
        const int B = f.p.seqs.batch, QH = H * group;
        ref::Summaries sum = ref::summarize(f.p.cache, f.p.seqs, ref::DType::BF16);
        if (hier) ref::add_super_pages(sum, f.p.seqs, kSuperPagesDefault);
        vashista_decode_config cfg = default_config();
        cfg.policy = VASHISTA_POLICY_NONE;
        cfg.routing = routing;
        INFO("routing " << routing << ", G = " << group);
        std::vector<float> out(size_t(B) * QH * D), lse(B * QH);
        std::vector<vashista_head_diag> diag(B * QH);
        std::vector<int32_t> cand(size_t(B) * QH * cfg.top_tokens);
        REQUIRE(vashista_decode_with_candidates(f.cache, &cfg, f.p.q.q.data(), QH, f.p.seqs.seq_lens.data(), out.data(),
                                                lse.data(), diag.data(), cand.data()) == VASHISTA_OK);
        const ref::SparseOptions opt = options_of(cfg);
        for (int b = 0; b < B; ++b)
            for (int h = 0; h < H; ++h)
                for (int g = 0; g < group; ++g) {
                    ref::HeadResult r = ref::sparse_head(f.p.cache, f.p.seqs, f.p.q, sum, opt, b, h, g);
                    const size_t i = (size_t(b) * H + h) * group + g;
                    for (int d = 0; d < D; ++d) REQUIRE(out[i * D + d] == Approx(r.out[d]).margin(1e-4));
                    REQUIRE(lse[i] == Approx(r.lse).margin(1e-4 * (1 + std::abs(r.lse))));
                    REQUIRE(diag[i].candidates == int(r.candidates.size()));
                    for (int c = 0; c < cfg.top_tokens; ++c)
                        REQUIRE(cand[i * cfg.top_tokens + c] == (c < int(r.candidates.size()) ? r.candidates[c] : -1));
                    REQUIRE(diag[i].error_bound == Approx(r.error_bound).epsilon(1e-3).margin(1e-6));
                    REQUIRE(diag[i].support_gap == Approx(r.support_gap).margin(1e-4));
                }
    }
}

TEST_CASE("dense through the library matches the reference", "[runtime]") {
    Fixture f(4, {1000, 33});
    const int QH = H * 4;
    std::vector<float> out(size_t(2) * QH * D), lse(2 * QH);
    REQUIRE(vashista_dense(f.cache, f.p.q.q.data(), QH, f.p.seqs.seq_lens.data(), 0.0f, out.data(), lse.data()) ==
            VASHISTA_OK);
    for (int b = 0; b < 2; ++b)
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < 4; ++g) {
                ref::DenseResult r = ref::dense_head(f.p.cache, f.p.seqs, f.p.q, 0.0, b, h, g);
                const size_t i = (size_t(b) * H + h) * 4 + g;
                for (int d = 0; d < D; ++d) REQUIRE(out[i * D + d] == Approx(r.out[d]).margin(1e-4));
                REQUIRE(lse[i] == Approx(r.lse).margin(1e-4 * (1 + std::abs(r.lse))));
            }
}

TEST_CASE("policies: none reports, dense and widen fall back to dense", "[runtime]") {
    for (KvLayout layout : {KvLayout::HND, KvLayout::NHD}) {
        INFO("layout " << to_string(layout));
        Fixture f(4, {3000, 500}, ref::DataKind::Gaussian, layout);  // no structure: wide bounds
        const int QH = H * 4, n = 2 * QH;
        std::vector<float> dense(size_t(n) * D), out(size_t(n) * D);
        REQUIRE(vashista_dense(f.cache, f.p.q.q.data(), QH, f.p.seqs.seq_lens.data(), 0.0f, dense.data(), nullptr) ==
                VASHISTA_OK);
        std::vector<vashista_head_diag> diag(n);
        for (vashista_policy policy : {VASHISTA_POLICY_NONE, VASHISTA_POLICY_DENSE, VASHISTA_POLICY_WIDEN}) {
            vashista_decode_config cfg = default_config();
            cfg.policy = policy;
            cfg.tolerance = 0.0f;
            REQUIRE(vashista_decode(f.cache, &cfg, f.p.q.q.data(), QH, f.p.seqs.seq_lens.data(), out.data(), nullptr,
                                    diag.data()) == VASHISTA_OK);
            for (int i = 0; i < n; ++i) {
                INFO("policy " << policy << " head " << i);
                if (diag[i].error_bound <= 0) continue;  // this head needed every token
                if (policy == VASHISTA_POLICY_NONE) {
                    REQUIRE(diag[i].policy_taken == VASHISTA_TAKEN_REPORTED);
                } else {
                    REQUIRE(diag[i].policy_taken == VASHISTA_TAKEN_DENSE);
                    for (int d = 0; d < D; ++d)
                        REQUIRE(out[size_t(i) * D + d] == Approx(dense[size_t(i) * D + d]).margin(1e-6));
                }
            }
        }
    }
}

TEST_CASE("a relative tolerance accepts exactly the heads whose bound is within it of the output", "[runtime]") {
    Fixture f(4, {3000, 500}, ref::DataKind::Planted);
    const int QH = H * 4, n = 2 * QH;
    std::vector<float> none_out(size_t(n) * D), out(size_t(n) * D), dense(size_t(n) * D);
    std::vector<vashista_head_diag> none_diag(n), diag(n);
    vashista_decode_config cfg = default_config();
    cfg.policy = VASHISTA_POLICY_NONE;
    REQUIRE(vashista_decode(f.cache, &cfg, f.p.q.q.data(), QH, f.p.seqs.seq_lens.data(), none_out.data(), nullptr,
                            none_diag.data()) == VASHISTA_OK);
    REQUIRE(vashista_dense(f.cache, f.p.q.q.data(), QH, f.p.seqs.seq_lens.data(), 0.0f, dense.data(), nullptr) ==
            VASHISTA_OK);
    // A tolerance between the heads' relative bounds, so that some pass and some do not.
    std::vector<double> relative(n);
    for (int i = 0; i < n; ++i) {
        double norm = 0;
        for (int d = 0; d < D; ++d) norm += double(none_out[size_t(i) * D + d]) * none_out[size_t(i) * D + d];
        relative[i] = none_diag[i].error_bound / (std::sqrt(norm) - none_diag[i].error_bound);
    }
    std::vector<double> sorted = relative;
    std::sort(sorted.begin(), sorted.end());
    cfg.policy = VASHISTA_POLICY_DENSE;
    cfg.relative_tolerance = 1;
    int k = n / 2;
    while (k + 1 < n && !(sorted[k] < sorted[k + 1])) ++k;
    REQUIRE(k + 1 < n);
    cfg.tolerance = float((sorted[k] + sorted[k + 1]) / 2);  // no head at the boundary
    REQUIRE(vashista_decode(f.cache, &cfg, f.p.q.q.data(), QH, f.p.seqs.seq_lens.data(), out.data(), nullptr,
                            diag.data()) == VASHISTA_OK);
    int sparse = 0;
    for (int i = 0; i < n; ++i) {
        INFO("head " << i << " relative bound " << relative[i] << " tolerance " << cfg.tolerance);
        const bool pass = relative[i] <= double(cfg.tolerance);
        REQUIRE(diag[i].policy_taken == (pass ? VASHISTA_TAKEN_SPARSE : VASHISTA_TAKEN_DENSE));
        sparse += pass;
        for (int d = 0; d < D; ++d)
            REQUIRE(out[size_t(i) * D + d] ==
                    Approx(pass ? none_out[size_t(i) * D + d] : dense[size_t(i) * D + d]).margin(1e-6));
    }
    CHECK(sparse > 0);
    CHECK(sparse < n);
    cfg.relative_tolerance = 2;
    REQUIRE(vashista_decode(f.cache, &cfg, f.p.q.q.data(), QH, f.p.seqs.seq_lens.data(), out.data(), nullptr,
                            diag.data()) == VASHISTA_ERROR_INVALID_ARGUMENT);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("config->relative_tolerance = 2"));
}

TEST_CASE("summaries update on every append, including partial pages", "[runtime]") {
    // After appending one more token, decode must equal the reference for the new length.
    Fixture f(4, {40, 40});
    f.p.seqs.seq_lens = {41, 40};
    auto k = f.tokens(f.p.cache.k, 0, 40, 1), v = f.tokens(f.p.cache.v, 0, 40, 1);
    REQUIRE(vashista_append(f.cache, 0, 40, 1, k.data(), v.data()) == VASHISTA_OK);
    REQUIRE(vashista_appended_tokens(f.cache, 0) == 41);
    ref::Summaries sum = ref::summarize(f.p.cache, f.p.seqs, ref::DType::BF16);
    vashista_decode_config cfg = default_config();
    cfg.policy = VASHISTA_POLICY_NONE;
    std::vector<float> out(size_t(2) * 8 * D);
    std::vector<vashista_head_diag> diag(16);
    REQUIRE(vashista_decode(f.cache, &cfg, f.p.q.q.data(), 8, f.p.seqs.seq_lens.data(), out.data(), nullptr,
                            diag.data()) == VASHISTA_OK);
    const ref::SparseOptions opt = options_of(cfg);
    ref::HeadResult r = ref::sparse_head(f.p.cache, f.p.seqs, f.p.q, sum, opt, 0, 1, 2);
    for (int d = 0; d < D; ++d) REQUIRE(out[size_t(6) * D + d] == Approx(r.out[d]).margin(1e-4));
    REQUIRE(diag[6].candidates == 41);
}

// Every error path: a clear status and message naming the argument, nothing written.
TEST_CASE("bad input gets a clear error and writes nothing", "[runtime][validation]") {
    Fixture f(4, {100, 50});
    constexpr int QH = 8;
    std::vector<float> q = f.p.q.q;
    std::vector<int32_t> lens = f.p.seqs.seq_lens;
    std::vector<float> out(size_t(2) * QH * D, 7.0f), lse(2 * QH, 7.0f);
    std::vector<vashista_head_diag> diag(2 * QH);
    std::memset(diag.data(), 0x5a, diag.size() * sizeof(vashista_head_diag));
    const std::vector<uint8_t> diag_before(
        reinterpret_cast<uint8_t *>(diag.data()),
        reinterpret_cast<uint8_t *>(diag.data()) + diag.size() * sizeof(vashista_head_diag));
    auto untouched = [&] {
        for (float x : out) REQUIRE(x == 7.0f);
        for (float x : lse) REQUIRE(x == 7.0f);
        REQUIRE(std::memcmp(diag.data(), diag_before.data(), diag_before.size()) == 0);
    };
    auto decode = [&](const vashista_decode_config &cfg, int qh = 8) {
        return vashista_decode(f.cache, &cfg, q.data(), qh, lens.data(), out.data(), lse.data(), diag.data());
    };
    auto expect = [&](vashista_status got, vashista_status want, const char *fragment) {
        INFO("message: " << vashista_last_error());
        REQUIRE(got == want);
        REQUIRE_THAT(vashista_last_error(), Catch::Contains(fragment));
        untouched();
    };
    const vashista_decode_config ok = default_config();

    SECTION("decode arguments") {
        expect(vashista_decode(nullptr, &ok, q.data(), QH, lens.data(), out.data(), nullptr, nullptr),
               VASHISTA_ERROR_NULL_POINTER, "cache is NULL");
        expect(vashista_decode(f.cache, nullptr, q.data(), QH, lens.data(), out.data(), nullptr, nullptr),
               VASHISTA_ERROR_NULL_POINTER, "config is NULL");
        expect(vashista_decode(f.cache, &ok, nullptr, QH, lens.data(), out.data(), nullptr, nullptr),
               VASHISTA_ERROR_NULL_POINTER, "q is NULL");
        expect(vashista_decode(f.cache, &ok, q.data(), QH, nullptr, out.data(), nullptr, nullptr),
               VASHISTA_ERROR_NULL_POINTER, "seq_lens is NULL");
        expect(vashista_decode(f.cache, &ok, q.data(), QH, lens.data(), nullptr, nullptr, nullptr),
               VASHISTA_ERROR_NULL_POINTER, "out is NULL");
        expect(decode(ok, 7), VASHISTA_ERROR_SHAPE_MISMATCH, "q_heads = 7 is not a positive multiple of kv_heads = 2");
        expect(decode(ok, 6), VASHISTA_ERROR_NO_VARIANT, "group_size=3");
        q[5] = std::numeric_limits<float>::quiet_NaN();
        expect(decode(ok), VASHISTA_ERROR_NON_FINITE, "q[0][0][5]");
        q[5] = std::numeric_limits<float>::infinity();
        expect(decode(ok), VASHISTA_ERROR_NON_FINITE, "is not finite");
    }
    SECTION("sequence lengths and the block table") {
        lens[1] = 0;
        expect(decode(ok), VASHISTA_ERROR_OUT_OF_RANGE, "seq_lens[1] = 0");
        lens[1] = f.p.seqs.max_pages * S + 1;
        expect(decode(ok), VASHISTA_ERROR_OUT_OF_RANGE, "max_pages * page_size");
        lens[1] = 51;
        expect(decode(ok), VASHISTA_ERROR_OUT_OF_RANGE, "exceeds the 50 tokens appended");
        lens[1] = 50;
        const int32_t saved = f.p.seqs.page_table[3];
        f.p.seqs.page_table[3] = 9001;
        expect(decode(ok), VASHISTA_ERROR_OUT_OF_RANGE, "page_table[0][3] = 9001 is not below num_pages");
        f.p.seqs.page_table[3] = -1;
        expect(decode(ok), VASHISTA_ERROR_OUT_OF_RANGE, "page_table[0][3] = -1");
        f.p.seqs.page_table[3] = saved;
    }
    SECTION("decode configuration") {
        auto with = [&](auto change) {
            vashista_decode_config c = ok;
            change(c);
            return c;
        };
        expect(decode(with([](auto &c) { c.top_pages = 0; })), VASHISTA_ERROR_INVALID_ARGUMENT,
               "config->top_pages = 0");
        expect(decode(with([](auto &c) { c.top_tokens = -3; })), VASHISTA_ERROR_INVALID_ARGUMENT,
               "config->top_tokens = -3");
        expect(decode(with([](auto &c) { store_raw(c.solver, 9); })), VASHISTA_ERROR_INVALID_ARGUMENT,
               "config->solver = 9");
        expect(decode(with([](auto &c) { store_raw(c.routing, 5); })), VASHISTA_ERROR_INVALID_ARGUMENT,
               "config->routing = 5");
        expect(decode(with([](auto &c) { c.routing = VASHISTA_ROUTING_SKETCH; })), VASHISTA_ERROR_INVALID_ARGUMENT,
               "needs a cache that keeps a token sketch");
        expect(decode(with([](auto &c) { c.routing = VASHISTA_ROUTING_HIER_BOUND; })), VASHISTA_ERROR_INVALID_ARGUMENT,
               "needs a cache that keeps super-page boxes");
        expect(decode(with([](auto &c) { c.routing = VASHISTA_ROUTING_HIER_BOUND, c.super_expand = 0; })),
               VASHISTA_ERROR_INVALID_ARGUMENT, "config->super_expand = 0 must be >= 1");
        expect(decode(with([](auto &c) { store_raw(c.group_routing, 3); })), VASHISTA_ERROR_INVALID_ARGUMENT,
               "config->group_routing = 3");
        expect(decode(with([](auto &c) { store_raw(c.policy, 7); })), VASHISTA_ERROR_INVALID_ARGUMENT,
               "config->policy = 7");
        expect(decode(with([](auto &c) { c.tolerance = -1; })), VASHISTA_ERROR_INVALID_ARGUMENT, "config->tolerance");
        expect(decode(with([](auto &c) { c.tolerance = NAN; })), VASHISTA_ERROR_INVALID_ARGUMENT, "config->tolerance");
        expect(decode(with([](auto &c) { c.scale = -1; })), VASHISTA_ERROR_INVALID_ARGUMENT, "config->scale");
        expect(decode(with([](auto &c) { c.top_pages = 63; })), VASHISTA_ERROR_NO_VARIANT, "compiled variants:");
        expect(decode(with([](auto &c) { c.solver = VASHISTA_SOLVER_FW; })), VASHISTA_ERROR_INVALID_ARGUMENT,
               "computes softmax, not fw; use policy none");
        expect(decode(with([](auto &c) {
                   c.solver = VASHISTA_SOLVER_SPARSEMAX;
                   c.policy = VASHISTA_POLICY_WIDEN;
               })),
               VASHISTA_ERROR_INVALID_ARGUMENT, "not sparsemax");
        expect(decode(with([](auto &c) {
                   c.solver = VASHISTA_SOLVER_FW;
                   c.policy = VASHISTA_POLICY_NONE;
               })),
               VASHISTA_ERROR_NO_VARIANT, "no decode kernel");
        expect(decode(with([](auto &c) {
                   c.sink_pages = 40;
                   c.local_pages = 30;
               })),
               VASHISTA_ERROR_INVALID_ARGUMENT, "together at most top_pages = 64");
        expect(decode(with([](auto &c) { c.local_pages = -1; })), VASHISTA_ERROR_INVALID_ARGUMENT, "local_pages = -1");
    }
    SECTION("dense arguments") {
        expect(vashista_dense(f.cache, q.data(), QH, lens.data(), -1.0f, out.data(), lse.data()),
               VASHISTA_ERROR_INVALID_ARGUMENT, "scale = -1");
        expect(vashista_dense(f.cache, nullptr, QH, lens.data(), 0.0f, out.data(), lse.data()),
               VASHISTA_ERROR_NULL_POINTER, "q is NULL");
    }
    SECTION("NaN written into the pages outside append is caught") {
        // Corrupt every key of sequence 0: its scores turn NaN and reach the output.
        for (int j = 0; j * S < 100; ++j) {
            const int page = f.p.seqs.page_table[j];
            for (int t = 0; t < S; ++t)
                for (int h = 0; h < H; ++h) {
                    const uint16_t nan = 0x7fc0;
                    std::memcpy(&f.k_pages[f.p.cache.offset(page, t, h, 0) * 2], &nan, 2);
                }
        }
        expect(decode(ok), VASHISTA_ERROR_NON_FINITE, "written outside vashista_append");
    }
}

TEST_CASE("bad appends get a clear error and write nothing", "[runtime][validation]") {
    Fixture f(4, {100, 50});
    const std::vector<uint8_t> k_before = f.k_pages, v_before = f.v_pages;
    auto k = f.tokens(f.p.cache.k, 1, 50, 3), v = f.tokens(f.p.cache.v, 1, 50, 3);
    auto expect = [&](vashista_status got, vashista_status want, const char *fragment) {
        INFO("message: " << vashista_last_error());
        REQUIRE(got == want);
        REQUIRE_THAT(vashista_last_error(), Catch::Contains(fragment));
        REQUIRE(f.k_pages == k_before);
        REQUIRE(f.v_pages == v_before);
        REQUIRE(vashista_appended_tokens(f.cache, 1) == 50);
    };
    expect(vashista_append(nullptr, 1, 50, 3, k.data(), v.data()), VASHISTA_ERROR_NULL_POINTER, "cache is NULL");
    expect(vashista_append(f.cache, 1, 50, 3, nullptr, v.data()), VASHISTA_ERROR_NULL_POINTER, "k is NULL");
    expect(vashista_append(f.cache, 1, 50, 3, k.data(), nullptr), VASHISTA_ERROR_NULL_POINTER, "v is NULL");
    expect(vashista_append(f.cache, 2, 50, 3, k.data(), v.data()), VASHISTA_ERROR_INVALID_ARGUMENT,
           "seq = 2 is not in [0, batch = 2)");
    expect(vashista_append(f.cache, 1, 50, 0, k.data(), v.data()), VASHISTA_ERROR_INVALID_ARGUMENT, "count = 0");
    expect(vashista_append(f.cache, 1, 51, 3, k.data(), v.data()), VASHISTA_ERROR_INVALID_ARGUMENT,
           "start = 51 is not in [0, tokens appended = 50]");
    expect(vashista_append(f.cache, 1, 50, f.p.seqs.max_pages * S, k.data(), v.data()), VASHISTA_ERROR_OUT_OF_RANGE,
           "exceeds max_pages * page_size");
    const int32_t saved = f.p.seqs.page_table[f.p.seqs.max_pages + 3];
    f.p.seqs.page_table[f.p.seqs.max_pages + 3] = 9001;
    expect(vashista_append(f.cache, 1, 50, 3, k.data(), v.data()), VASHISTA_ERROR_OUT_OF_RANGE,
           "page_table[1][3] = 9001");
    f.p.seqs.page_table[f.p.seqs.max_pages + 3] = saved;
    k[2 * D + 7] = 0x7f80;  // bf16 +Inf at token 0, head 2? (token 1, head 0, d 7 for H=2)
    expect(vashista_append(f.cache, 1, 50, 3, k.data(), v.data()), VASHISTA_ERROR_NON_FINITE,
           "k[1][0][7] is not finite");
    k[2 * D + 7] = 0;
    v[0] = 0xffc1;  // bf16 NaN
    expect(vashista_append(f.cache, 1, 50, 3, k.data(), v.data()), VASHISTA_ERROR_NON_FINITE,
           "v[0][0][0] is not finite");
}

TEST_CASE("bad cache descriptions get a clear error", "[runtime][validation]") {
    Fixture f(4, {40});
    vashista_cache *c = reinterpret_cast<vashista_cache *>(0x1);
    auto expect = [&](vashista_cache_desc d, vashista_status want, const char *fragment) {
        c = reinterpret_cast<vashista_cache *>(0x1);
        INFO("message: " << vashista_last_error());
        REQUIRE(vashista_cache_create(&d, &c) == want);
        REQUIRE_THAT(vashista_last_error(), Catch::Contains(fragment));
        REQUIRE(c == nullptr);
    };
    auto with = [&](auto change) {
        vashista_cache_desc d = f.describe();
        change(d);
        return d;
    };
    REQUIRE(vashista_cache_create(nullptr, &c) == VASHISTA_ERROR_NULL_POINTER);
    expect(with([](auto &d) { d.k_pages = nullptr; }), VASHISTA_ERROR_NULL_POINTER, "desc->k_pages is NULL");
    expect(with([](auto &d) { d.v_pages = nullptr; }), VASHISTA_ERROR_NULL_POINTER, "desc->v_pages is NULL");
    expect(with([](auto &d) { d.page_table = nullptr; }), VASHISTA_ERROR_NULL_POINTER, "desc->page_table is NULL");
    expect(with([](auto &d) { d.batch = 0; }), VASHISTA_ERROR_INVALID_ARGUMENT, "desc->batch = 0");
    expect(with([](auto &d) { d.num_pages = -4; }), VASHISTA_ERROR_INVALID_ARGUMENT, "desc->num_pages = -4");
    expect(with([](auto &d) { store_raw(d.kv_dtype, 8); }), VASHISTA_ERROR_INVALID_ARGUMENT, "desc->kv_dtype = 8");
    expect(with([](auto &d) { store_raw(d.summary_dtype, -1); }), VASHISTA_ERROR_INVALID_ARGUMENT,
           "desc->summary_dtype = -1");
    expect(with([](auto &d) { d.kv_dtype = VASHISTA_DTYPE_I8; }), VASHISTA_ERROR_INVALID_ARGUMENT,
           "desc->kv_dtype = 3 is not a vashista_dtype of elements (F32 0, F16 1, BF16 2; I8 3 is for summaries)");
    expect(with([](auto &d) { d.summary_dtype = VASHISTA_DTYPE_I8, d.head_dim = 72; }), VASHISTA_ERROR_INVALID_ARGUMENT,
           "int8 summaries need head_dim a multiple of 16 (head_dim = 72)");
    expect(with([](auto &d) { store_raw(d.layout, 2); }), VASHISTA_ERROR_INVALID_ARGUMENT, "desc->layout = 2");
    expect(with([](auto &d) { d.head_dim = 64; }), VASHISTA_ERROR_NO_VARIANT, "no summarize kernel for head_dim=64");
    expect(with([](auto &d) { d.sketch_bits = 5; }), VASHISTA_ERROR_INVALID_ARGUMENT, "desc->sketch_bits = 5");
    expect(with([](auto &d) { d.sketch_bits = 8, d.sketch_group = 48; }), VASHISTA_ERROR_INVALID_ARGUMENT,
           "desc->sketch_group = 48 does not divide head_dim = 128");
    expect(with([](auto &d) { d.sketch_bits = 8, d.sketch_group = 1; }), VASHISTA_ERROR_INVALID_ARGUMENT,
           "desc->sketch_group = 1 is not an even number of channels up to 256");
    expect(with([](auto &d) { d.sketch_bits = 4, d.sketch_group = 16; }), VASHISTA_ERROR_NO_VARIANT,
           "no sketch kernel for head_dim=128");
    expect(with([](auto &d) { d.super_pages = -2; }), VASHISTA_ERROR_INVALID_ARGUMENT, "desc->super_pages = -2");
    char list[4096];
    REQUIRE(vashista_list_variants(list, sizeof(list)) > 0);
    REQUIRE_THAT(std::string(list), Catch::Contains("decode ") && Catch::Contains("routing=bound"));
}

TEST_CASE("widen: a head that fails at P=64, K_c=128 passes at 128/256 and one that fails both goes dense",
          "[runtime]") {
    // One 8K sequence. KV head 0's query heads attend to 200 equal needles on 100 pages
    // (too many for K_c = 128, all inside P = 128, K_c = 256); KV head 1's to 600 needles
    // on 300 pages (too many for both). Background keys are small.
    const int T = 8192;
    const double scale = ref::default_scale(D), a = std::sqrt(30.0 / scale);  // needle score 30
    Fixture f(4, {T}, ref::DataKind::Gaussian, KvLayout::HND, [&](ref::Problem &p) {
        std::mt19937 rng(17);
        std::normal_distribution<float> n(0, 1);
        for (float &x : p.cache.k) x = ref::round_to(ref::DType::BF16, 0.05f * x);
        for (int h = 0; h < H; ++h) {
            std::vector<double> e(D);
            double n2 = 0;
            for (double &x : e) {
                x = n(rng);
                n2 += x * x;
            }
            for (double &x : e) x /= std::sqrt(n2);
            for (int g = 0; g < 4; ++g)
                for (int d = 0; d < D; ++d) p.q.q[(size_t(h) * 4 + g) * D + d] = float(a * e[d]);
            const int pages = h == 0 ? 100 : 300, stride = h == 0 ? 2 : 1;
            for (int j = 0; j < pages; ++j)
                for (int t : {j * stride * S + 3, j * stride * S + 9})
                    for (int d = 0; d < D; ++d)
                        p.cache.k[p.cache.offset(p.seqs.page_of(0, t, S), t % S, h, d)] =
                            ref::round_to(ref::DType::BF16, float(a * e[d]));
        }
    });
    vashista_decode_config cfg = default_config();
    cfg.policy = VASHISTA_POLICY_WIDEN;
    cfg.tolerance = 1e-3f;
    std::vector<float> out(size_t(8) * D);
    std::vector<vashista_head_diag> diag(8);
    REQUIRE(vashista_decode(f.cache, &cfg, f.p.q.q.data(), 8, f.p.seqs.seq_lens.data(), out.data(), nullptr,
                            diag.data()) == VASHISTA_OK);
    ref::Summaries sum = ref::summarize(f.p.cache, f.p.seqs, ref::DType::BF16);
    vashista_decode_config widened = cfg;
    widened.top_pages = 128;
    widened.top_tokens = 256;
    const ref::SparseOptions wide = options_of(widened);
    for (int i = 0; i < 8; ++i) {
        INFO("query head " << i << " bound " << diag[i].error_bound);
        const int h = i / 4, g = i % 4;
        CHECK(diag[i].certificate == VASHISTA_CERTIFIED);
        if (h == 0) {
            REQUIRE(diag[i].policy_taken == VASHISTA_TAKEN_WIDENED);
            CHECK(diag[i].error_bound <= 1e-3f);
            CHECK(diag[i].candidates == 256);
            ref::HeadResult r = ref::sparse_head(f.p.cache, f.p.seqs, f.p.q, sum, wide, 0, h, g);
            for (int d = 0; d < D; ++d) REQUIRE(out[size_t(i) * D + d] == Approx(r.out[d]).margin(1e-4));
        } else {
            REQUIRE(diag[i].policy_taken == VASHISTA_TAKEN_DENSE);
            ref::DenseResult r = ref::dense_head(f.p.cache, f.p.seqs, f.p.q, 0.0, 0, h, g);
            for (int d = 0; d < D; ++d) REQUIRE(out[size_t(i) * D + d] == Approx(r.out[d]).margin(1e-4));
        }
    }
}

// Anonymous memory the kernel maps on first touch: a large page pool costs only the pages used.
struct LazyMemory {
    void *data;
    size_t bytes;
    explicit LazyMemory(size_t n)
        : data(mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)), bytes(n) {
        REQUIRE(data != MAP_FAILED);
    }
    ~LazyMemory() { munmap(data, bytes); }
};

TEST_CASE("a cache whose K/V pages pass 2 GiB decodes and one too large to address is an error", "[runtime]") {
    SECTION("3.3 GB of bf16 K and of V, the sequence in the last pages") {
        // 1.6e9 elements each, below 2^31 - 1, at byte offsets past 2^31; the summaries
        // (per physical page) hold 0.6 GB, of which the 8 pages in use are written.
        const int KVH = 8, num_pages = 100000, max_pages = 16, len = 100;
        std::vector<int32_t> table(max_pages, num_pages - 1);
        for (int j = 0; j < 8; ++j) table[j] = num_pages - 8 + j;
        const size_t bytes = size_t(num_pages) * KVH * S * D * 2;
        LazyMemory k_pages(bytes), v_pages(bytes);
        vashista_cache_desc desc{sizeof(vashista_cache_desc),
                                 1,
                                 KVH,
                                 D,
                                 S,
                                 num_pages,
                                 max_pages,
                                 VASHISTA_DTYPE_BF16,
                                 VASHISTA_DTYPE_BF16,
                                 VASHISTA_LAYOUT_HND,
                                 k_pages.data,
                                 v_pages.data,
                                 table.data(),
                                 0,
                                 0,
                                 0};
        vashista_cache *cache = nullptr;
        INFO(vashista_last_error());
        REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_OK);
        std::mt19937 rng(3);
        std::normal_distribution<float> n(0, 1);
        std::vector<uint16_t> k(size_t(len) * KVH * D), v(k.size());
        for (auto *x : {&k, &v})
            for (uint16_t &e : *x) e = ref::to_bits16(ref::DType::BF16, n(rng));
        REQUIRE(vashista_append(cache, 0, 0, len, k.data(), v.data()) == VASHISTA_OK);
        std::vector<float> q(size_t(32) * D), sparse(q.size());
        for (float &x : q) x = n(rng);
        const int32_t lens[] = {len};
        vashista_decode_config cfg = default_config();
        std::vector<vashista_head_diag> diag(32);
        const vashista_status decoded =
            vashista_decode(cache, &cfg, q.data(), 32, lens, sparse.data(), nullptr, diag.data());
        INFO(vashista_last_error());
        REQUIRE(decoded == VASHISTA_OK);
        // K_c = 128 covers all 100 tokens: the answer is softmax attention over them.
        for (int qh = 0; qh < 32; ++qh) {
            const int h = qh / 4;
            auto element = [&](const std::vector<uint16_t> &x, int t, int d) {
                return double(ref::from_bits16(ref::DType::BF16, x[(size_t(t) * KVH + h) * D + d]));
            };
            std::vector<double> s(len), o(D, 0.0);
            for (int t = 0; t < len; ++t) {
                for (int d = 0; d < D; ++d) s[t] += q[size_t(qh) * D + d] * element(k, t, d);
                s[t] *= ref::default_scale(D);
            }
            const double m = *std::max_element(s.begin(), s.end());
            double z = 0;
            for (double &x : s) z += (x = std::exp(x - m));
            for (int t = 0; t < len; ++t)
                for (int d = 0; d < D; ++d) o[d] += s[t] / z * element(v, t, d);
            for (int d = 0; d < D; ++d) REQUIRE(sparse[size_t(qh) * D + d] == Approx(o[d]).margin(1e-4));
            REQUIRE(diag[qh].policy_taken == VASHISTA_TAKEN_SPARSE);
            REQUIRE(diag[qh].certificate == VASHISTA_CERTIFIED);
        }
        vashista_cache_destroy(cache);
    }
    SECTION("past 2^31 - 1 elements: the kernels cannot address it without large_buffers") {
        int32_t table[1] = {0};
        uint16_t pages[16] = {};
        vashista_cache_desc desc{
            sizeof(vashista_cache_desc), 1,     8,     D,     S, 200000, 1, VASHISTA_DTYPE_BF16, VASHISTA_DTYPE_BF16,
            VASHISTA_LAYOUT_HND,         pages, pages, table, 0, 0,      0};
        vashista_cache *cache = reinterpret_cast<vashista_cache *>(0x1);
        REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_ERROR_OUT_OF_RANGE);
        REQUIRE(cache == nullptr);
        REQUIRE_THAT(vashista_last_error(), Catch::Contains("K/V pages") && Catch::Contains("large_buffers"));
    }
    SECTION("sizes whose product overflows 64 bits") {
        int32_t table[1] = {0};
        uint16_t pages[16] = {};
        vashista_cache_desc desc{sizeof(vashista_cache_desc),
                                 1,
                                 INT32_MAX,
                                 D,
                                 S,
                                 INT32_MAX,
                                 1,
                                 VASHISTA_DTYPE_BF16,
                                 VASHISTA_DTYPE_BF16,
                                 VASHISTA_LAYOUT_HND,
                                 pages,
                                 pages,
                                 table,
                                 0,
                                 0,
                                 0};
        vashista_cache *cache = reinterpret_cast<vashista_cache *>(0x1);
        REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_ERROR_OUT_OF_RANGE);
        REQUIRE(cache == nullptr);
        REQUIRE_THAT(vashista_last_error(), Catch::Contains("more than 2^63 elements"));
    }
}
