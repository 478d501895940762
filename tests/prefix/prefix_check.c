/* One library's check, compiled once per prefixed library (tests/prefix/CMakeLists.txt) with
 * CHECK_FUNCTION, CHECK_DTYPE (bf16 or f32 KV), CHECK_LAYOUT and CHECK_G; VASHISTA_PREFIX comes
 * from the library's target, so every vashista_ call below goes to that library alone.
 *
 * A null argument comes back as its status and message; the library lists only its own
 * variants (a call that reached the other library's dispatch table would list the other's KV
 * dtype); a decode with every token a candidate (P pages and K_c tokens cover all 100 tokens,
 * no sink or local pages, policy none) must equal the library's dense attention to 1e-5.
 * Returns the number of failures. */
#include "vashista.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define STR_(x) #x
#define STR(x) STR_(x)

enum { H = 2, D = 64, S = 16, T = 100, PAGES = 8, QH = H * CHECK_G };

static uint16_t to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Element i of a KV array in the check's dtype. */
static void store(void *base, int i, float x) {
    if (CHECK_DTYPE == VASHISTA_DTYPE_BF16)
        ((uint16_t *)base)[i] = to_bf16(x);
    else
        ((float *)base)[i] = x;
}

int CHECK_FUNCTION(void) {
    static float k_pages[PAGES * H * S * D], v_pages[PAGES * H * S * D], k[T * H * D], v[T * H * D];
    static float q[QH * D], out[QH * D], dense[QH * D], lse[QH], dense_lse[QH];
    static char variants[4096];
    const char *const name = STR(VASHISTA_PREFIX);
    const char *const own = CHECK_DTYPE == VASHISTA_DTYPE_BF16 ? "kv_type=bfloat16" : "kv_type=float32";
    const char *const other = CHECK_DTYPE == VASHISTA_DTYPE_BF16 ? "kv_type=float32" : "kv_type=bfloat16";
    const int32_t page_table[PAGES] = {3, 0, 6, 1, 7, 2, 4, 5}, seq_lens[1] = {T};
    uint32_t state = 777;

    /* An error travels through the library's C++ runtime (an exception, a thread-local
     * message) and comes back as a status. */
    vashista_cache *none = NULL;
    if (vashista_cache_create(NULL, &none) != VASHISTA_ERROR_NULL_POINTER || !strstr(vashista_last_error(), "desc")) {
        printf("%s: vashista_cache_create(NULL) did not report a null desc: '%s'\n", name, vashista_last_error());
        return 1;
    }
    vashista_list_variants(variants, sizeof variants);
    if (!strstr(variants, own) || strstr(variants, other)) {
        printf("%s: the library lists variants not its own (wants %s only):\n%s", name, own, variants);
        return 1;
    }
    for (int i = 0; i < T * H * D; ++i) {
        state = state * 1664525u + 1013904223u;
        store(k, i, (float)((state >> 8) % 2001) / 1000.0f - 1.0f);
        state = state * 1664525u + 1013904223u;
        store(v, i, (float)((state >> 8) % 2001) / 1000.0f - 1.0f);
    }
    for (int i = 0; i < QH * D; ++i) q[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    vashista_cache_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.struct_size = sizeof desc;
    desc.batch = 1;
    desc.kv_heads = H;
    desc.head_dim = D;
    desc.page_size = S;
    desc.num_pages = PAGES;
    desc.max_pages = PAGES;
    desc.kv_dtype = CHECK_DTYPE;
    desc.summary_dtype = CHECK_DTYPE;
    desc.layout = CHECK_LAYOUT;
    desc.k_pages = k_pages;
    desc.v_pages = v_pages;
    desc.page_table = page_table;
    vashista_cache *cache = NULL;
    if (vashista_cache_create(&desc, &cache) != VASHISTA_OK || vashista_append(cache, 0, 0, T, k, v) != VASHISTA_OK) {
        printf("%s: setup failed: %s\n", name, vashista_last_error());
        vashista_cache_destroy(cache);
        return 1;
    }
    vashista_decode_config cfg;
    vashista_decode_config_default(&cfg);
    cfg.top_pages = 8;
    cfg.top_tokens = 128;
    cfg.sink_pages = 0;
    cfg.local_pages = 0;
    cfg.policy = VASHISTA_POLICY_NONE;
    const int ok = vashista_decode(cache, &cfg, q, QH, seq_lens, out, lse, NULL) == VASHISTA_OK &&
                   vashista_dense(cache, q, QH, seq_lens, 0.0f, dense, dense_lse) == VASHISTA_OK;
    vashista_cache_destroy(cache);
    if (!ok) {
        printf("%s: decode failed: %s\n", name, vashista_last_error());
        return 1;
    }
    double worst = 0;
    for (int i = 0; i < QH * D; ++i) worst = fmax(worst, fabs((double)out[i] - dense[i]));
    for (int i = 0; i < QH; ++i) worst = fmax(worst, fabs((double)lse[i] - dense_lse[i]));
    printf("%s (%s): sparse (every token a candidate) against dense, max |diff| = %.3g\n", name, own, worst);
    return worst <= 1e-5 ? 0 : 1;
}
