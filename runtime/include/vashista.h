/* Vashista Kernels: sparse decode attention over a paged KV cache.
 *
 * C ABI. The caller owns the KV pages and the block table; the library owns page
 * summaries, one per physical page (a page several sequences share, as with prefix
 * caching, is summarized once), which vashista_append keeps up to date. A decode step routes each query
 * head to its top P pages, keeps the top K_c tokens, solves a sparse softmax over them,
 * and certifies the result with a support-gap bound, falling back to dense attention
 * for heads whose bound exceeds the tolerance.
 *
 * Every function returns a vashista_status; on an error nothing has been written to
 * the caller's outputs, and vashista_last_error() says what was wrong.
 */
#ifndef VASHISTA_H
#define VASHISTA_H

#include <stddef.h>
#include <stdint.h>

/* A kernel library built with a symbol prefix (vashista_add_kernel_library PREFIX) exports
 * every function below as <prefix><name>; its CMake target defines VASHISTA_PREFIX for its
 * users, and this header then maps the names. */
#include "vashista_prefix.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this header's ABI: raised whenever a public struct or function signature
 * changes. vashista_abi_version() says which version a linked library was built with. Every
 * public struct starts with struct_size: set it to sizeof the struct (the library rejects a
 * struct of another size with a message naming both), so a library and a caller built
 * against different headers fail loudly instead of reading past a field. */
#define VASHISTA_ABI_VERSION 5
uint32_t vashista_abi_version(void);

typedef enum vashista_status {
    VASHISTA_OK = 0,
    VASHISTA_ERROR_NULL_POINTER = 1,
    VASHISTA_ERROR_INVALID_ARGUMENT = 2, /* a value outside what the argument allows */
    VASHISTA_ERROR_SHAPE_MISMATCH = 3,   /* shapes or dtypes that do not fit together */
    VASHISTA_ERROR_OUT_OF_RANGE = 4,     /* a page id or position outside the cache */
    VASHISTA_ERROR_NON_FINITE = 5,       /* NaN or Inf in q, k or v */
    VASHISTA_ERROR_NO_VARIANT = 6,       /* no compiled kernel for this shape */
    VASHISTA_ERROR_KERNEL = 7,           /* a kernel reported a failure (vashista_last_error gives
                                            Halide's message, e.g. a GPU API that cannot be loaded) */
    VASHISTA_ERROR_OUT_OF_MEMORY = 8
} vashista_status;

/* I8: summaries only (vashista_cache_desc.summary_dtype): compact page summaries, int8 codes
 * with a bf16 scale per 16 channels, rounded outward (half the bytes routing reads of bf16
 * summaries, a looser bound); head_dim a multiple of 16. */
typedef enum vashista_dtype {
    VASHISTA_DTYPE_F32 = 0,
    VASHISTA_DTYPE_F16 = 1,
    VASHISTA_DTYPE_BF16 = 2,
    VASHISTA_DTYPE_I8 = 3
} vashista_dtype;
/* HND: [num_pages][kv_heads][page_size][head_dim]; NHD: [num_pages][page_size][kv_heads][head_dim] */
typedef enum vashista_layout { VASHISTA_LAYOUT_HND = 0, VASHISTA_LAYOUT_NHD = 1 } vashista_layout;
typedef enum vashista_solver {
    VASHISTA_SOLVER_SOFTMAX = 0,
    VASHISTA_SOLVER_EG = 1,
    VASHISTA_SOLVER_FW = 2,
    VASHISTA_SOLVER_SPARSEMAX = 3
} vashista_solver;
/* MEAN: pages by q . mean key (no certificate); BOUND: pages by their key box's upper bound;
 * SKETCH: tokens by a b-bit sketch of their keys, certified from per-token upper bounds (the
 * cache must keep a sketch: vashista_cache_desc.sketch_bits); HIER_BOUND: bound routing over
 * super-pages of R pages first (the cache must keep their boxes: vashista_cache_desc.super_pages):
 * each head scores every super-page by its box, expands the top Q (super_expand) and routes the
 * top P of their pages by their own boxes, so routing reads M/R + Q R boxes instead of M; pages
 * of unexpanded super-pages enter the certificate at their super-page's bound. */
typedef enum vashista_routing {
    VASHISTA_ROUTING_MEAN = 0,
    VASHISTA_ROUTING_BOUND = 1,
    VASHISTA_ROUTING_SKETCH = 2,
    VASHISTA_ROUTING_HIER_BOUND = 3
} vashista_routing;
typedef enum vashista_group_routing { VASHISTA_GROUP_PER_HEAD = 0, VASHISTA_GROUP_SHARED = 1 } vashista_group_routing;
typedef enum vashista_policy {
    VASHISTA_POLICY_NONE = 0,  /* report the bound only */
    VASHISTA_POLICY_DENSE = 1, /* dense attention for heads over the tolerance */
    VASHISTA_POLICY_WIDEN = 2  /* retry once with a wider compiled variant, then dense */
} vashista_policy;
/* Whether a head's error_bound is a theorem about its sparse output. Anything but
 * VASHISTA_CERTIFIED reports error_bound = +INFINITY, and policies dense and widen treat
 * the head as over the tolerance. */
typedef enum vashista_certificate {
    VASHISTA_CERTIFIED = 0,                /* ||out_sparse - exact dense|| <= error_bound */
    VASHISTA_UNCERTIFIED_MEAN_ROUTING = 1, /* mean-key page scores are estimates, not bounds */
    VASHISTA_UNCERTIFIED_SOLVER = 2,       /* fw; sparsemax with an outside score above its threshold */
    VASHISTA_UNCERTIFIED_STALE = 3,        /* a page holds more of the sequence's tokens than were summarized */
    VASHISTA_UNCERTIFIED_OVERFLOW = 4      /* scores or values beyond f32's range: no finite bound */
} vashista_certificate;

/* What a head's step ended as. */
typedef enum vashista_policy_taken {
    VASHISTA_TAKEN_SPARSE = 0,   /* sparse result, bound within tolerance */
    VASHISTA_TAKEN_REPORTED = 1, /* sparse result, bound over tolerance (policy none) */
    VASHISTA_TAKEN_WIDENED = 2,  /* wider sparse result, bound within tolerance */
    VASHISTA_TAKEN_DENSE = 3     /* dense result */
} vashista_policy_taken;

typedef struct vashista_cache_desc {
    size_t struct_size; /* sizeof(vashista_cache_desc) */
    int32_t batch;      /* sequences */
    int32_t kv_heads;
    int32_t head_dim;
    int32_t page_size;
    int32_t num_pages; /* physical pages in k_pages / v_pages */
    int32_t max_pages; /* columns of the block table */
    vashista_dtype kv_dtype;
    vashista_dtype summary_dtype;
    vashista_layout layout;
    void *k_pages; /* caller-owned, num_pages pages in `layout` */
    void *v_pages;
    const int32_t *page_table; /* caller-owned [batch][max_pages]; read at each call */
    /* The token sketch for sketch routing, kept by vashista_append: 0 for none, or 8 or 4
     * bits per key channel with one scale per sketch_group channels (sketch_group divides
     * head_dim). D * bits / 8 + 2 * D / sketch_group bytes per token and KV head. */
    int32_t sketch_bits;
    int32_t sketch_group;
    /* Super-page boxes for hier_bound routing, kept by vashista_append: 0 for none, or R, the
     * logical pages per super-page. Each sequence keeps, per super-page and KV head, the f32 box
     * over its pages' boxes: batch x ceil(max_pages / R) x kv_heads x 2 x head_dim floats. A
     * super-page's box belongs to its sequence (page summaries belong to physical pages): if a
     * page it covers is summarized again through another sequence, or the block table maps one
     * of its entries to another page, a decode reports the sequence VASHISTA_UNCERTIFIED_STALE
     * until vashista_append, vashista_summarize or vashista_share_prefix of that sequence
     * rebuilds its boxes (vashista_share_prefix(seq, appended) rebuilds all of them). */
    int32_t super_pages;
} vashista_cache_desc;

typedef struct vashista_cache vashista_cache;

vashista_status vashista_cache_create(const vashista_cache_desc *desc, vashista_cache **cache);
void vashista_cache_destroy(vashista_cache *cache);
/* Bytes a cache of `desc` allocates (summaries, sketch and bookkeeping; the KV pages are the
 * caller's): proportional to num_pages, plus per sequence a few bytes and, with super_pages,
 * its super-page boxes and the block table's width in bookkeeping. 0 for a bad desc. */
size_t vashista_cache_memory_size(const vashista_cache_desc *desc);

/* Writes tokens [start, start + count) of sequence `seq` into their pages and updates
 * the summaries of exactly the pages they touch. k and v: [count][kv_heads][head_dim]
 * in kv_dtype. start may not exceed the tokens already appended to `seq`. */
vashista_status vashista_append(vashista_cache *cache, int32_t seq, int32_t start, int32_t count, const void *k,
                                const void *v);
/* Summarizes tokens [start, start + count) of sequence `seq` that the caller has already
 * written into its pages (engines write their own KV): the same as vashista_append without
 * the copy. The tokens are read from the pages the block table maps them to and checked for
 * NaN and Inf. start may not exceed the tokens already summarized for `seq`. */
vashista_status vashista_summarize(vashista_cache *cache, int32_t seq, int32_t start, int32_t count);
/* Cuts sequence `seq` back to its first new_len tokens (rolling back a speculative step,
 * reusing a slot with new_len = 0) and recomputes the summary of the page the cut falls in.
 * new_len may not exceed the tokens summarized. */
vashista_status vashista_truncate(vashista_cache *cache, int32_t seq, int32_t new_len);
/* Sequence `seq` now holds its first `tokens` tokens in pages that were summarized through
 * other sequences (a cached prefix the block table maps): no kernel runs and nothing is
 * read from the pages. Every page the sequence holds tokens in must have a summary of at
 * least as many tokens as the sequence holds there, else nothing changes and the error
 * names the page. Decode later reports VASHISTA_UNCERTIFIED_STALE for a sequence if one of
 * its pages has since been summarized over fewer tokens (truncated through another
 * sequence); a page rewritten through another sequence and summarized again describes what
 * it now holds, for every sequence that maps it. */
vashista_status vashista_share_prefix(vashista_cache *cache, int32_t seq, int32_t tokens);
/* Tokens appended or summarized so far to `seq`, or -1 for a bad argument. */
int32_t vashista_appended_tokens(const vashista_cache *cache, int32_t seq);

typedef struct vashista_decode_config {
    size_t struct_size; /* sizeof(vashista_decode_config); vashista_decode_config_default sets it */
    int32_t top_pages;  /* P */
    int32_t top_tokens; /* K_c */
    vashista_solver solver;
    vashista_routing routing;
    vashista_group_routing group_routing;
    vashista_policy policy;
    float tolerance;            /* largest error bound accepted without the policy */
    float scale;                /* 0: 1/sqrt(head_dim) */
    int32_t solver_steps;       /* eg, fw: N */
    float solver_eta;           /* eg */
    float solver_tau;           /* fw, sparsemax */
    int32_t sink_pages;         /* first pages of each sequence, always routed; count toward P */
    int32_t local_pages;        /* last pages of each sequence, always routed; count toward P */
    int32_t relative_tolerance; /* 1: accept a head when bound <= tolerance * ||out|| of the exact
                                   dense answer (checked as bound <= tolerance * (||out_sparse|| -
                                   bound)); 0: bound <= tolerance */
    int32_t super_expand;       /* hier_bound: Q, the super-pages each head expands (default 8) */
} vashista_decode_config;

/* P = 64, K_c = 128, softmax, bound routing, per-head groups, policy dense, tolerance 1e-3,
 * super_expand 8, one sink page and two local pages (on real models, routing without them lost the
 * attention sink: quality/README.md). */
void vashista_decode_config_default(vashista_decode_config *config);

/* Per head, about its sparse step (also for heads whose answer came from dense). */
typedef struct vashista_head_diag {
    size_t struct_size; /* written by the library: sizeof(vashista_head_diag) */
    float support_gap;  /* Δ̂ */
    float leakage;      /* L: an upper bound in bound routing, an estimate in mean routing */
    float error_bound;  /* bound on ||o_sparse - o_dense||, f32 rounding included; sparsemax:
                           0 when it equals sparsemax over all tokens; +INFINITY when uncertified */
    int32_t candidates;
    int32_t policy_taken; /* vashista_policy_taken */
    float fw_gap;
    int32_t certificate; /* vashista_certificate */
} vashista_head_diag;

/* One decode step. q: [batch][q_heads][head_dim] f32, q_heads a multiple of kv_heads.
 * A head that falls back computes dense attention with its solver's meaning: softmax,
 * or eg's softmax at temperature N * eta; lse is (1/beta) log sum exp(beta s) with beta
 * that temperature (1 for softmax), for merging partial results. fw and sparsemax have no
 * dense kernel: they take policy none. A sequence that maps a page whose summary covers
 * fewer of the page's tokens than the sequence holds there (never summarized, or truncated
 * through another sequence) is reported VASHISTA_UNCERTIFIED_STALE; a remapped entry whose
 * page's summary covers its tokens is not (summaries belong to physical pages).
 * seq_lens: [batch], each in [1, tokens appended]. out: [batch][q_heads][head_dim]
 * f32; lse: [batch][q_heads] (may be NULL); diag: [batch][q_heads] (may be NULL). */
vashista_status vashista_decode(vashista_cache *cache, const vashista_decode_config *config, const float *q,
                                int32_t q_heads, const int32_t *seq_lens, float *out, float *lse,
                                vashista_head_diag *diag);

/* vashista_decode, also writing each head's candidate set: candidates
 * [batch][q_heads][top_tokens] token positions in increasing order, -1 past the last
 * (may be NULL). For a head that fell back to dense, its sparse candidates. */
vashista_status vashista_decode_with_candidates(vashista_cache *cache, const vashista_decode_config *config,
                                                const float *q, int32_t q_heads, const int32_t *seq_lens, float *out,
                                                float *lse, vashista_head_diag *diag, int32_t *candidates);

/* Dense decode attention over all tokens: the baseline and the fallback. */
vashista_status vashista_dense(vashista_cache *cache, const float *q, int32_t q_heads, const int32_t *seq_lens,
                               float scale, float *out, float *lse);

/* ---- Plan and run (for engines) ----------------------------------------------------
 * A plan is made once per (cache, decode config, query layout): it validates them, picks
 * the compiled variants and sizes the workspace. vashista_run then decodes one step with
 * the caller's workspace: no allocation, no variant search, and of validation only what
 * changes per step (q finite, seq_lens in range, the block table's entries for the pages in
 * use). A step's work follows the longest sequence in the batch, not the block table's
 * width. Plans are immutable: several threads may run one plan, each with its own
 * workspace, while no append, summarize or truncate changes its cache. A plan refers to its
 * cache: destroy the plan first. */
typedef struct vashista_plan vashista_plan;

typedef struct vashista_plan_desc {
    size_t struct_size; /* sizeof(vashista_plan_desc) */
    int32_t q_heads;    /* a multiple of the cache's kv_heads */
    vashista_dtype q_dtype;
    vashista_dtype out_dtype;
    /* Element strides of q and out between sequences and between heads; head_dim elements of
     * one head are contiguous. 0: contiguous [batch][q_heads][head_dim]. */
    int64_t q_stride_seq, q_stride_head;
    int64_t out_stride_seq, out_stride_head;
} vashista_plan_desc;

/* f32 q and out, contiguous, q_heads query heads. */
void vashista_plan_desc_default(vashista_plan_desc *desc, int32_t q_heads);
vashista_status vashista_plan_create(vashista_cache *cache, const vashista_decode_config *config,
                                     const vashista_plan_desc *desc, vashista_plan **plan);
void vashista_plan_destroy(vashista_plan *plan);
/* Bytes of workspace vashista_run needs (aligned to 64 bytes by the caller or not: the
 * library aligns within it, and the size includes the slack for that). The kernels' share
 * is sized for the library's pool as it is when the plan is made; a run whose parallel
 * loops use more threads at once (a larger pool set later, or an engine's parallel-for)
 * may take the rest from the system allocator. */
size_t vashista_plan_workspace_size(const vashista_plan *plan);

/* One decode step of every sequence of the plan's cache. page_table: [batch][max_pages] as
 * in vashista_cache_desc (NULL: the cache's). q and out in the plan's dtypes and strides;
 * lse [batch][q_heads] f32, diag [batch][q_heads] and candidates [batch][q_heads][top_tokens]
 * may be NULL. On an error nothing has been written to out, lse, diag or candidates. */
vashista_status vashista_run(const vashista_plan *plan, void *workspace, size_t workspace_size,
                             const int32_t *page_table, const void *q, const int32_t *seq_lens, void *out, float *lse,
                             vashista_head_diag *diag, int32_t *candidates);

/* ---- Threads ---------------------------------------------------------------------------
 * The kernels run their parallel loops on the library's thread pool. An engine can bound it
 * or replace it with its own parallel-for. Both settings are process-wide (for this kernel
 * library) and are best made before the first decode. */

/* Threads of the library's pool: 0 for one per CPU core (the default), 1 to run every
 * kernel serially on the calling thread. Returns the previous setting, or -1 for n < 0. */
int32_t vashista_set_num_threads(int32_t n);

/* An engine's parallel-for: runs task(task_ctx, i) for every i in [0, count), in any order
 * and on any threads, and returns 0 when every call returned 0 (otherwise one of their
 * nonzero results). It may run the calls on the calling thread. */
typedef int (*vashista_task_fn)(void *task_ctx, int32_t index);
typedef int (*vashista_parallel_for_fn)(void *engine_ctx, int32_t count, vashista_task_fn task, void *task_ctx);
/* Routes the kernels' parallel loops through `parallel_for` (NULL: back to the library's
 * pool). engine_ctx is passed through. */
void vashista_set_parallel_for(vashista_parallel_for_fn parallel_for, void *engine_ctx);

/* The message of the last error on this thread ("" after a success). */
const char *vashista_last_error(void);
const char *vashista_status_name(vashista_status status);
/* The compiled variants, one per line (a variant compiled for a GPU ends "(GPU: cuda)",
 * "(GPU: opencl)", ...); returns the length written without the NUL. */
size_t vashista_list_variants(char *buffer, size_t capacity);

#ifdef __cplusplus
}
#endif

#endif /* VASHISTA_H */
