#include "problem_buffers.h"

#include "dtype_halide.h"
#include "method_types.h"

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace vashista {

using Halide::Runtime::Buffer;

namespace {

void store(Buffer<void> &buf, size_t flat, float x, ref::DType t) {
    uint8_t *base = static_cast<uint8_t *>(buf.data());
    if (t == ref::DType::I8) {
        base[flat] = uint8_t(int8_t(x));
    } else if (t == ref::DType::F32) {
        std::memcpy(base + 4 * flat, &x, 4);
    } else {
        const uint16_t bits = ref::to_bits16(t, x);
        std::memcpy(base + 2 * flat, &bits, 2);
    }
}

Buffer<void> cache_buffer(const ref::Cache &c, const std::vector<float> &values) {
    const halide_type_t t = halide_runtime_type(c.dtype);
    // Dense row-major memory in the cache's own layout; Halide lists dims innermost first.
    Buffer<void> buf = c.layout == KvLayout::HND ? Buffer<void>(t, {c.head_dim, c.page_size, c.kv_heads, c.num_pages})
                                                 : Buffer<void>(t, {c.head_dim, c.kv_heads, c.page_size, c.num_pages});
    for (size_t i = 0; i < values.size(); ++i) store(buf, i, values[i], c.dtype);
    return buf;
}

}  // namespace

ProblemBuffers problem_buffers(const ref::Problem &p, const ref::Summaries &sum, ref::DType summary_dtype) {
    ProblemBuffers buf;
    buf.q = Buffer<float>(p.q.head_dim, p.q.group, p.q.kv_heads, p.q.batch);
    std::memcpy(buf.q.data(), p.q.q.data(), p.q.q.size() * sizeof(float));
    buf.k_cache = cache_buffer(p.cache, p.cache.k);
    buf.v_cache = cache_buffer(p.cache, p.cache.v);
    buf.page_table = Buffer<int32_t>(p.seqs.max_pages, p.seqs.batch);
    std::memcpy(buf.page_table.data(), p.seqs.page_table.data(), p.seqs.page_table.size() * 4);
    buf.seq_lens = Buffer<int32_t>(p.seqs.batch);
    std::memcpy(buf.seq_lens.data(), p.seqs.seq_lens.data(), p.seqs.seq_lens.size() * 4);
    // The order decode's routing reads the pages' summaries in, as the runtime computes it.
    const int W = p.seqs.max_pages;
    buf.route_pages = Buffer<int32_t>(W, p.seqs.batch);
    buf.route_rank = Buffer<int32_t>(W, p.seqs.batch);
    std::vector<uint32_t> scratch(size_t(2) * W);
    for (int b = 0; b < p.seqs.batch; ++b)
        route_order(&p.seqs.page_table[size_t(b) * W], (p.seqs.seq_lens[b] + p.cache.page_size - 1) / p.cache.page_size,
                    W, &buf.route_pages(0, b), &buf.route_rank(0, b), scratch.data());

    // Every page a sequence holds tokens in, at the physical page it maps to (problems give
    // each sequence pages of its own); pages no sequence uses stay zero.
    const int S = sum.page_size, D = sum.head_dim, num_pages = p.cache.num_pages;
    auto for_each_page = [&](auto &&fn) {
        for (int b = 0; b < sum.batch; ++b)
            for (int j = 0; j * S < p.seqs.seq_lens[b]; ++j)
                for (int h = 0; h < sum.kv_heads; ++h) fn(b, j, h, p.seqs.page_table[size_t(b) * p.seqs.max_pages + j]);
    };
    if (sum.dtype != summary_dtype)
        throw std::invalid_argument(std::string("problem_buffers: summaries made for ") + to_string(sum.dtype) +
                                    ", buffers asked for " + to_string(summary_dtype));
    const SummaryLayout layout{D, num_pages, sum.kv_heads};
    const auto extents = layout.extents();
    const bool compact = summary_dtype == ref::DType::I8;
    const int scale_groups = summary_scale_groups(D, summary_dtype);
    const halide_type_t bf16(halide_type_bfloat, 16);
    buf.summary_scale = Buffer<void>(bf16, {scale_groups, num_pages, sum.kv_heads});
    std::memset(buf.summary_scale.data(), 0, buf.summary_scale.size_in_bytes());
    buf.summary = Buffer<void>(halide_runtime_type(summary_dtype), std::vector<int>(extents.begin(), extents.end()));
    std::memset(buf.summary.data(), 0, buf.summary.size_in_bytes());
    buf.value_norm = Buffer<float>(num_pages, sum.kv_heads);
    buf.key_absmax = Buffer<float>(num_pages, sum.kv_heads);
    buf.value_norm.fill(0.0f);
    buf.key_absmax.fill(0.0f);
    const float margin = float(fp::value_norm_margin(D));
    for_each_page([&](int b, int j, int h, int page) {
        const size_t at = sum.at(b, h, j);
        for (int c = 0; c < kSummaryChannels; ++c) {
            const std::vector<float> &channel = c == kSummaryMean ? sum.mean : c == kSummaryMin ? sum.lo : sum.hi;
            for (int d = 0; d < D; ++d) {
                // int8: the reference's values are sigma * code, so the quotient is the code.
                const float x = channel[at * D + d];
                const float value = compact ? x / sum.summary_scale[at * scale_groups + d / kSummaryScaleGroup] : x;
                store(buf.summary, size_t(layout.row(page, c, h) + d), value, summary_dtype);
            }
        }
        if (compact)
            for (int x = 0; x < scale_groups; ++x)
                store(buf.summary_scale, (size_t(h) * num_pages + page) * scale_groups + x,
                      sum.summary_scale[at * scale_groups + x], ref::DType::BF16);
        buf.value_norm(page, h) = float(sum.value_norm[at]) * margin;
        buf.key_absmax(page, h) = sum.key_absmax[at];
    });
    if (sum.super_pages == 0) {
        buf.super_summary = Buffer<float>(1, 1, 1, 1);
        buf.super_table = Buffer<int32_t>(1, 1);
        buf.super_summary.fill(0.0f);
        buf.super_table.fill(0);
    } else {
        buf.super_summary = Buffer<float>(D, kSuperChannels, sum.batch * sum.max_supers, sum.kv_heads);
        buf.super_summary.fill(0.0f);
        buf.super_table = Buffer<int32_t>(sum.max_supers, sum.batch);
        for (int b = 0; b < sum.batch; ++b)
            for (int s = 0; s < sum.max_supers; ++s) {
                buf.super_table(s, b) = b * sum.max_supers + s;
                for (int h = 0; h < sum.kv_heads; ++h)
                    for (int d = 0; d < D; ++d) {
                        buf.super_summary(d, kSuperMin, b * sum.max_supers + s, h) =
                            sum.super_lo[sum.super_at(b, h, s) * D + d];
                        buf.super_summary(d, kSuperMax, b * sum.max_supers + s, h) =
                            sum.super_hi[sum.super_at(b, h, s) * D + d];
                    }
                // The largest value norm of its pages, with the margin the page norms above carry,
                // and the box's largest |x|.
                for (int h = 0; h < sum.kv_heads; ++h) {
                    const int slot = b * sum.max_supers + s;
                    buf.super_summary(kSuperValueNorm, kSuperBounds, slot, h) =
                        float(sum.super_value_norm[sum.super_at(b, h, s)]) * margin;
                    float &absmax = buf.super_summary(kSuperKeyAbsmax, kSuperBounds, slot, h);
                    for (int d = 0; d < D; ++d)
                        absmax = std::max({absmax, std::abs(buf.super_summary(d, kSuperMin, slot, h)),
                                           std::abs(buf.super_summary(d, kSuperMax, slot, h))});
                }
            }
    }
    // The token sketch, codes packed as the sketch kernel packs them (algorithm.h).
    if (sum.sketch_bits == 0) {
        buf.sketch = Buffer<uint8_t>(1, 1, 1, 1);
        buf.sketch_scale = Buffer<void>(bf16, {1, 1, 1, 1});
        buf.sketch.fill(0);
        std::memset(buf.sketch_scale.data(), 0, buf.sketch_scale.size_in_bytes());
        return buf;
    }
    const int bits = sum.sketch_bits, bytes = sketch_code_bytes(D, bits), groups = D / sum.sketch_group;
    buf.sketch = Buffer<uint8_t>(S, bytes, num_pages, sum.kv_heads);
    buf.sketch_scale = Buffer<void>(bf16, {S, groups, num_pages, sum.kv_heads});
    buf.sketch.fill(0);
    std::memset(buf.sketch_scale.data(), 0, buf.sketch_scale.size_in_bytes());
    for_each_page([&](int b, int j, int h, int page) {
        for (int s = 0; s < S; ++s) {
            const size_t tok = sum.token_at(b, h, j, s);
            const int8_t *code = &sum.sketch_code[tok * D];
            for (int x = 0; x < bytes; ++x) {
                const int packed = bits == 8 ? code[x] : (code[2 * x] & 15) | ((code[2 * x + 1] & 15) << 4);
                buf.sketch(s, x, page, h) = uint8_t(packed);
            }
            for (int x = 0; x < groups; ++x) {
                const size_t flat = ((size_t(h) * num_pages + page) * groups + x) * S + s;
                store(buf.sketch_scale, flat, sum.sketch_scale[tok * groups + x], ref::DType::BF16);
            }
        }
    });
    return buf;
}

}  // namespace vashista
