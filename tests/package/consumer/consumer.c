/* The installed package from C: the default library (find_package(VashistaKernels)) on a small
 * cache of its demo shape, bf16 KV in HND pages, D = 128, S = 16, two KV heads of G = 4 query
 * heads, two sequences (100 and 37 tokens) in scattered pages. The decode takes the default
 * config (P = 64, K_c = 128, one sink and two local pages), so every token is a candidate and
 * the answer must be dense attention, which this program computes itself in double precision
 * from the same bf16 keys and values. Exits non-zero on any error or on a difference over
 * the tolerance. */
#include "vashista.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { B = 2, H = 2, G = 4, D = 128, S = 16, PAGES = 16, MAX_PAGES = 8, QH = H * G };
/* Outputs are convex combinations of values in [-1, 1] computed in f32 against a double
 * reference: f32 rounding over 100 tokens stays far below this. */
static const double kTolerance = 1e-4;

static uint16_t to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static double from_bf16(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static uint32_t next(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

int main(void) {
    static uint16_t k_pages[PAGES * H * S * D], v_pages[PAGES * H * S * D];
    static uint16_t k[B][MAX_PAGES * S][H][D], v[B][MAX_PAGES * S][H][D];
    static float q[B * QH * D], out[B * QH * D], lse[B * QH];
    static vashista_head_diag diag[B * QH];
    const int32_t page_table[B * MAX_PAGES] = {3, 11, 6, 1, 14, 2, 9, 5, 0, 7, 12, 4, 8, 10, 13, 15};
    const int32_t seq_lens[B] = {100, 37};
    uint32_t state = 12345;
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < seq_lens[b]; ++t)
            for (int h = 0; h < H; ++h)
                for (int d = 0; d < D; ++d) {
                    k[b][t][h][d] = to_bf16((float)(next(&state) % 2001) / 1000.0f - 1.0f);
                    v[b][t][h][d] = to_bf16((float)(next(&state) % 2001) / 1000.0f - 1.0f);
                }
    for (int i = 0; i < B * QH * D; ++i) q[i] = (float)(next(&state) % 2001) / 1000.0f - 1.0f;

    if (vashista_abi_version() != VASHISTA_ABI_VERSION) {
        printf("the library has ABI version %u, its installed header %d\n", (unsigned)vashista_abi_version(),
               VASHISTA_ABI_VERSION);
        return 1;
    }
    vashista_cache_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.struct_size = sizeof desc;
    desc.batch = B;
    desc.kv_heads = H;
    desc.head_dim = D;
    desc.page_size = S;
    desc.num_pages = PAGES;
    desc.max_pages = MAX_PAGES;
    desc.kv_dtype = VASHISTA_DTYPE_BF16;
    desc.summary_dtype = VASHISTA_DTYPE_BF16;
    desc.layout = VASHISTA_LAYOUT_HND;
    desc.k_pages = k_pages;
    desc.v_pages = v_pages;
    desc.page_table = page_table;
    vashista_cache *cache = NULL;
    if (vashista_cache_create(&desc, &cache) != VASHISTA_OK) {
        printf("vashista_cache_create: %s\n", vashista_last_error());
        return 1;
    }
    for (int b = 0; b < B; ++b)
        if (vashista_append(cache, b, 0, seq_lens[b], k[b], v[b]) != VASHISTA_OK) {
            printf("vashista_append(seq %d): %s\n", b, vashista_last_error());
            return 1;
        }
    vashista_decode_config cfg;
    vashista_decode_config_default(&cfg);
    const vashista_status st = vashista_decode(cache, &cfg, q, QH, seq_lens, out, lse, diag);
    vashista_cache_destroy(cache);
    if (st != VASHISTA_OK) {
        printf("vashista_decode: %s: %s\n", vashista_status_name(st), vashista_last_error());
        return 1;
    }

    double worst_out = 0, worst_lse = 0;
    const double scale = 1.0 / sqrt((double)D);
    for (int b = 0; b < B; ++b)
        for (int qh = 0; qh < QH; ++qh) {
            const int h = qh / G; /* the KV head of query head qh */
            const float *qv = q + (b * QH + qh) * D;
            double s[MAX_PAGES * S], m = -INFINITY, z = 0;
            for (int t = 0; t < seq_lens[b]; ++t) {
                s[t] = 0;
                for (int d = 0; d < D; ++d) s[t] += (double)qv[d] * from_bf16(k[b][t][h][d]);
                s[t] *= scale;
                m = fmax(m, s[t]);
            }
            for (int t = 0; t < seq_lens[b]; ++t) z += exp(s[t] - m);
            for (int d = 0; d < D; ++d) {
                double o = 0;
                for (int t = 0; t < seq_lens[b]; ++t) o += exp(s[t] - m) / z * from_bf16(v[b][t][h][d]);
                worst_out = fmax(worst_out, fabs(o - out[(b * QH + qh) * D + d]));
            }
            worst_lse = fmax(worst_lse, fabs(m + log(z) - lse[b * QH + qh]));
        }
    printf(
        "installed VashistaKernels::vashista: decode (every token a candidate) against dense in C, "
        "max |diff| out %.3g, lse %.3g (tolerance %g)\n",
        worst_out, worst_lse, kTolerance);
    return worst_out <= kTolerance && worst_lse <= kTolerance ? 0 : 1;
}
