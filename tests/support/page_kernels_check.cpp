#include "kernel_check.h"
#include "problem_buffers.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <utility>

namespace vashista::test {
namespace {

// Every page of every sequence of `p`, as {sequence, logical page}, in the (2, n) layout
// of the summarize and sketch kernels' `touched` input.
Halide::Buffer<int32_t> all_pages(const ref::Problem &p, int page_size, std::vector<std::pair<int, int>> &touched) {
    touched.clear();
    for (int b = 0; b < p.seqs.batch; ++b)
        for (int j = 0; j * page_size < p.seqs.seq_lens[b]; ++j) touched.push_back({b, j});
    Halide::Buffer<int32_t> t(2, int(touched.size()));
    for (int i = 0; i < int(touched.size()); ++i) t(0, i) = touched[i].first, t(1, i) = touched[i].second;
    return t;
}

const void *at(const Halide::Runtime::Buffer<void> &buf, std::vector<int> pos) {
    return buf.raw_buffer()->address_of(pos.data());
}

// Keys across many magnitudes, so int8 scales and sketch codes see every exponent range.
ref::Problem wide_problem(Halide::Type kv, KvLayout layout, int head_dim) {
    ref::ProblemSpec spec;
    spec.kv_heads = 2;
    spec.head_dim = head_dim;
    spec.seq_lens = {100, 37, 5};
    spec.layout = layout;
    spec.dtype = dtype_of(kv);
    spec.seed = 3;
    ref::Problem p = ref::make_problem(spec);
    std::mt19937 rng(4);
    std::uniform_int_distribution<int> exponent(-12, 12);
    for (float &x : p.cache.k) x = ref::round_to(spec.dtype, std::ldexp(x, exponent(rng)));
    return p;
}

}  // namespace

void check_summarize_kernel(const Halide::Target &target) {
    // Every summary dtype of f32, f16 and bf16 keys, both layouts; pages a sequence fills in
    // part; keys across many magnitudes so int8 scales and codes are exercised.
    for (Halide::Type kv : {Halide::Float(32), Halide::Float(16), Halide::BFloat(16)})
        for (Halide::Type st : {kv, Halide::BFloat(16), Halide::Int(8)})
            for (KvLayout layout : {KvLayout::HND, KvLayout::NHD}) {
                SummaryConfig cfg;
                cfg.head_dim = 32;
                cfg.page_size = 16;
                cfg.kv_type = kv;
                cfg.summary_type = st;
                cfg.layout = layout;
                GeneratorJit jit("vashista_summarize", generator_params(cfg), target);
                ref::Problem p = wide_problem(kv, layout, 32);
                const DType sd = dtype_of(st);
                ref::Summaries sum = ref::summarize(p.cache, p.seqs, sd);
                ProblemBuffers pb = problem_buffers(p, sum, sd);
                std::vector<std::pair<int, int>> touched;
                Halide::Buffer<int32_t> t = all_pages(p, 16, touched);
                const int n = int(touched.size()), H = 2, groups = summary_scale_groups(32, sd);
                Halide::Buffer<> rows(st, 32, kSummaryChannels, H, n), scales(Halide::BFloat(16), groups, H, n);
                Halide::Buffer<float> norms(H, n), absmax(H, n);
                jit.buffer("k_cache", Halide::Buffer<>(std::move(pb.k_cache)))
                    .buffer("v_cache", Halide::Buffer<>(std::move(pb.v_cache)))
                    .buffer("page_table", Halide::Buffer<int32_t>(std::move(pb.page_table)))
                    .buffer("seq_lens", Halide::Buffer<int32_t>(std::move(pb.seq_lens)))
                    .buffer("touched", t)
                    .buffer("summary", rows)
                    .buffer("value_norm", norms)
                    .buffer("key_absmax", absmax)
                    .buffer("summary_scale", scales)
                    .run();
                // The reference's rows in the summary dtype, as the decode kernels read them.
                const auto &want_rows = pb.summary, &want_scales = pb.summary_scale;
                int mismatches = 0;
                std::string first;
                for (int i = 0; i < n; ++i) {
                    const auto [b, j] = touched[i];
                    const int page = p.seqs.page_table[size_t(b) * p.seqs.max_pages + j];
                    for (int h = 0; h < H; ++h) {
                        // The mean is an estimate (kernel: f32 sum; reference: f64): only min, max.
                        for (int c = kSummaryMin; c <= kSummaryMax; ++c)
                            if (std::memcmp(at(*rows.get(), {0, c, h, i}), at(want_rows, {0, c, page, h}),
                                            32 * st.bytes()) != 0 &&
                                !mismatches++)
                                first = "row " + std::to_string(c) + " of page " + std::to_string(i);
                        if (std::memcmp(at(*scales.get(), {0, h, i}), at(want_scales, {0, page, h}), groups * 2) != 0 &&
                            sd == DType::I8 && !mismatches++)
                            first = "scales of page " + std::to_string(i);
                        if (absmax(h, i) != sum.key_absmax[sum.at(b, h, j)] && !mismatches++)
                            first = "key_absmax of page " + std::to_string(i);
                        // The kernel's norm (f32 sum of squares, inflated) bounds the reference's.
                        if (!(norms(h, i) >= sum.value_norm[sum.at(b, h, j)]) && !mismatches++)
                            first = "value_norm of page " + std::to_string(i) + " below the reference's";
                    }
                }
                INFO(target.to_string() << ": " << type_name(kv) << " keys, " << type_name(st) << " summaries, "
                                        << to_string(layout) << ": " << first);
                CHECK(mismatches == 0);
            }
}

void check_sketch_kernel(const Halide::Target &target) {
    // 8- and 4-bit codes, scale groups of 8 and 32 channels, every key dtype, both layouts.
    int index = 0;
    for (Halide::Type kv : {Halide::Float(32), Halide::Float(16), Halide::BFloat(16)})
        for (KvLayout layout : {KvLayout::HND, KvLayout::NHD}) {
            ++index;
            SketchConfig cfg;
            cfg.head_dim = 32;
            cfg.page_size = 16;
            cfg.kv_type = kv;
            cfg.layout = layout;
            cfg.bits = index % 2 ? 8 : 4;
            cfg.group = index % 3 ? 8 : 32;
            GeneratorJit jit("vashista_sketch", generator_params(cfg), target);
            ref::Problem p = wide_problem(kv, layout, 32);
            ref::Summaries sum = ref::summarize(p.cache, p.seqs, DType::BF16, cfg.bits, cfg.group);
            ProblemBuffers pb = problem_buffers(p, sum, DType::BF16);
            std::vector<std::pair<int, int>> touched;
            Halide::Buffer<int32_t> t = all_pages(p, 16, touched);
            const int n = int(touched.size()), H = 2, S = 16;
            const int bytes = sketch_code_bytes(32, cfg.bits), groups = 32 / cfg.group;
            Halide::Buffer<uint8_t> codes(S, bytes, H, n);
            Halide::Buffer<> scales(Halide::BFloat(16), S, groups, H, n);
            jit.buffer("k_cache", Halide::Buffer<>(std::move(pb.k_cache)))
                .buffer("page_table", Halide::Buffer<int32_t>(std::move(pb.page_table)))
                .buffer("seq_lens", Halide::Buffer<int32_t>(std::move(pb.seq_lens)))
                .buffer("touched", t)
                .buffer("codes", codes)
                .buffer("scales", scales)
                .run();
            int mismatches = 0;
            std::string first;
            for (int i = 0; i < n; ++i) {
                const auto [b, j] = touched[i];
                const int page = p.seqs.page_table[size_t(b) * p.seqs.max_pages + j];
                for (int h = 0; h < H; ++h)
                    for (int s = 0; s < S; ++s) {
                        for (int x = 0; x < bytes; ++x)
                            if (codes(s, x, h, i) != pb.sketch(s, x, page, h) && !mismatches++)
                                first = "code byte " + std::to_string(x) + " of token " + std::to_string(s) +
                                        " of page " + std::to_string(i);
                        for (int x = 0; x < groups; ++x)
                            if (std::memcmp(at(*scales.get(), {s, x, h, i}), at(pb.sketch_scale, {s, x, page, h}), 2) !=
                                    0 &&
                                !mismatches++)
                                first = "scale of group " + std::to_string(x) + " of token " + std::to_string(s) +
                                        " of page " + std::to_string(i);
                    }
            }
            INFO(target.to_string() << ": " << type_name(kv) << " keys, " << to_string(layout) << ", " << cfg.bits
                                    << " bits, groups of " << cfg.group << ": " << first);
            CHECK(mismatches == 0);
        }
}

void check_dense_kernel(const Halide::Target &target, const std::string &schedule) {
    // Every dtype and layout, groups of 1 and 4; sequences that end inside a page, inside
    // a chunk, and span several chunks.
    int index = 0;
    for (Halide::Type kv : {Halide::Float(32), Halide::Float(16), Halide::BFloat(16)})
        for (KvLayout layout : {KvLayout::HND, KvLayout::NHD}) {
            ++index;
            DenseConfig cfg;
            cfg.head_dim = 32;
            cfg.page_size = 16;
            cfg.group_size = index % 2 ? 4 : 1;
            cfg.kv_type = kv;
            cfg.layout = layout;
            GeneratorParams params = generator_params(cfg);
            if (!schedule.empty()) params["schedule"] = schedule;
            GeneratorJit jit("vashista_dense", params, target);
            ref::ProblemSpec spec;
            spec.kv_heads = 2;
            spec.group = cfg.group_size;
            spec.head_dim = 32;
            spec.seq_lens = {100, 37, 5, 1300};
            spec.layout = layout;
            spec.dtype = dtype_of(kv);
            spec.kind = ref::DataKind::Planted;
            spec.seed = 11 + index;
            ref::Problem p = ref::make_problem(spec);
            ref::Summaries sum = ref::summarize(p.cache, p.seqs, DType::BF16);
            ProblemBuffers pb = problem_buffers(p, sum, DType::BF16);
            const int G = cfg.group_size, H = 2, B = int(spec.seq_lens.size());
            const double scale = ref::default_scale(32);
            Halide::Buffer<float> out(32, G, H, B), lse(G, H, B);
            jit.buffer("q", Halide::Buffer<float>(std::move(pb.q)))
                .buffer("k_cache", Halide::Buffer<>(std::move(pb.k_cache)))
                .buffer("v_cache", Halide::Buffer<>(std::move(pb.v_cache)))
                .buffer("page_table", Halide::Buffer<int32_t>(std::move(pb.page_table)))
                .buffer("seq_lens", Halide::Buffer<int32_t>(std::move(pb.seq_lens)))
                .scalar("scale", float(scale))
                .buffer("out", out)
                .buffer("lse", lse)
                .run();
            double out_err = 0, lse_err = 0;
            for (int b = 0; b < B; ++b)
                for (int h = 0; h < H; ++h)
                    for (int g = 0; g < G; ++g) {
                        const ref::DenseResult r = ref::dense_head(p.cache, p.seqs, p.q, scale, b, h, g);
                        for (int d = 0; d < 32; ++d) out_err = std::max(out_err, std::abs(out(d, g, h, b) - r.out[d]));
                        lse_err = std::max(lse_err, std::abs(lse(g, h, b) - r.lse) / (1 + std::abs(r.lse)));
                    }
            INFO(target.to_string() << ": " << type_name(kv) << " " << to_string(layout) << " G=" << G << " schedule "
                                    << (schedule.empty() ? "hand" : schedule));
            CHECK(out_err <= 1e-4);
            CHECK(lse_err <= 1e-5);
        }
}

}  // namespace vashista::test
