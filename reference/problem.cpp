#include "problem.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

namespace vashista::ref {

Problem make_problem(const ProblemSpec &spec) {
    Problem p;
    std::mt19937_64 rng(spec.seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> dyadic(-2, 2);
    auto draw = [&] { return spec.kind == DataKind::Dyadic ? 0.5f * float(dyadic(rng)) : normal(rng); };
    const int S = spec.page_size, D = spec.head_dim, B = int(spec.seq_lens.size());
    const int longest = *std::max_element(spec.seq_lens.begin(), spec.seq_lens.end());

    p.seqs.batch = B;
    p.seqs.max_pages = (longest + S - 1) / S + spec.extra_pages;
    p.seqs.seq_lens = spec.seq_lens;
    int used = 0;
    for (int len : spec.seq_lens) used += (len + S - 1) / S;
    const int num_pages = used + spec.spare_pages;
    std::vector<int> physical(num_pages);
    std::iota(physical.begin(), physical.end(), 0);
    std::shuffle(physical.begin(), physical.end(), rng);
    p.seqs.page_table.assign(size_t(B) * p.seqs.max_pages, 0);
    int next = 0;
    for (int b = 0; b < B; ++b)
        for (int j = 0; j * S < spec.seq_lens[b]; ++j)
            p.seqs.page_table[size_t(b) * p.seqs.max_pages + j] = physical[next++];
    // Unused block-table entries point at a real page, as engines leave them.
    for (int b = 0; b < B; ++b)
        for (int j = (spec.seq_lens[b] + S - 1) / S; j < p.seqs.max_pages; ++j)
            p.seqs.page_table[size_t(b) * p.seqs.max_pages + j] = physical[num_pages - 1];

    p.cache = Cache(num_pages, spec.kv_heads, S, D, spec.layout, spec.dtype);
    for (float &x : p.cache.k) x = round_to(spec.dtype, draw());
    for (float &x : p.cache.v) x = round_to(spec.dtype, draw());

    p.q.batch = B;
    p.q.kv_heads = spec.kv_heads;
    p.q.group = spec.group;
    p.q.head_dim = D;
    p.q.q.resize(size_t(B) * spec.kv_heads * spec.group * D);
    for (float &x : p.q.q) x = draw();

    if (spec.kind == DataKind::Planted) {
        // k = a * q_hat + noise gives the scaled score s ~ a * |q| / sqrt(D) for its head.
        const double scale = default_scale(D);
        for (int b = 0; b < B; ++b) {
            const int len = spec.seq_lens[b];
            std::uniform_int_distribution<int> token(1, std::max(1, len - 1));
            for (int h = 0; h < spec.kv_heads; ++h) {
                auto plant = [&](int t, const float *dir, double score, double mix) {
                    double n2 = 0;
                    for (int d = 0; d < D; ++d) n2 += double(dir[d]) * dir[d];
                    const double a = score / (scale * std::sqrt(n2));
                    const int page = p.seqs.page_of(b, t, S);
                    for (int d = 0; d < D; ++d) {
                        float &k = p.cache.k[p.cache.offset(page, t % S, h, d)];
                        k = round_to(spec.dtype, float(mix * k + a * dir[d] / std::sqrt(n2)));
                    }
                };
                std::vector<float> group_mean(D, 0.0f);
                for (int g = 0; g < spec.group; ++g)
                    for (int d = 0; d < D; ++d) group_mean[d] += p.q.head(b, h, g)[d] / spec.group;
                plant(0, group_mean.data(), spec.needle_score * 0.8, 0.1);  // attention sink
                for (int t = std::max(1, len - spec.window); t < len; ++t)
                    plant(t, group_mean.data(), 2.0, 1.0);  // local window
                for (int g = 0; g < spec.group; ++g)
                    for (int n = 0; n < spec.needles; ++n) plant(token(rng), p.q.head(b, h, g), spec.needle_score, 0.1);
            }
        }
    }
    return p;
}

std::vector<uint8_t> token_bytes(const Cache &cache, const Sequences &seqs, const std::vector<float> &src, int b,
                                 int start, int n) {
    const int H = cache.kv_heads, D = cache.head_dim, S = cache.page_size, bytes = dtype_bytes(cache.dtype);
    std::vector<uint8_t> out(size_t(n) * H * D * bytes);
    for (int t = 0; t < n; ++t)
        for (int h = 0; h < H; ++h)
            for (int d = 0; d < D; ++d) {
                const float x = src[cache.offset(seqs.page_of(b, start + t, S), (start + t) % S, h, d)];
                uint8_t *dst = &out[((size_t(t) * H + h) * D + d) * bytes];
                if (bytes == 4) {
                    std::memcpy(dst, &x, 4);
                } else {
                    const uint16_t bits = to_bits16(cache.dtype, x);
                    std::memcpy(dst, &bits, 2);
                }
            }
    return out;
}

}  // namespace vashista::ref
