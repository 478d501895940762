// The certificate through the linked library (C ABI, AOT kernels of
// vashista_certificate_kernels, tests/CMakeLists.txt) at the shapes engines run.
//
// Soundness: for every head the library calls certified, the distance from its output to
// the float64 dense answer over all tokens (softmax; eg at its temperature N * eta) is at
// most its bound plus a slack for the rounding of this check: 1e-6 + 1e-5 * ||o_dense||,
// which does not grow with V_out. An uncertified head must report an infinite bound.
// sparsemax: a certified head's output is within its bound (the f32 rounding of the
// computed output; 0 in exact arithmetic) of sparsemax over all tokens. The families
// include inputs built to break the bound (near and exact ties, no gap, huge score
// ranges, one dominant key channel, dominant values).
#include "problem.h"
#include "support/abi_fixture.h"
#include "vashista.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

using namespace vashista;

namespace {

constexpr int H = 2, S = 16, P = 8, KC = 32;

// The decode variants of vashista_certificate_kernels.
struct Variant {
    int head_dim, group;
    ref::DType kv;
    KvLayout layout;
    GroupRouting group_routing;
    Solver solver;
    int sink, local;
    int sketch_bits = 0;  // 0: bound routing; 8 or 4: sketch routing, scales per 16 channels
    ref::DType summary = ref::DType::BF16;
    int super_pages = 0, super_expand = 0;  // R > 0: hier_bound routing, R pages per super-page, Q expanded
};
const Variant kVariants[] = {
    {128, 4, ref::DType::BF16, KvLayout::HND, GroupRouting::PerHead, Solver::Softmax, 0, 0},
    {128, 8, ref::DType::BF16, KvLayout::NHD, GroupRouting::Shared, Solver::Softmax, 1, 1},
    {128, 1, ref::DType::F32, KvLayout::HND, GroupRouting::PerHead, Solver::Softmax, 0, 0},
    {128, 4, ref::DType::F16, KvLayout::NHD, GroupRouting::PerHead, Solver::EG, 1, 2},
    {64, 3, ref::DType::BF16, KvLayout::HND, GroupRouting::PerHead, Solver::Softmax, 1, 1},
    {64, 3, ref::DType::F32, KvLayout::NHD, GroupRouting::Shared, Solver::EG, 0, 0},
    {64, 8, ref::DType::F16, KvLayout::HND, GroupRouting::Shared, Solver::Softmax, 0, 0},
    {64, 1, ref::DType::BF16, KvLayout::NHD, GroupRouting::PerHead, Solver::EG, 0, 0},
    {128, 4, ref::DType::BF16, KvLayout::HND, GroupRouting::PerHead, Solver::Sparsemax, 0, 0},
    {64, 3, ref::DType::F32, KvLayout::HND, GroupRouting::PerHead, Solver::Sparsemax, 0, 0},
    {128, 4, ref::DType::BF16, KvLayout::HND, GroupRouting::PerHead, Solver::Softmax, 1, 2, 8},
    {64, 3, ref::DType::F16, KvLayout::HND, GroupRouting::Shared, Solver::EG, 0, 0, 4},
    {128, 4, ref::DType::BF16, KvLayout::HND, GroupRouting::PerHead, Solver::Softmax, 1, 2, 0, ref::DType::I8},
    {64, 3, ref::DType::F32, KvLayout::NHD, GroupRouting::Shared, Solver::EG, 0, 0, 0, ref::DType::I8},
    {128, 4, ref::DType::BF16, KvLayout::HND, GroupRouting::PerHead, Solver::Softmax, 1, 2, 0, ref::DType::BF16, 4, 2},
    {64, 3, ref::DType::F32, KvLayout::NHD, GroupRouting::Shared, Solver::EG, 0, 0, 0, ref::DType::I8, 2, 3},
};

std::string describe(const Variant &v) {
    return "D=" + std::to_string(v.head_dim) + " G=" + std::to_string(v.group) + " " + to_string(v.kv) + " " +
           to_string(v.layout) + " " + to_string(v.group_routing) + " " + to_string(v.solver) +
           " sink=" + std::to_string(v.sink) + " local=" + std::to_string(v.local) +
           (v.sketch_bits   ? " sketch " + std::to_string(v.sketch_bits) + "-bit"
            : v.super_pages ? " hier_bound R=" + std::to_string(v.super_pages) + " Q=" + std::to_string(v.super_expand)
                            : std::string(" bound")) +
           " " + to_string(v.summary) + " summaries";
}

vashista_dtype abi_dtype(ref::DType t) { return vashista_dtype(int(t)); }  // numbered alike (method_types.h)

// A reference problem held by the library: pages in the KV dtype, appended through the ABI.
struct AbiCache {
    ref::Problem p;
    std::vector<uint8_t> k_pages, v_pages;
    vashista_cache *cache = nullptr;

    explicit AbiCache(ref::Problem problem, int sketch_bits = 0, ref::DType summary = ref::DType::BF16,
                      int super_pages = 0)
        : p(std::move(problem)) {
        const int bytes = dtype_bytes(p.cache.dtype);
        k_pages.assign(p.cache.k.size() * bytes, 0);
        v_pages.assign(p.cache.v.size() * bytes, 0);
        vashista_cache_desc desc{sizeof(vashista_cache_desc),
                                 p.seqs.batch,
                                 p.cache.kv_heads,
                                 p.cache.head_dim,
                                 S,
                                 p.cache.num_pages,
                                 p.seqs.max_pages,
                                 abi_dtype(p.cache.dtype),
                                 abi_dtype(summary),
                                 p.cache.layout == KvLayout::HND ? VASHISTA_LAYOUT_HND : VASHISTA_LAYOUT_NHD,
                                 k_pages.data(),
                                 v_pages.data(),
                                 p.seqs.page_table.data(),
                                 sketch_bits,
                                 sketch_bits ? kSketchGroupDefault : 0,
                                 super_pages};
        REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_OK);
        for (int b = 0; b < p.seqs.batch; ++b) append(b, 0, p.seqs.seq_lens[b]);
    }
    ~AbiCache() { vashista_cache_destroy(cache); }
    AbiCache(const AbiCache &) = delete;
    AbiCache &operator=(const AbiCache &) = delete;

    void append(int b, int start, int n) {
        auto k = ref::token_bytes(p.cache, p.seqs, p.cache.k, b, start, n);
        auto v = ref::token_bytes(p.cache, p.seqs, p.cache.v, b, start, n);
        INFO(vashista_last_error());
        REQUIRE(vashista_append(cache, b, start, n, k.data(), v.data()) == VASHISTA_OK);
    }
};

vashista_decode_config config_for(const Variant &v, vashista_policy policy) {
    vashista_decode_config c;
    vashista_decode_config_default(&c);
    c.top_pages = P;
    c.top_tokens = KC;
    c.solver = v.solver == Solver::EG          ? VASHISTA_SOLVER_EG
               : v.solver == Solver::Sparsemax ? VASHISTA_SOLVER_SPARSEMAX
                                               : VASHISTA_SOLVER_SOFTMAX;
    c.group_routing = v.group_routing == GroupRouting::Shared ? VASHISTA_GROUP_SHARED : VASHISTA_GROUP_PER_HEAD;
    c.sink_pages = v.sink;
    c.local_pages = v.local;
    c.routing = v.sketch_bits   ? VASHISTA_ROUTING_SKETCH
                : v.super_pages ? VASHISTA_ROUTING_HIER_BOUND
                                : VASHISTA_ROUTING_BOUND;
    if (v.super_pages) c.super_expand = v.super_expand;
    c.policy = policy;
    return c;
}

struct Step {
    std::vector<float> out, lse;
    std::vector<vashista_head_diag> diag;
};

Step decode(AbiCache &c, const vashista_decode_config &cfg) {
    const int n = c.p.seqs.batch * c.p.q.kv_heads * c.p.q.group;
    Step s{std::vector<float>(size_t(n) * c.p.cache.head_dim), std::vector<float>(n),
           std::vector<vashista_head_diag>(n)};
    const vashista_status st = vashista_decode(c.cache, &cfg, c.p.q.q.data(), c.p.q.kv_heads * c.p.q.group,
                                               c.p.seqs.seq_lens.data(), s.out.data(), s.lse.data(), s.diag.data());
    INFO(vashista_last_error());
    REQUIRE(st == VASHISTA_OK);
    return s;
}

enum class Family { Gaussian, Clustered, Planted, NearTies, ExactTies, NoGap, HugeRange, OneHotChannel, DominantValue };
const Family kFamilies[] = {Family::Gaussian,  Family::Clustered,     Family::Planted,
                            Family::NearTies,  Family::ExactTies,     Family::NoGap,
                            Family::HugeRange, Family::OneHotChannel, Family::DominantValue};
const char *name(Family f) {
    switch (f) {
        case Family::Gaussian:
            return "gaussian";
        case Family::Clustered:
            return "clustered";
        case Family::Planted:
            return "planted-needle";
        case Family::NearTies:
            return "near-ties";
        case Family::ExactTies:
            return "exact-ties";
        case Family::NoGap:
            return "no-gap";
        case Family::HugeRange:
            return "huge-range";
        case Family::OneHotChannel:
            return "one-hot-channel";
        case Family::DominantValue:
            return "dominant-value";
    }
    return "?";
}

// A batch of sequences from 1 token to 8K, with the family's structure, in the variant's dtype.
ref::Problem make(Family f, const Variant &v, uint64_t seed, int batch) {
    std::mt19937_64 rng(seed);
    ref::ProblemSpec spec;
    spec.kv_heads = H;
    spec.group = v.group;
    spec.head_dim = v.head_dim;
    spec.page_size = S;
    spec.layout = v.layout;
    spec.dtype = v.kv;
    spec.seed = seed;
    spec.kind = f == Family::Planted     ? ref::DataKind::Planted
                : f == Family::ExactTies ? ref::DataKind::Dyadic
                                         : ref::DataKind::Gaussian;
    spec.needle_score = 4 + double(seed % 9);
    std::uniform_int_distribution<int> short_len(1, 400);
    spec.seq_lens.resize(batch);
    for (int &l : spec.seq_lens) l = short_len(rng);
    if (seed % 8 == 0) spec.seq_lens[0] = 8192;
    if (seed % 8 == 1) spec.seq_lens[0] = 1;
    ref::Problem p = ref::make_problem(spec);
    const int D = v.head_dim;
    std::normal_distribution<float> n(0, 1);
    auto &k = p.cache.k, &val = p.cache.v;
    switch (f) {
        case Family::Clustered: {  // keys near a few centres
            std::vector<float> centres(4 * D);
            for (float &x : centres) x = 2 * n(rng);
            for (size_t t = 0; t < k.size() / D; ++t)
                for (int d = 0; d < D; ++d) k[t * D + d] = centres[(t % 4) * D + d] + 0.05f * n(rng);
            break;
        }
        case Family::NearTies:  // every key a common vector plus a little noise: near-equal scores
            for (size_t i = 0; i < k.size(); ++i) k[i] = k[i % D] + 1e-3f * n(rng);
            break;
        case Family::NoGap:  // every key the same: the dense regime, Δ = 0
            for (size_t i = 0; i < k.size(); ++i) k[i] = k[i % D];
            break;
        case Family::HugeRange:  // scores spread over hundreds
            for (float &x : p.q.q) x *= 40.0f;
            break;
        case Family::OneHotChannel:  // one key channel and one query component dominate the scores
            for (size_t t = 0; t < k.size() / D; ++t) k[t * D] = 60.0f * n(rng);
            for (size_t r = 0; r < p.q.q.size() / D; ++r) p.q.q[r * D] = 30.0f;
            break;
        case Family::DominantValue:  // a few value vectors 1000x the rest
            for (size_t i = 0; i < val.size(); i += size_t(D) * 37) val[i] = 1000.0f;
            break;
        default:
            break;
    }
    for (float &x : k) x = ref::round_to(v.kv, x);
    for (float &x : val) x = ref::round_to(v.kv, x);
    return p;
}

double norm(const std::vector<double> &x) {
    double s = 0;
    for (double e : x) s += e * e;
    return std::sqrt(s);
}

struct Tally {
    long heads = 0, certified = 0, violations = 0, finite_uncertified = 0, within_1e3 = 0;
    std::vector<double> tightness;  // bound / true error, where the error is above the slack
    std::string worst;
    double worst_ratio = 0;
};

double percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[size_t(q * (v.size() - 1))];
}

}  // namespace

TEST_CASE("the certificate holds through the library on 10^5 heads at engine shapes", "[certificate]") {
    std::map<std::string, Tally> by_family;
    Tally sparsemax_total;
    std::map<std::string, Tally> sparsemax_by_family;
    long softmax_heads = 0;
    uint64_t seed = 1;
    for (int round = 0; softmax_heads < 100000; ++round) {
        for (const Variant &v : kVariants) {
            for (Family f : kFamilies) {
                const int batch = v.head_dim == 128 ? 8 : 12;
                AbiCache c(make(f, v, seed++, batch), v.sketch_bits, v.summary, v.super_pages);
                Step s = decode(c, config_for(v, VASHISTA_POLICY_NONE));
                const double scale = ref::default_scale(v.head_dim);
                ref::SparseOptions opt;
                opt.solver = v.solver;
                const double beta = ref::solver_temperature(opt);
                for (int b = 0; b < batch; ++b)
                    for (int h = 0; h < H; ++h)
                        for (int g = 0; g < v.group; ++g) {
                            const size_t i = (size_t(b) * H + h) * v.group + g;
                            const vashista_head_diag &dg = s.diag[i];
                            ref::DenseResult d =
                                v.solver == Solver::Sparsemax
                                    ? ref::dense_sparsemax_head(c.p.cache, c.p.seqs, c.p.q, scale, 1.0, b, h, g)
                                    : ref::dense_head(c.p.cache, c.p.seqs, c.p.q, scale, b, h, g, beta);
                            double err2 = 0;
                            for (int x = 0; x < v.head_dim; ++x)
                                err2 += std::pow(double(s.out[i * v.head_dim + x]) - d.out[x], 2);
                            const double err = std::sqrt(err2), slack = 1e-6 + 1e-5 * norm(d.out);
                            Tally &t =
                                v.solver == Solver::Sparsemax ? sparsemax_by_family[name(f)] : by_family[name(f)];
                            ++t.heads;
                            if (v.solver != Solver::Sparsemax) ++softmax_heads;
                            if (dg.certificate != VASHISTA_CERTIFIED) {
                                if (!std::isinf(dg.error_bound)) ++t.finite_uncertified;
                                continue;
                            }
                            ++t.certified;
                            if (dg.error_bound <= 1e-3f) ++t.within_1e3;
                            if (!(err <= dg.error_bound + slack)) {
                                ++t.violations;
                                const double ratio = err / (dg.error_bound + slack);
                                if (!(ratio <= t.worst_ratio)) {
                                    t.worst_ratio = ratio;
                                    t.worst = describe(v) + " T=" + std::to_string(c.p.seqs.seq_lens[b]) + ": error " +
                                              std::to_string(err) + " > bound " + std::to_string(dg.error_bound);
                                }
                            }
                            if (err > slack) t.tightness.push_back(dg.error_bound / err);
                        }
            }
        }
    }
    long heads = 0, violations = 0;
    std::printf("certificate through the library (slack 1e-6 + 1e-5 ||o||):\n");
    std::printf("  %-16s %7s %9s %11s %10s   bound/error (error above slack): %6s %7s %7s %7s\n", "family", "heads",
                "certified", "bound<=1e-3", "violations", "heads", "p10", "median", "p90");
    for (auto &[family, t] : by_family) {
        std::printf("  %-16s %7ld %9ld %11ld %10ld                                    %6zu %7.3g %7.3g %7.3g\n",
                    family.c_str(), t.heads, t.certified, t.within_1e3, t.violations, t.tightness.size(),
                    percentile(t.tightness, 0.1), percentile(t.tightness, 0.5), percentile(t.tightness, 0.9));
        heads += t.heads;
        violations += t.violations;
        INFO(family << ": " << t.worst);
        CHECK(t.violations == 0);
        CHECK(t.finite_uncertified == 0);
    }
    std::printf("sparsemax exact certificate (certified: sparsemax over C is sparsemax over all tokens):\n");
    for (auto &[family, t] : sparsemax_by_family) {
        std::printf("  %-16s %7ld heads, certified %6ld (%.1f%%), violations %ld\n", family.c_str(), t.heads,
                    t.certified, 100.0 * t.certified / std::max(1L, t.heads), t.violations);
        INFO("sparsemax " << family << ": " << t.worst);
        CHECK(t.violations == 0);
        CHECK(t.finite_uncertified == 0);
        sparsemax_total.certified += t.certified;
    }
    std::printf("  %ld softmax/eg heads, %ld violations\n", heads, violations);
    CHECK(heads >= 100000);
    CHECK(sparsemax_total.certified > 100);  // the exact certificate does fire
    // The families must exercise the bound: many certified heads with a real error.
    size_t nontrivial = 0;
    for (auto &[family, t] : by_family) nontrivial += t.tightness.size();
    CHECK(nontrivial > 10000);
}

namespace {

// Every head certified by the library is within its bound of float64 dense softmax.
// Returns the number of certified heads.
int check_certified(AbiCache &c, const Step &s, double beta = 1) {
    int certified = 0;
    const int D = c.p.cache.head_dim;
    for (int b = 0; b < c.p.seqs.batch; ++b)
        for (int h = 0; h < c.p.q.kv_heads; ++h)
            for (int g = 0; g < c.p.q.group; ++g) {
                const size_t i = (size_t(b) * c.p.q.kv_heads + h) * c.p.q.group + g;
                if (s.diag[i].certificate != VASHISTA_CERTIFIED) {
                    REQUIRE(std::isinf(s.diag[i].error_bound));
                    continue;
                }
                ++certified;
                ref::DenseResult d = ref::dense_head(c.p.cache, c.p.seqs, c.p.q, ref::default_scale(D), b, h, g, beta);
                double err2 = 0;
                for (int x = 0; x < D; ++x) err2 += std::pow(double(s.out[i * D + x]) - d.out[x], 2);
                INFO("sequence " << b << " head " << h * c.p.q.group + g);
                REQUIRE(std::sqrt(err2) <= s.diag[i].error_bound + 1e-6 + 1e-5 * norm(d.out));
            }
    return certified;
}

ref::Problem small_problem(const Variant &v, std::vector<int> lens, uint64_t seed = 5) {
    ref::ProblemSpec spec;
    spec.kv_heads = H;
    spec.group = v.group;
    spec.head_dim = v.head_dim;
    spec.layout = v.layout;
    spec.dtype = v.kv;
    spec.seq_lens = std::move(lens);
    spec.seed = seed;
    return ref::make_problem(spec);
}

}  // namespace

TEST_CASE("f32 keys with bf16 summaries: the stored box still contains every key", "[certificate]") {
    // Every key 256.9375: bf16's nearest value is 256, below it. A box rounded to nearest
    // puts every page's bound 10.6 below its true scores, so the bound came out tiny while
    // the answer (the mean of the candidates' values against the mean of all) was far off.
    const Variant &v = kVariants[2];  // D=128, f32 KV, bf16 summaries
    ref::Problem p = small_problem(v, {600, 300});
    for (float &x : p.cache.k) x = 256.9375f;
    for (float &x : p.q.q) x = 1.0f;
    AbiCache c(std::move(p));
    Step s = decode(c, config_for(v, VASHISTA_POLICY_NONE));
    REQUIRE(check_certified(c, s) == int(s.diag.size()));
    for (const auto &d : s.diag) CHECK(d.error_bound > 0.1f);  // no gap: the bound says so
}

TEST_CASE("summaries follow physical pages: a page summarized over fewer tokens than a sequence holds is stale",
          "[certificate]") {
    const Variant &v = kVariants[0];
    AbiCache c(small_problem(v, {300, 200}));  // sequence 0: 18 full pages and 12 tokens; 1: 12 and 8
    auto &pt = c.p.seqs.page_table;
    const int MP = c.p.seqs.max_pages;
    auto certs = [&](const Step &s, int b, int32_t taken, int32_t cert) {  // taken -1: either
        for (int i = 0; i < H * v.group; ++i) {
            INFO("sequence " << b << " head " << i);
            CHECK(s.diag[size_t(b) * H * v.group + i].certificate == cert);
            if (taken >= 0) CHECK(s.diag[size_t(b) * H * v.group + i].policy_taken == taken);
        }
    };
    const vashista_decode_config none = config_for(v, VASHISTA_POLICY_NONE);
    SECTION("remapped entries") {
        std::swap(pt[1], pt[2]);  // two full pages trade places: their summaries go with them
        Step s = decode(c, none);
        certs(s, 0, -1, VASHISTA_CERTIFIED);
        REQUIRE(check_certified(c, s) == 2 * H * v.group);
        // Sequence 0's page 1 and sequence 1's last page (8 tokens summarized) trade places.
        std::swap(pt[1], pt[MP + 12]);
        // What the runtime's pages hold there: nothing was appended past the 8 tokens.
        for (int t = 8; t < S; ++t)
            for (int h = 0; h < H; ++h)
                for (int d = 0; d < v.head_dim; ++d)
                    c.p.cache.k[c.p.cache.offset(pt[1], t, h, d)] = c.p.cache.v[c.p.cache.offset(pt[1], t, h, d)] = 0;
        s = decode(c, none);
        certs(s, 0, VASHISTA_TAKEN_REPORTED, VASHISTA_UNCERTIFIED_STALE);
        certs(s, 1, -1, VASHISTA_CERTIFIED);  // 16 summarized, 8 read
        REQUIRE(check_certified(c, s) == H * v.group);
        // Policy dense answers sequence 0 densely over the table as it now is.
        vashista_decode_config cfg = config_for(v, VASHISTA_POLICY_DENSE);
        cfg.tolerance = 1e30f;
        Step dense = decode(c, cfg);
        certs(dense, 0, VASHISTA_TAKEN_DENSE, VASHISTA_UNCERTIFIED_STALE);
        certs(dense, 1, VASHISTA_TAKEN_SPARSE, VASHISTA_CERTIFIED);
        for (int i = 0; i < H * v.group; ++i) {
            ref::DenseResult d = ref::dense_head(c.p.cache, c.p.seqs, c.p.q, 0.0, 0, i / v.group, i % v.group);
            for (int x = 0; x < v.head_dim; ++x)
                REQUIRE(dense.out[size_t(i) * v.head_dim + x] == Approx(d.out[x]).margin(1e-4));
        }
    }
    SECTION("an entry mapped to a page nothing was appended to") {
        pt[MP + 3] = pt[MP - 1];  // a spare page (the problem's unused entries point at it)
        Step s = decode(c, none);
        certs(s, 0, -1, VASHISTA_CERTIFIED);
        certs(s, 1, VASHISTA_TAKEN_REPORTED, VASHISTA_UNCERTIFIED_STALE);
        REQUIRE(check_certified(c, s) == H * v.group);
    }
    SECTION("a page two sequences share has one summary") {
        pt[MP + 0] = pt[0];  // sequence 1's first page becomes sequence 0's (a shared prefix)
        for (int t = 0; t < S; ++t)
            for (int h = 0; h < H; ++h)
                for (int d = 0; d < v.head_dim; ++d)
                    c.p.cache.k[c.p.cache.offset(pt[0], t, h, d)] = ref::round_to(v.kv, 0.5f * float(d % 7) - 1.0f);
        c.append(1, 0, S);  // rewrites the shared page: both sequences read the new summary
        Step s = decode(c, none);
        REQUIRE(check_certified(c, s) == 2 * H * v.group);
        // Sequence 1 cut to half a page: the shared page's summary covers 8 tokens, fewer than
        // sequence 0 holds in it.
        REQUIRE(vashista_truncate(c.cache, 1, S / 2) == VASHISTA_OK);
        c.p.seqs.seq_lens[1] = S / 2;
        s = decode(c, none);
        certs(s, 0, VASHISTA_TAKEN_REPORTED, VASHISTA_UNCERTIFIED_STALE);
        certs(s, 1, -1, VASHISTA_CERTIFIED);
        REQUIRE(check_certified(c, s) == H * v.group);
    }
}

namespace {

// One hier_bound step through the library against the reference over the cache as it now
// is (pages, block table, lengths): exact candidate sets, outputs and lse within 1e-4, the
// bound within 1e-3 relative. `stale`: sequences the library must report stale instead
// (their routing read boxes that may not hold their pages' boxes: nothing else to compare).
void require_hier_matches_reference(AbiCache &c, const Variant &v, const std::vector<int> &stale = {}) {
    const int B = c.p.seqs.batch, G = v.group, QH = H * G, D = v.head_dim;
    const vashista_decode_config cfg = config_for(v, VASHISTA_POLICY_NONE);
    std::vector<float> out(size_t(B) * QH * D), lse(size_t(B) * QH);
    std::vector<vashista_head_diag> diag(size_t(B) * QH);
    std::vector<int32_t> cand(size_t(B) * QH * KC);
    const vashista_status st = vashista_decode_with_candidates(
        c.cache, &cfg, c.p.q.q.data(), QH, c.p.seqs.seq_lens.data(), out.data(), lse.data(), diag.data(), cand.data());
    INFO(vashista_last_error());
    REQUIRE(st == VASHISTA_OK);
    ref::Summaries sum = ref::summarize(c.p.cache, c.p.seqs, v.summary);
    ref::add_super_pages(sum, c.p.seqs, v.super_pages);
    ref::SparseOptions opt = testing::options_of(cfg);
    opt.solver = v.solver;
    opt.super_pages = v.super_pages;
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < G; ++g) {
                INFO("sequence " << b << " (" << c.p.seqs.seq_lens[b] << " tokens) head " << h * G + g);
                const size_t i = (size_t(b) * H + h) * G + g;
                if (std::find(stale.begin(), stale.end(), b) != stale.end()) {
                    REQUIRE(diag[i].certificate == VASHISTA_UNCERTIFIED_STALE);
                    REQUIRE(std::isinf(diag[i].error_bound));
                    continue;
                }
                const ref::HeadResult r = ref::sparse_head(c.p.cache, c.p.seqs, c.p.q, sum, opt, b, h, g);
                REQUIRE(diag[i].candidates == int(r.candidates.size()));
                for (int k = 0; k < KC; ++k)
                    REQUIRE(cand[i * KC + k] == (k < int(r.candidates.size()) ? r.candidates[k] : -1));
                for (int x = 0; x < D; ++x) REQUIRE(out[i * D + x] == Approx(r.out[x]).margin(1e-4));
                REQUIRE(lse[i] == Approx(r.lse).margin(1e-4 * (1 + std::abs(r.lse))));
                REQUIRE(diag[i].certificate == int(r.certificate));
                REQUIRE(diag[i].error_bound == Approx(r.error_bound).epsilon(1e-3).margin(1e-6));
            }
}

}  // namespace

TEST_CASE("hier_bound through the library: super-page boxes follow appends, truncation and shared prefixes",
          "[certificate]") {
    const Variant &v = kVariants[14];  // D=128 G=4 bf16, R=4 Q=2, one sink and two local pages
    REQUIRE(v.super_pages == 4);
    INFO(describe(v));
    AbiCache c(small_problem(v, {700, 300}), 0, v.summary, v.super_pages);
    auto &pt = c.p.seqs.page_table;
    const int MP = c.p.seqs.max_pages;
    require_hier_matches_reference(c, v);
    SECTION("appended a few tokens at a time, then cut back mid-page and at a page boundary") {
        for (int b = 0; b < 2; ++b) {
            REQUIRE(vashista_truncate(c.cache, b, 0) == VASHISTA_OK);
            for (int start = 0; start < c.p.seqs.seq_lens[b];) {
                const int n = std::min(c.p.seqs.seq_lens[b] - start, 1 + (start * 7) % 53);
                c.append(b, start, n);
                start += n;
            }
        }
        require_hier_matches_reference(c, v);
        for (int len : {333, 9 * S, 5}) {  // the last super-page loses pages each time
            INFO("sequence 0 cut to " << len);
            REQUIRE(vashista_truncate(c.cache, 0, len) == VASHISTA_OK);
            c.p.seqs.seq_lens[0] = len;
            require_hier_matches_reference(c, v);
        }
    }
    SECTION("a prefix shared from another sequence, then summarized on") {
        for (int j = 0; j < 6; ++j) pt[MP + j] = pt[j];  // sequence 1's first 6 pages are sequence 0's
        REQUIRE(vashista_share_prefix(c.cache, 1, 6 * S) == VASHISTA_OK);
        REQUIRE(vashista_summarize(c.cache, 1, 6 * S, c.p.seqs.seq_lens[1] - 6 * S) == VASHISTA_OK);
        require_hier_matches_reference(c, v);
    }
    SECTION("an append whose super-page reads an entry mapped out of range: an error, nothing written") {
        const int len = c.p.seqs.seq_lens[0];
        REQUIRE(len % (v.super_pages * S) > S);       // the last super-page holds earlier pages
        pt[(len - 1) / S - 1] = c.p.cache.num_pages;  // an entry the append does not touch
        const std::vector<uint8_t> k_before = c.k_pages, v_before = c.v_pages;
        auto k = ref::token_bytes(c.p.cache, c.p.seqs, c.p.cache.k, 1, 0, 1);
        REQUIRE(vashista_append(c.cache, 0, len, 1, k.data(), k.data()) == VASHISTA_ERROR_OUT_OF_RANGE);
        REQUIRE_THAT(vashista_last_error(), Catch::Contains("super-page box over pages"));
        REQUIRE(c.k_pages == k_before);
        REQUIRE(c.v_pages == v_before);
        REQUIRE(vashista_appended_tokens(c.cache, 0) == len);
    }
    SECTION("a remapped entry or a page summarized again through another sequence: stale until rebuilt") {
        std::swap(pt[1], pt[2]);  // two full pages of sequence 0 trade places
        require_hier_matches_reference(c, v, {0});
        REQUIRE(vashista_share_prefix(c.cache, 0, c.p.seqs.seq_lens[0]) == VASHISTA_OK);  // rebuilds its boxes
        require_hier_matches_reference(c, v);
        // Sequence 1 maps sequence 0's first page and writes other keys into it.
        pt[MP + 0] = pt[0];
        for (int t = 0; t < S; ++t)
            for (int h = 0; h < H; ++h)
                for (int d = 0; d < v.head_dim; ++d)
                    c.p.cache.k[c.p.cache.offset(pt[0], t, h, d)] = ref::round_to(v.kv, 3.0f - 0.5f * float(d % 5));
        c.append(1, 0, S);
        require_hier_matches_reference(c, v, {0});
        REQUIRE(vashista_share_prefix(c.cache, 0, c.p.seqs.seq_lens[0]) == VASHISTA_OK);
        require_hier_matches_reference(c, v);
    }
}

TEST_CASE("scores and values past f32's range: uncertified, never a NaN bound", "[certificate]") {
    const Variant &v = kVariants[0];
    ref::Problem p = small_problem(v, {400, 100});
    SECTION("a query with one component near 1e30") {
        for (int i = 0; i < H * v.group; ++i) p.q.q[size_t(i) * v.head_dim] = 1e30f;
        AbiCache c(std::move(p));
        Step s = decode(c, config_for(v, VASHISTA_POLICY_NONE));
        for (int i = 0; i < H * v.group; ++i) {
            CHECK(s.diag[i].certificate == VASHISTA_UNCERTIFIED_OVERFLOW);
            CHECK(std::isinf(s.diag[i].error_bound));
        }
        check_certified(c, s);  // sequence 1 (ordinary) stays within its bounds
    }
    SECTION("values near bf16's maximum") {
        for (size_t i = 0; i < p.cache.v.size(); i += 3) p.cache.v[i] = 3.3e38f;
        AbiCache c(std::move(p));
        const int n = 2 * H * v.group;
        std::vector<float> out(size_t(n) * v.head_dim, 7.0f);
        std::vector<vashista_head_diag> diag(n);
        const vashista_decode_config cfg = config_for(v, VASHISTA_POLICY_NONE);
        const vashista_status st = vashista_decode(c.cache, &cfg, c.p.q.q.data(), H * v.group, c.p.seqs.seq_lens.data(),
                                                   out.data(), nullptr, diag.data());
        if (st == VASHISTA_OK) {
            for (const auto &d : diag) {
                CHECK(d.certificate == VASHISTA_UNCERTIFIED_OVERFLOW);
                CHECK(std::isinf(d.error_bound));
            }
        } else {  // an output that overflowed is an error that names the cause, and writes nothing
            CHECK(st == VASHISTA_ERROR_NON_FINITE);
            CHECK_THAT(vashista_last_error(), Catch::Contains("too large for the kernels' f32 arithmetic"));
            for (float x : out) REQUIRE(x == 7.0f);
        }
    }
    SECTION("a query of FLT_MAX") {
        for (float &x : p.q.q) x = 3.4e38f;
        AbiCache c(std::move(p));
        const int n = 2 * H * v.group;
        std::vector<float> out(size_t(n) * v.head_dim, 7.0f);
        const vashista_decode_config cfg = config_for(v, VASHISTA_POLICY_DENSE);
        const vashista_status st = vashista_decode(c.cache, &cfg, c.p.q.q.data(), H * v.group, c.p.seqs.seq_lens.data(),
                                                   out.data(), nullptr, nullptr);
        INFO(vashista_last_error());
        REQUIRE(st == VASHISTA_ERROR_NON_FINITE);
        CHECK_THAT(vashista_last_error(), Catch::Contains("too large for the kernels' f32 arithmetic"));
        for (float x : out) REQUIRE(x == 7.0f);
    }
}

TEST_CASE("eg heads that fall back compute dense eg: softmax at temperature N * eta", "[certificate]") {
    for (const Variant &v : {kVariants[3], kVariants[7]}) {
        INFO(describe(v));
        AbiCache c(small_problem(v, {700, 90}));
        vashista_decode_config cfg = config_for(v, VASHISTA_POLICY_DENSE);
        cfg.tolerance = 0;  // every head falls back
        Step s = decode(c, cfg);
        ref::SparseOptions opt;
        opt.solver = Solver::EG;
        const double beta = ref::solver_temperature(opt);
        REQUIRE(beta == Approx(1.2));
        for (int b = 0; b < 2; ++b)
            for (int h = 0; h < H; ++h)
                for (int g = 0; g < v.group; ++g) {
                    const size_t i = (size_t(b) * H + h) * v.group + g;
                    REQUIRE(s.diag[i].policy_taken == VASHISTA_TAKEN_DENSE);
                    ref::DenseResult d = ref::dense_head(c.p.cache, c.p.seqs, c.p.q, 0.0, b, h, g, beta);
                    for (int x = 0; x < v.head_dim; ++x)
                        REQUIRE(s.out[i * v.head_dim + x] == Approx(d.out[x]).margin(1e-4));
                    REQUIRE(s.lse[i] == Approx(d.lse).margin(1e-4 * (1 + std::abs(d.lse))));
                }
    }
}
