/* Links the archive `vashista build-lib --target arm-64-linux` wrote, from C, and runs on
 * AArch64 (under qemu-user-static in the test): a 100-token cache of the default shape
 * (D = 128, G = 4, bf16 HND), where P pages and K_c tokens cover every token, so the sparse
 * step must equal dense. Prints what it checked; exits non-zero on any difference. */
#include "vashista.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { B = 1, H = 2, G = 4, D = 128, S = 16, T = 100, PAGES = 8 };

static uint16_t bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

int main(void) {
    static uint16_t k_pages[PAGES * H * S * D], v_pages[PAGES * H * S * D], k[T * H * D], v[T * H * D];
    static float q[B * H * G * D], out[B * H * G * D], dense[B * H * G * D], lse[B * H * G], dense_lse[B * H * G];
    static vashista_head_diag diag[B * H * G];
    int32_t page_table[PAGES] = {3, 0, 6, 1, 7, 2, 4, 5}, seq_lens[B] = {T};
    uint32_t state = 12345;
    for (int i = 0; i < T * H * D; ++i) {
        state = state * 1664525u + 1013904223u;
        k[i] = bf16((float)((state >> 8) % 2001) / 1000.0f - 1.0f);
        state = state * 1664525u + 1013904223u;
        v[i] = bf16((float)((state >> 8) % 2001) / 1000.0f - 1.0f);
    }
    for (int i = 0; i < B * H * G * D; ++i) q[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    vashista_cache_desc desc = {sizeof(vashista_cache_desc),
        B,       H,       D,          S, PAGES, PAGES, VASHISTA_DTYPE_BF16, VASHISTA_DTYPE_BF16, VASHISTA_LAYOUT_HND,
        k_pages, v_pages, page_table, 0, 0};
    vashista_cache *cache = NULL;
    if (vashista_cache_create(&desc, &cache) != VASHISTA_OK || vashista_append(cache, 0, 0, T, k, v) != VASHISTA_OK) {
        printf("setup failed: %s\n", vashista_last_error());
        return 1;
    }
    vashista_decode_config cfg;
    vashista_decode_config_default(&cfg);
    cfg.sink_pages = 0; /* the default workloads' variants route no pages always */
    cfg.local_pages = 0;
    cfg.policy = VASHISTA_POLICY_NONE;
    if (vashista_decode(cache, &cfg, q, H * G, seq_lens, out, lse, diag) != VASHISTA_OK ||
        vashista_dense(cache, q, H * G, seq_lens, 0.0f, dense, dense_lse) != VASHISTA_OK) {
        printf("decode failed: %s\n", vashista_last_error());
        return 1;
    }
    double worst = 0;
    for (int i = 0; i < B * H * G * D; ++i) worst = fmax(worst, fabs((double)out[i] - dense[i]));
    vashista_cache_destroy(cache);
    printf("build-lib library: sparse (every token a candidate) against dense, max |diff| = %.3g\n", worst);
    return worst <= 1e-5 ? 0 : 1;
}
