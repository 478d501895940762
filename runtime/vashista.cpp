#include "vashista.h"

#include "HalideBuffer.h"
#include "dtype_halide.h"
#include "method_types.h"
#include "variants.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <vector>

using Halide::Runtime::Buffer;

namespace {

thread_local std::string g_last_error;

// Carries a status and message from deep inside to the C boundary.
struct Failure {
    vashista_status status;
    std::string message;
};

template <typename... Args>
[[noreturn]] void fail(vashista_status status, Args &&...args) {
    std::ostringstream os;
    (os << ... << args);
    throw Failure{status, os.str()};
}

template <typename F>
vashista_status guarded(F &&body) {
    try {
        body();
        g_last_error.clear();
        return VASHISTA_OK;
    } catch (const Failure &f) {
        g_last_error = f.message;
        return f.status;
    } catch (const std::bad_alloc &) {
        g_last_error = "out of memory";
        return VASHISTA_ERROR_OUT_OF_MEMORY;
    }
}

const char *dtype_name(vashista_dtype t) { return vashista::short_name(vashista::DType(t)); }

// The integer a C caller stored in an enum field: reading an out-of-range value through
// the C++ enum type is undefined, so validation reads the bits.
template <typename E>
int raw(const E &e) {
    static_assert(sizeof(E) == sizeof(int), "C enums are int-sized");
    int v;
    std::memcpy(&v, &e, sizeof v);
    return v;
}

bool valid_dtype(int t) { return t >= VASHISTA_DTYPE_F32 && t <= VASHISTA_DTYPE_BF16; }
int dtype_bytes(vashista_dtype t) { return vashista::dtype_bytes(vashista::DType(t)); }

halide_type_t halide_type(vashista_dtype t) { return vashista::halide_runtime_type(vashista::DType(t)); }

// NaN or Inf in an element of `t`.
bool non_finite(const uint8_t *p, vashista_dtype t) {
    if (t == VASHISTA_DTYPE_F32) {
        float x;
        std::memcpy(&x, p, 4);
        return !std::isfinite(x);
    }
    uint16_t bits;
    std::memcpy(&bits, p, 2);
    const uint16_t exponent = t == VASHISTA_DTYPE_F16 ? 0x7c00 : 0x7f80;
    return (bits & exponent) == exponent;
}

template <typename T>
void require_pointer(const T *p, const char *name) {
    if (!p) fail(VASHISTA_ERROR_NULL_POINTER, name, " is NULL");
}

struct FreeDeleter {
    void operator()(void *p) const { std::free(p); }
};
using HostMemory = std::unique_ptr<void, FreeDeleter>;

// Whether the kernels can address a buffer of `elements` whose outermost dimension has
// extent `outer`: 2^31 - 1 elements, or with large_buffers an int32 outermost stride.
void require_addressable(int64_t elements, int64_t outer, const char *what) {
    const bool large = vashista::runtime::large_buffers();
    if (large ? elements / outer > INT32_MAX : elements > INT32_MAX)
        fail(VASHISTA_ERROR_OUT_OF_RANGE, what, " hold ", elements, " elements; ",
             large ? "one dimension's stride is an int32"
                   : "kernels compiled without Halide's large_buffers feature address at most 2^31 - 1 "
                     "(build the kernel library with TARGET host-large_buffers)");
}

// A zeroed host buffer of `sizes` (innermost first) in memory owned by `memory`. calloc
// lets a failed allocation come back as a status.
Buffer<void> zeroed_buffer(HostMemory &memory, halide_type_t type, const std::vector<int64_t> &sizes,
                           const char *what) {
    int64_t elements = 1;
    for (int64_t s : sizes)
        if (__builtin_mul_overflow(elements, s, &elements))
            fail(VASHISTA_ERROR_OUT_OF_RANGE, what, " would hold more than 2^63 elements");
    memory.reset(std::calloc(size_t(elements), type.bytes()));
    if (!memory)
        fail(VASHISTA_ERROR_OUT_OF_MEMORY, "cannot allocate ", double(elements) * type.bytes(), " bytes for ", what);
    require_addressable(elements, sizes.back(), what);
    return Buffer<void>(type, memory.get(), std::vector<int>(sizes.begin(), sizes.end()));
}

}  // namespace

struct vashista_cache {
    vashista_cache_desc desc;
    std::vector<int32_t> appended;  // tokens appended per sequence
    HostMemory summary_memory, value_norm_memory, key_absmax_memory;
    Buffer<void> summary;      // (lane, d, c, blk, h, b)
    Buffer<float> value_norm;  // (j, h, b)
    Buffer<float> key_absmax;  // (j, h, b)
    // The token sketch (sketch routing), or one zero element of each when the cache keeps none.
    HostMemory sketch_memory, sketch_scale_memory;
    Buffer<void> sketch;        // (s, byte, j, h, b) uint8
    Buffer<void> sketch_scale;  // (s, group, j, h, b) bf16
    const vashista::runtime::SketchVariant *sketch_kernel = nullptr;
    // What each (sequence, logical page) summary was computed from: the physical page and
    // that page's write count, so a remapped block table or a page another sequence
    // rewrote is seen at decode (vashista_certificate STALE).
    std::vector<int32_t> summarized_page;      // [b][j], -1 before any append
    std::vector<uint32_t> summarized_version;  // [b][j]
    std::vector<uint32_t> page_version;        // [physical page]: appends that wrote into it
    const vashista::runtime::SummarizeVariant *summarize = nullptr;
    // The summary layout's pages per block: the one the library's decode kernels for this
    // cache's shape read (summary_block of their Generator).
    vashista::SummaryLayout summary_layout{0, 0, 0, 0};

    Buffer<void> kv_buffer(void *data) const {
        const auto &d = desc;
        return d.layout == VASHISTA_LAYOUT_HND
                   ? Buffer<void>(halide_type(d.kv_dtype), data, d.head_dim, d.page_size, d.kv_heads, d.num_pages)
                   : Buffer<void>(halide_type(d.kv_dtype), data, d.head_dim, d.kv_heads, d.page_size, d.num_pages);
    }
    Buffer<int32_t> page_table() const {
        return Buffer<int32_t>(const_cast<int32_t *>(desc.page_table), desc.max_pages, desc.batch);
    }
    size_t token_offset(int32_t page, int32_t slot, int32_t head) const {
        const auto &d = desc;
        return d.layout == VASHISTA_LAYOUT_HND ? ((size_t(page) * d.kv_heads + head) * d.page_size + slot) * d.head_dim
                                               : ((size_t(page) * d.page_size + slot) * d.kv_heads + head) * d.head_dim;
    }
};

namespace {

using namespace vashista::runtime;

std::string list_variants() {
    std::ostringstream os;
    for (const auto &v : decode_variants()) os << "decode " << v.name << "\n";
    for (const auto &v : dense_variants()) os << "dense " << v.name << "\n";
    for (const auto &v : summarize_variants()) os << "summarize " << v.name << "\n";
    for (const auto &v : sketch_variants()) os << "sketch " << v.name << "\n";
    return os.str();
}

void validate_desc(const vashista_cache_desc *d) {
    require_pointer(d, "desc");
    require_pointer(d->k_pages, "desc->k_pages");
    require_pointer(d->v_pages, "desc->v_pages");
    require_pointer(d->page_table, "desc->page_table");
    auto positive = [](int32_t v, const char *name) {
        if (v <= 0) fail(VASHISTA_ERROR_INVALID_ARGUMENT, name, " = ", v, " must be positive");
    };
    positive(d->batch, "desc->batch");
    positive(d->kv_heads, "desc->kv_heads");
    positive(d->head_dim, "desc->head_dim");
    positive(d->page_size, "desc->page_size");
    positive(d->num_pages, "desc->num_pages");
    positive(d->max_pages, "desc->max_pages");
    if (!valid_dtype(raw(d->kv_dtype)))
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->kv_dtype = ", raw(d->kv_dtype), " is not a vashista_dtype");
    if (!valid_dtype(raw(d->summary_dtype)))
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->summary_dtype = ", raw(d->summary_dtype),
             " is not a vashista_dtype");
    if (raw(d->layout) != VASHISTA_LAYOUT_HND && raw(d->layout) != VASHISTA_LAYOUT_NHD)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->layout = ", raw(d->layout), " is not HND (0) or NHD (1)");
    if (d->sketch_bits != 0 && !vashista::valid_sketch_bits(d->sketch_bits))
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->sketch_bits = ", d->sketch_bits, " is not 0 (no sketch), 4 or 8");
    if (d->sketch_bits != 0) {
        const std::string why = vashista::sketch_config_error(d->head_dim, d->sketch_bits, d->sketch_group);
        if (!why.empty()) fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->", why);
    }
}

const SketchVariant &find_sketch(const vashista_cache_desc &d) {
    for (const auto &v : sketch_variants())
        if (v.head_dim == d.head_dim && v.page_size == d.page_size && v.kv_dtype == d.kv_dtype &&
            v.layout == d.layout && v.sketch_bits == d.sketch_bits && v.sketch_group == d.sketch_group)
            return v;
    fail(VASHISTA_ERROR_NO_VARIANT, "no sketch kernel for head_dim=", d.head_dim, " page_size=", d.page_size, " kv ",
         dtype_name(d.kv_dtype), d.layout == VASHISTA_LAYOUT_HND ? " HND" : " NHD", " sketch_bits=", d.sketch_bits,
         " sketch_group=", d.sketch_group, "; compiled variants:\n", list_variants());
}

const SummarizeVariant &find_summarize(const vashista_cache_desc &d) {
    for (const auto &v : summarize_variants())
        if (v.head_dim == d.head_dim && v.page_size == d.page_size && v.kv_dtype == d.kv_dtype &&
            v.summary_dtype == d.summary_dtype && v.layout == d.layout)
            return v;
    fail(VASHISTA_ERROR_NO_VARIANT, "no summarize kernel for head_dim=", d.head_dim, " page_size=", d.page_size, " kv ",
         dtype_name(d.kv_dtype), " summary ", dtype_name(d.summary_dtype),
         d.layout == VASHISTA_LAYOUT_HND ? " HND" : " NHD", "; compiled variants:\n", list_variants());
}

// The summary block the library's decode kernels for caches like `d` read; they must agree,
// since one cache holds one summary layout.
int summary_block_for(const vashista_cache_desc &d) {
    int block = 0;
    for (const auto &v : decode_variants()) {
        if (v.head_dim != d.head_dim || v.page_size != d.page_size || v.kv_dtype != d.kv_dtype ||
            v.summary_dtype != d.summary_dtype || v.layout != d.layout)
            continue;
        if (block && v.summary_block != block)
            fail(VASHISTA_ERROR_NO_VARIANT, "the library's decode kernels for head_dim=", d.head_dim,
                 " page_size=", d.page_size, " read summary blocks of ", block, " and ", v.summary_block, " pages (",
                 v.name, "); one cache holds one summary layout, so a library needs one per shape");
        block = v.summary_block;
    }
    return block ? block : vashista::kSummaryBlockDefault;
}

void validate_pages(const vashista_cache &c, int32_t seq, int32_t first_page, int32_t end_page) {
    for (int32_t j = first_page; j < end_page; ++j) {
        const int32_t page = c.desc.page_table[size_t(seq) * c.desc.max_pages + j];
        if (page < 0 || page >= c.desc.num_pages)
            fail(VASHISTA_ERROR_OUT_OF_RANGE, "page_table[", seq, "][", j, "] = ", page,
                 " is not below num_pages = ", c.desc.num_pages, (page < 0 ? " (or is negative)" : ""));
    }
}

struct Shape {
    int32_t batch, group;
};

Shape validate_step(const vashista_cache *c, const float *q, int32_t q_heads, const int32_t *seq_lens,
                    const float *out) {
    require_pointer(c, "cache");
    require_pointer(q, "q");
    require_pointer(seq_lens, "seq_lens");
    require_pointer(out, "out");
    const auto &d = c->desc;
    if (q_heads <= 0 || q_heads % d.kv_heads != 0)
        fail(VASHISTA_ERROR_SHAPE_MISMATCH, "q_heads = ", q_heads,
             " is not a positive multiple of kv_heads = ", d.kv_heads);
    for (int32_t b = 0; b < d.batch; ++b) {
        const int32_t len = seq_lens[b];
        if (len < 1 || int64_t(len) > int64_t(d.max_pages) * d.page_size)
            fail(VASHISTA_ERROR_OUT_OF_RANGE, "seq_lens[", b, "] = ", len,
                 " is not in [1, max_pages * page_size = ", int64_t(d.max_pages) * d.page_size, "]");
        if (len > c->appended[b])
            fail(VASHISTA_ERROR_OUT_OF_RANGE, "seq_lens[", b, "] = ", len, " exceeds the ", c->appended[b],
                 " tokens appended to sequence ", b, " through vashista_append (summaries would be stale)");
        validate_pages(*c, b, 0, (len + d.page_size - 1) / d.page_size);
    }
    const size_t n = size_t(d.batch) * q_heads * d.head_dim;
    for (size_t i = 0; i < n; ++i)
        if (!std::isfinite(q[i])) {
            const size_t row = i / d.head_dim;
            fail(VASHISTA_ERROR_NON_FINITE, "q[", row / q_heads, "][", row % q_heads, "][", i % d.head_dim,
                 "] = ", q[i], " is not finite");
        }
    return {d.batch, q_heads / d.kv_heads};
}

const DenseVariant &find_dense(const vashista_cache_desc &d, int32_t group) {
    for (const auto &v : dense_variants())
        if (v.head_dim == d.head_dim && v.page_size == d.page_size && v.group_size == group &&
            v.kv_dtype == d.kv_dtype && v.layout == d.layout)
            return v;
    fail(VASHISTA_ERROR_NO_VARIANT, "no dense kernel for head_dim=", d.head_dim, " page_size=", d.page_size,
         " group_size=", group, " kv ", dtype_name(d.kv_dtype), d.layout == VASHISTA_LAYOUT_HND ? " HND" : " NHD",
         "; compiled variants:\n", list_variants());
}

bool decode_matches(const DecodeVariant &v, const vashista_cache &c, int32_t group, const vashista_decode_config &cfg) {
    const vashista_cache_desc &d = c.desc;
    bool ok = v.summary_block == c.summary_layout.block && v.head_dim == d.head_dim && v.page_size == d.page_size &&
              v.group_size == group && v.kv_dtype == d.kv_dtype && v.summary_dtype == d.summary_dtype &&
              v.layout == d.layout && v.solver == cfg.solver && v.routing == cfg.routing &&
              v.group_routing == cfg.group_routing && v.sink_pages == cfg.sink_pages &&
              v.local_pages == cfg.local_pages;
    if (ok && cfg.routing == VASHISTA_ROUTING_SKETCH)
        ok = v.sketch_bits == d.sketch_bits && v.sketch_group == d.sketch_group;
    if (ok && (cfg.solver == VASHISTA_SOLVER_EG || cfg.solver == VASHISTA_SOLVER_FW))
        ok = v.solver_steps == cfg.solver_steps;
    if (ok && cfg.solver == VASHISTA_SOLVER_EG) ok = std::fabs(v.solver_eta - cfg.solver_eta) < 1e-6f;
    if (ok && (cfg.solver == VASHISTA_SOLVER_FW || cfg.solver == VASHISTA_SOLVER_SPARSEMAX))
        ok = std::fabs(v.solver_tau - cfg.solver_tau) < 1e-6f;
    return ok;
}

const DecodeVariant &find_decode(const vashista_cache &c, int32_t group, const vashista_decode_config &cfg) {
    const vashista_cache_desc &d = c.desc;
    for (const auto &v : decode_variants())
        if (decode_matches(v, c, group, cfg) && v.top_pages == cfg.top_pages && v.top_tokens == cfg.top_tokens)
            return v;
    fail(VASHISTA_ERROR_NO_VARIANT, "no decode kernel for head_dim=", d.head_dim, " page_size=", d.page_size,
         " top_pages=", cfg.top_pages, " top_tokens=", cfg.top_tokens, " group_size=", group, " kv ",
         dtype_name(d.kv_dtype), " summary ", dtype_name(d.summary_dtype),
         d.layout == VASHISTA_LAYOUT_HND ? " HND" : " NHD", " solver=", int(cfg.solver), " routing=", int(cfg.routing),
         " group_routing=", int(cfg.group_routing), " sink_pages=", cfg.sink_pages, " local_pages=", cfg.local_pages,
         cfg.routing == VASHISTA_ROUTING_SKETCH
             ? " sketch_bits=" + std::to_string(d.sketch_bits) + " sketch_group=" + std::to_string(d.sketch_group)
             : std::string(),
         "; compiled variants:\n", list_variants());
}

// The narrowest compiled variant with at least twice P and K_c, or null.
const DecodeVariant *find_wider(const vashista_cache &c, int32_t group, const vashista_decode_config &cfg) {
    const DecodeVariant *best = nullptr;
    for (const auto &v : decode_variants())
        if (decode_matches(v, c, group, cfg) && v.top_pages >= 2 * cfg.top_pages &&
            v.top_tokens >= 2 * cfg.top_tokens &&
            (!best || v.top_pages * v.top_tokens < best->top_pages * best->top_tokens))
            best = &v;
    return best;
}

void check_kernel(KernelCall &call, const char *name) {
    const int rc = call.run();
    if (rc == KernelCall::kBindError) fail(VASHISTA_ERROR_KERNEL, call.error());
    if (rc != 0) fail(VASHISTA_ERROR_KERNEL, "kernel ", name, " returned Halide error ", rc);
}

struct SparseResult {
    Buffer<float> out, lse, diag;
    Buffer<int32_t> candidates, pages;
};

SparseResult run_sparse(vashista_cache *c, const DecodeVariant &v, Buffer<float> &qb, Buffer<int32_t> &lens,
                        float scale) {
    const auto &d = c->desc;
    const int G = v.group_size;
    SparseResult r{Buffer<float>(d.head_dim, G, d.kv_heads, d.batch), Buffer<float>(G, d.kv_heads, d.batch),
                   Buffer<float>(vashista::kDiagFields, G, d.kv_heads, d.batch),
                   Buffer<int32_t>(v.top_tokens, G, d.kv_heads, d.batch),
                   Buffer<int32_t>(v.top_pages, G, d.kv_heads, d.batch)};
    Buffer<void> k = c->kv_buffer(d.k_pages), vv = c->kv_buffer(d.v_pages);
    Buffer<int32_t> pt = c->page_table();
    KernelCall call(v.kernel);
    call.buffer("q", qb.raw_buffer())
        .buffer("k_cache", k.raw_buffer())
        .buffer("v_cache", vv.raw_buffer())
        .buffer("page_table", pt.raw_buffer())
        .buffer("seq_lens", lens.raw_buffer())
        .buffer("summary", c->summary.raw_buffer())
        .buffer("value_norm", c->value_norm.raw_buffer())
        .buffer("key_absmax", c->key_absmax.raw_buffer())
        .buffer("sketch", c->sketch.raw_buffer())
        .buffer("sketch_scale", c->sketch_scale.raw_buffer())
        .scalar("scale", scale)
        .buffer("out", r.out.raw_buffer())
        .buffer("lse", r.lse.raw_buffer())
        .buffer("diag", r.diag.raw_buffer())
        .buffer("candidates", r.candidates.raw_buffer())
        .buffer("pages", r.pages.raw_buffer());
    check_kernel(call, v.name);
    return r;
}

// Dense attention for the KV heads (b, h) listed, each through crops of the buffers.
void run_dense(vashista_cache *c, const DenseVariant &v, Buffer<float> &qb, Buffer<int32_t> &lens, float scale,
               Buffer<float> &out, Buffer<float> &lse, const std::vector<std::pair<int, int>> *only) {
    const auto &d = c->desc;
    Buffer<void> k = c->kv_buffer(d.k_pages), vv = c->kv_buffer(d.v_pages);
    Buffer<int32_t> pt = c->page_table();
    auto dense = [&](Buffer<float> &q1, Buffer<void> &k1, Buffer<void> &v1, Buffer<int32_t> &p1, Buffer<int32_t> &s1,
                     Buffer<float> &o1, Buffer<float> &l1) {
        KernelCall call(v.kernel);
        call.buffer("q", q1.raw_buffer())
            .buffer("k_cache", k1.raw_buffer())
            .buffer("v_cache", v1.raw_buffer())
            .buffer("page_table", p1.raw_buffer())
            .buffer("seq_lens", s1.raw_buffer())
            .scalar("scale", scale)
            .buffer("out", o1.raw_buffer())
            .buffer("lse", l1.raw_buffer());
        check_kernel(call, v.name);
    };
    if (!only) {
        dense(qb, k, vv, pt, lens, out, lse);
        return;
    }
    const int head_axis = d.layout == VASHISTA_LAYOUT_HND ? 2 : 1;  // (d, s, h, page) or (d, h, s, page)
    for (auto [b, h] : *only) {
        Buffer<float> q1 = qb.cropped(2, h, 1).cropped(3, b, 1);
        Buffer<float> o1 = out.cropped(2, h, 1).cropped(3, b, 1);
        Buffer<float> l1 = lse.cropped(1, h, 1).cropped(2, b, 1);
        Buffer<void> k1 = k.cropped(head_axis, h, 1), v1 = vv.cropped(head_axis, h, 1);
        Buffer<int32_t> p1 = pt.cropped(1, b, 1), s1 = lens.cropped(0, b, 1);
        dense(q1, k1, v1, p1, s1, o1, l1);
    }
}

void validate_config(const vashista_decode_config *cfg) {
    require_pointer(cfg, "config");
    if (cfg->top_pages < 1)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->top_pages = ", cfg->top_pages, " must be >= 1");
    if (cfg->top_tokens < 1)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->top_tokens = ", cfg->top_tokens, " must be >= 1");
    const int solver = raw(cfg->solver), routing = raw(cfg->routing), group = raw(cfg->group_routing),
              policy = raw(cfg->policy);
    if (solver < VASHISTA_SOLVER_SOFTMAX || solver > VASHISTA_SOLVER_SPARSEMAX)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->solver = ", solver, " is not a vashista_solver");
    if (routing < VASHISTA_ROUTING_MEAN || routing > VASHISTA_ROUTING_SKETCH)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->routing = ", routing,
             " is not mean (0), bound (1) or sketch (2)");
    if (group != VASHISTA_GROUP_PER_HEAD && group != VASHISTA_GROUP_SHARED)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->group_routing = ", group, " is not per_head (0) or shared (1)");
    if (policy < VASHISTA_POLICY_NONE || policy > VASHISTA_POLICY_WIDEN)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->policy = ", policy, " is not none (0), dense (1) or widen (2)");
    if (!(cfg->tolerance >= 0) || !std::isfinite(cfg->tolerance))
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->tolerance = ", cfg->tolerance, " must be finite and >= 0");
    if (cfg->relative_tolerance != 0 && cfg->relative_tolerance != 1)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->relative_tolerance = ", cfg->relative_tolerance,
             " is not 0 (absolute) or 1 (relative to the output's norm)");
    if (!(cfg->scale >= 0) || !std::isfinite(cfg->scale))
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->scale = ", cfg->scale,
             " must be finite and >= 0 (0: 1/sqrt(head_dim))");
    if (cfg->sink_pages < 0 || cfg->local_pages < 0 || int64_t(cfg->sink_pages) + cfg->local_pages > cfg->top_pages)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->sink_pages = ", cfg->sink_pages,
             " and local_pages = ", cfg->local_pages,
             " must be >= 0 and together at most top_pages = ", cfg->top_pages);
    if ((solver == VASHISTA_SOLVER_FW || solver == VASHISTA_SOLVER_SPARSEMAX) && policy != VASHISTA_POLICY_NONE)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->policy = ", policy, " falls back to dense attention, which ",
             "computes softmax, not ", solver == VASHISTA_SOLVER_FW ? "fw" : "sparsemax",
             "; use policy none (0) and read each head's certificate");
}

// The softmax temperature of the solver: eg's N * eta (as its kernels form it), else 1.
float solver_temperature(const vashista_decode_config &cfg) {
    return cfg.solver == VASHISTA_SOLVER_EG ? vashista::eg_temperature(cfg.solver_steps, cfg.solver_eta) : 1.0f;
}

// Sequences whose summaries describe other keys than the block table now maps: a page
// remapped since its tokens were appended, or a physical page another sequence rewrote.
std::vector<char> stale_sequences(const vashista_cache &c, const int32_t *seq_lens) {
    const auto &d = c.desc;
    std::vector<char> stale(d.batch, 0);
    for (int32_t b = 0; b < d.batch; ++b)
        for (int32_t j = 0; j < (seq_lens[b] + d.page_size - 1) / d.page_size && !stale[b]; ++j) {
            const size_t at = size_t(b) * d.max_pages + j;
            const int32_t page = d.page_table[at];
            stale[b] = page != c.summarized_page[at] || c.page_version[page] != c.summarized_version[at];
        }
    return stale;
}

}  // namespace

extern "C" {

void vashista_decode_config_default(vashista_decode_config *config) {
    if (!config) return;
    *config = vashista_decode_config{64,
                                     128,
                                     VASHISTA_SOLVER_SOFTMAX,
                                     VASHISTA_ROUTING_BOUND,
                                     VASHISTA_GROUP_PER_HEAD,
                                     VASHISTA_POLICY_DENSE,
                                     1e-3f,
                                     0.0f,
                                     vashista::kSolverStepsDefault,
                                     vashista::kSolverEtaDefault,
                                     vashista::kSolverTauDefault,
                                     1,
                                     2,
                                     0};
}

vashista_status vashista_cache_create(const vashista_cache_desc *desc, vashista_cache **cache) {
    return guarded([&] {
        require_pointer(cache, "cache");
        *cache = nullptr;
        validate_desc(desc);
        auto c = std::make_unique<vashista_cache>();
        c->desc = *desc;
        c->summarize = &find_summarize(*desc);
        require_addressable(int64_t(desc->num_pages) * desc->kv_heads * desc->page_size * desc->head_dim,
                            desc->num_pages, "the K/V pages (num_pages x kv_heads x page_size x head_dim)");
        c->summary_layout = vashista::SummaryLayout{desc->head_dim, desc->max_pages, desc->kv_heads, desc->batch,
                                                    summary_block_for(*desc)};
        const auto extents = c->summary_layout.extents();
        c->summary = zeroed_buffer(c->summary_memory, halide_type(desc->summary_dtype),
                                   std::vector<int64_t>(extents.begin(), extents.end()),
                                   "page summaries (batch x max_pages x kv_heads x 3 x head_dim)");
        const std::vector<int64_t> per_page{desc->max_pages, desc->kv_heads, desc->batch};
        const halide_type_t f32(halide_type_float, 32);
        c->value_norm =
            zeroed_buffer(c->value_norm_memory, f32, per_page, "value norms (batch x max_pages x kv_heads)");
        c->key_absmax = zeroed_buffer(c->key_absmax_memory, f32, per_page, "key bounds (batch x max_pages x kv_heads)");
        const halide_type_t u8(halide_type_uint, 8), bf16(halide_type_bfloat, 16);
        if (desc->sketch_bits) {
            c->sketch_kernel = &find_sketch(*desc);
            const int64_t bytes = vashista::sketch_code_bytes(desc->head_dim, desc->sketch_bits);
            c->sketch = zeroed_buffer(c->sketch_memory, u8,
                                      {desc->page_size, bytes, desc->max_pages, desc->kv_heads, desc->batch},
                                      "the token sketch (batch x max_pages x page_size x kv_heads x code bytes)");
            c->sketch_scale = zeroed_buffer(
                c->sketch_scale_memory, bf16,
                {desc->page_size, desc->head_dim / desc->sketch_group, desc->max_pages, desc->kv_heads, desc->batch},
                "the token sketch's scales (batch x max_pages x page_size x kv_heads x groups)");
        } else {
            c->sketch = zeroed_buffer(c->sketch_memory, u8, {1, 1, 1, 1, 1}, "a placeholder sketch");
            c->sketch_scale = zeroed_buffer(c->sketch_scale_memory, bf16, {1, 1, 1, 1, 1}, "a placeholder sketch");
        }
        c->appended.assign(desc->batch, 0);
        c->summarized_page.assign(size_t(desc->batch) * desc->max_pages, -1);
        c->summarized_version.assign(size_t(desc->batch) * desc->max_pages, 0);
        c->page_version.assign(desc->num_pages, 0);
        *cache = c.release();
    });
}

void vashista_cache_destroy(vashista_cache *cache) { delete cache; }

int32_t vashista_appended_tokens(const vashista_cache *cache, int32_t seq) {
    if (!cache || seq < 0 || seq >= cache->desc.batch) return -1;
    return cache->appended[seq];
}

vashista_status vashista_append(vashista_cache *c, int32_t seq, int32_t start, int32_t count, const void *k,
                                const void *v) {
    return guarded([&] {
        require_pointer(c, "cache");
        require_pointer(k, "k");
        require_pointer(v, "v");
        const auto &d = c->desc;
        if (seq < 0 || seq >= d.batch)
            fail(VASHISTA_ERROR_INVALID_ARGUMENT, "seq = ", seq, " is not in [0, batch = ", d.batch, ")");
        if (count < 1) fail(VASHISTA_ERROR_INVALID_ARGUMENT, "count = ", count, " must be >= 1");
        if (start < 0 || start > c->appended[seq])
            fail(VASHISTA_ERROR_INVALID_ARGUMENT, "start = ", start,
                 " is not in [0, tokens appended = ", c->appended[seq], "]");
        if (int64_t(start) + count > int64_t(d.max_pages) * d.page_size)
            fail(VASHISTA_ERROR_OUT_OF_RANGE, "start + count = ", int64_t(start) + count,
                 " exceeds max_pages * page_size = ", int64_t(d.max_pages) * d.page_size);
        const int32_t first = start / d.page_size, last = (start + count - 1) / d.page_size;
        validate_pages(*c, seq, first, last + 1);
        const size_t row = size_t(d.head_dim) * dtype_bytes(d.kv_dtype);
        const size_t n = size_t(count) * d.kv_heads * d.head_dim;
        for (const auto *src : {static_cast<const uint8_t *>(k), static_cast<const uint8_t *>(v)})
            for (size_t i = 0; i < n; ++i)
                if (non_finite(src + i * dtype_bytes(d.kv_dtype), d.kv_dtype)) {
                    const size_t r = i / d.head_dim;
                    fail(VASHISTA_ERROR_NON_FINITE, src == k ? "k" : "v", "[", r / d.kv_heads, "][", r % d.kv_heads,
                         "][", i % d.head_dim, "] is not finite");
                }
        // Everything is valid: write the tokens, then summarize the touched pages. The
        // token count changes only once the summaries are in place.
        for (int32_t t = 0; t < count; ++t) {
            const int32_t pos = start + t;
            const int32_t page = d.page_table[size_t(seq) * d.max_pages + pos / d.page_size];
            for (int32_t h = 0; h < d.kv_heads; ++h) {
                const size_t src = (size_t(t) * d.kv_heads + h) * row;
                const size_t dst = c->token_offset(page, pos % d.page_size, h) * dtype_bytes(d.kv_dtype);
                std::memcpy(static_cast<uint8_t *>(d.k_pages) + dst, static_cast<const uint8_t *>(k) + src, row);
                std::memcpy(static_cast<uint8_t *>(d.v_pages) + dst, static_cast<const uint8_t *>(v) + src, row);
            }
        }
        const int touched_pages = last - first + 1;
        for (int i = 0; i < touched_pages; ++i) ++c->page_version[d.page_table[size_t(seq) * d.max_pages + first + i]];

        std::vector<int32_t> lens = c->appended;
        lens[seq] = std::max(lens[seq], start + count);
        Buffer<int32_t> touched(2, touched_pages);
        for (int i = 0; i < touched_pages; ++i) {
            touched(0, i) = seq;
            touched(1, i) = first + i;
        }
        Buffer<int32_t> lens_buffer(lens.data(), d.batch);
        Buffer<void> rows(halide_type(d.summary_dtype), d.head_dim, vashista::kSummaryChannels, d.kv_heads,
                          touched_pages);
        Buffer<float> norms(d.kv_heads, touched_pages), key_bounds(d.kv_heads, touched_pages);
        Buffer<void> kb = c->kv_buffer(d.k_pages), vb = c->kv_buffer(d.v_pages);
        Buffer<int32_t> pt = c->page_table();
        KernelCall summarize(c->summarize->kernel);
        summarize.buffer("k_cache", kb.raw_buffer())
            .buffer("v_cache", vb.raw_buffer())
            .buffer("page_table", pt.raw_buffer())
            .buffer("seq_lens", lens_buffer.raw_buffer())
            .buffer("touched", touched.raw_buffer())
            .buffer("summary", rows.raw_buffer())
            .buffer("value_norm", norms.raw_buffer())
            .buffer("key_absmax", key_bounds.raw_buffer());
        check_kernel(summarize, c->summarize->name);
        // The token sketch of the same pages: codes (s, byte, h, n), scales (s, group, h, n).
        Buffer<uint8_t> codes;
        Buffer<void> scales;
        if (c->sketch_kernel) {
            codes = Buffer<uint8_t>(d.page_size, vashista::sketch_code_bytes(d.head_dim, d.sketch_bits), d.kv_heads,
                                    touched_pages);
            scales = Buffer<void>(halide_type_t(halide_type_bfloat, 16), d.page_size, d.head_dim / d.sketch_group,
                                  d.kv_heads, touched_pages);
            KernelCall sketch(c->sketch_kernel->kernel);
            sketch.buffer("k_cache", kb.raw_buffer())
                .buffer("page_table", pt.raw_buffer())
                .buffer("seq_lens", lens_buffer.raw_buffer())
                .buffer("touched", touched.raw_buffer())
                .buffer("codes", codes.raw_buffer())
                .buffer("scales", scales.raw_buffer());
            check_kernel(sketch, c->sketch_kernel->name);
        }
        c->appended[seq] = lens[seq];
        const int bytes = dtype_bytes(d.summary_dtype);
        const uint8_t *src = static_cast<const uint8_t *>(rows.data());
        uint8_t *dst = static_cast<uint8_t *>(c->summary.data());
        const auto &sd = c->summary;
        for (int i = 0; i < touched_pages; ++i) {
            const int j = first + i;
            const size_t at = size_t(seq) * d.max_pages + j;
            c->summarized_page[at] = d.page_table[at];
            c->summarized_version[at] = c->page_version[d.page_table[at]];
            for (int h = 0; h < d.kv_heads; ++h) {
                c->value_norm(j, h, seq) = norms(h, i);
                c->key_absmax(j, h, seq) = key_bounds(h, i);
                for (int ch = 0; ch < vashista::kSummaryChannels; ++ch)
                    for (int dd = 0; dd < d.head_dim; ++dd) {
                        const size_t from =
                            ((size_t(i) * d.kv_heads + h) * vashista::kSummaryChannels + ch) * d.head_dim + dd;
                        const auto at_summary = c->summary_layout.coords(j, dd, ch, h, seq);
                        int64_t to = 0;
                        for (int k = 0; k < 6; ++k) to += at_summary[k] * sd.dim(k).stride();
                        std::memcpy(dst + to * bytes, src + from * bytes, bytes);
                    }
                if (c->sketch_kernel) {
                    c->sketch.sliced(4, seq).sliced(3, h).sliced(2, j).copy_from(codes.sliced(3, i).sliced(2, h));
                    c->sketch_scale.sliced(4, seq).sliced(3, h).sliced(2, j).copy_from(
                        scales.sliced(3, i).sliced(2, h));
                }
            }
        }
    });
}

vashista_status vashista_decode(vashista_cache *c, const vashista_decode_config *cfg, const float *q, int32_t q_heads,
                                const int32_t *seq_lens, float *out, float *lse, vashista_head_diag *diag) {
    return vashista_decode_with_candidates(c, cfg, q, q_heads, seq_lens, out, lse, diag, nullptr);
}

vashista_status vashista_decode_with_candidates(vashista_cache *c, const vashista_decode_config *cfg, const float *q,
                                                int32_t q_heads, const int32_t *seq_lens, float *out, float *lse,
                                                vashista_head_diag *diag, int32_t *candidates) {
    return guarded([&] {
        const Shape shape = validate_step(c, q, q_heads, seq_lens, out);
        validate_config(cfg);
        const auto &d = c->desc;
        const int G = shape.group;
        if (cfg->routing == VASHISTA_ROUTING_SKETCH && d.sketch_bits == 0)
            fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->routing = sketch (2) needs a cache that keeps a token ",
                 "sketch: create it with desc->sketch_bits = 8 or 4 and desc->sketch_group");
        const DecodeVariant &variant = find_decode(*c, G, *cfg);
        const float scale = cfg->scale > 0 ? cfg->scale : 1.0f / std::sqrt(float(d.head_dim));
        Buffer<float> qb(const_cast<float *>(q), d.head_dim, G, d.kv_heads, d.batch);
        Buffer<int32_t> lens(const_cast<int32_t *>(seq_lens), d.batch);
        const std::vector<char> stale = stale_sequences(*c, seq_lens);
        // A sparse result whose summaries were stale certifies nothing.
        auto run_certified = [&](const DecodeVariant &v) {
            SparseResult s = run_sparse(c, v, qb, lens, scale);
            for (int b = 0; b < d.batch; ++b)
                if (stale[b])
                    for (int h = 0; h < d.kv_heads; ++h)
                        for (int g = 0; g < G; ++g) {
                            s.diag(vashista::kDiagErrorBound, g, h, b) = INFINITY;
                            s.diag(vashista::kDiagCertificate, g, h, b) = float(VASHISTA_UNCERTIFIED_STALE);
                        }
            return s;
        };
        SparseResult r = run_certified(variant);

        // Per head: what the step ends as. An uncertified head's bound is +inf: over.
        std::vector<int32_t> taken(size_t(d.batch) * q_heads, VASHISTA_TAKEN_SPARSE);
        auto over = [&](const SparseResult &s, int g, int h, int b) {
            const float bound = s.diag(vashista::kDiagErrorBound, g, h, b);
            if (!cfg->relative_tolerance) return !(bound <= cfg->tolerance);
            // ||o_dense|| >= ||o_sparse|| - bound, so this bounds the error relative to dense.
            double norm = 0;
            for (int x = 0; x < d.head_dim; ++x) norm += double(s.out(x, g, h, b)) * s.out(x, g, h, b);
            return !(double(bound) <= double(cfg->tolerance) * (std::sqrt(norm) - double(bound)));
        };
        std::vector<std::pair<int, int>> dense_heads;  // (b, h) KV heads with a head to recompute
        auto mark_dense = [&](int b, int h) {
            if (dense_heads.empty() || dense_heads.back() != std::make_pair(b, h)) dense_heads.push_back({b, h});
        };
        std::vector<int> pending;
        for (int b = 0; b < d.batch; ++b)
            for (int h = 0; h < d.kv_heads; ++h)
                for (int g = 0; g < G; ++g)
                    if (over(r, g, h, b)) pending.push_back((b * d.kv_heads + h) * G + g);
        if (!pending.empty() && cfg->policy == VASHISTA_POLICY_NONE) {
            for (int i : pending) taken[i] = VASHISTA_TAKEN_REPORTED;
            pending.clear();
        }
        if (!pending.empty() && cfg->policy == VASHISTA_POLICY_WIDEN) {
            if (const DecodeVariant *wide = find_wider(*c, G, *cfg)) {
                SparseResult w = run_certified(*wide);
                std::vector<int> still;
                for (int i : pending) {
                    const int g = i % G, h = (i / G) % d.kv_heads, b = i / G / d.kv_heads;
                    if (over(w, g, h, b)) {
                        still.push_back(i);
                        continue;
                    }
                    taken[i] = VASHISTA_TAKEN_WIDENED;
                    for (int x = 0; x < d.head_dim; ++x) r.out(x, g, h, b) = w.out(x, g, h, b);
                    r.lse(g, h, b) = w.lse(g, h, b);
                    for (int x = 0; x < vashista::kDiagFields; ++x) r.diag(x, g, h, b) = w.diag(x, g, h, b);
                }
                pending.swap(still);
            }
        }
        if (!pending.empty()) {
            for (int i : pending) {
                taken[i] = VASHISTA_TAKEN_DENSE;
                mark_dense(i / G / d.kv_heads, (i / G) % d.kv_heads);
            }
            // Dense with the solver's meaning: eg is softmax at temperature beta, and its
            // LSE is (1/beta) log sum exp(beta s), as the sparse kernel reports it.
            const float beta = solver_temperature(*cfg);
            const DenseVariant &dv = find_dense(d, G);
            Buffer<float> dout(d.head_dim, G, d.kv_heads, d.batch), dlse(G, d.kv_heads, d.batch);
            run_dense(c, dv, qb, lens, scale * beta, dout, dlse, &dense_heads);
            for (int i : pending) {
                const int g = i % G, h = (i / G) % d.kv_heads, b = i / G / d.kv_heads;
                for (int x = 0; x < d.head_dim; ++x) r.out(x, g, h, b) = dout(x, g, h, b);
                r.lse(g, h, b) = dlse(g, h, b) / beta;
            }
        }
        // A non-finite answer from finite q, k and v: the scores or values exceed f32.
        for (int b = 0; b < d.batch; ++b)
            for (int h = 0; h < d.kv_heads; ++h)
                for (int g = 0; g < G; ++g) {
                    bool ok = std::isfinite(r.lse(g, h, b));
                    for (int x = 0; ok && x < d.head_dim; ++x) ok = std::isfinite(r.out(x, g, h, b));
                    if (!ok)
                        fail(VASHISTA_ERROR_NON_FINITE, "the ",
                             taken[(size_t(b) * d.kv_heads + h) * G + g] == VASHISTA_TAKEN_DENSE ? "dense" : "sparse",
                             " output of sequence ", b, " query head ", h * G + g,
                             " is not finite: its scores (scale * q.k) or weighted values exceed the range of f32 ",
                             "(or K/V pages written outside vashista_append hold NaN or Inf)");
                }
        std::memcpy(out, r.out.data(), r.out.size_in_bytes());
        if (lse) std::memcpy(lse, r.lse.data(), r.lse.size_in_bytes());
        if (candidates) std::memcpy(candidates, r.candidates.data(), r.candidates.size_in_bytes());
        if (diag)
            for (int b = 0; b < d.batch; ++b)
                for (int h = 0; h < d.kv_heads; ++h)
                    for (int g = 0; g < G; ++g) {
                        const size_t i = (size_t(b) * d.kv_heads + h) * G + g;
                        auto field = [&](int k) { return r.diag(k, g, h, b); };
                        diag[i] = vashista_head_diag{field(vashista::kDiagSupportGap),
                                                     field(vashista::kDiagLeakage),
                                                     field(vashista::kDiagErrorBound),
                                                     int32_t(field(vashista::kDiagCandidates)),
                                                     taken[i],
                                                     field(vashista::kDiagFwGap),
                                                     int32_t(field(vashista::kDiagCertificate))};
                    }
    });
}

vashista_status vashista_dense(vashista_cache *c, const float *q, int32_t q_heads, const int32_t *seq_lens, float scale,
                               float *out, float *lse) {
    return guarded([&] {
        const Shape shape = validate_step(c, q, q_heads, seq_lens, out);
        if (!(scale >= 0) || !std::isfinite(scale))
            fail(VASHISTA_ERROR_INVALID_ARGUMENT, "scale = ", scale, " must be finite and >= 0 (0: 1/sqrt(head_dim))");
        const auto &d = c->desc;
        const int G = shape.group;
        const DenseVariant &dv = find_dense(d, G);
        if (scale == 0) scale = 1.0f / std::sqrt(float(d.head_dim));
        Buffer<float> qb(const_cast<float *>(q), d.head_dim, G, d.kv_heads, d.batch);
        Buffer<int32_t> lens(const_cast<int32_t *>(seq_lens), d.batch);
        Buffer<float> dout(d.head_dim, G, d.kv_heads, d.batch), dlse(G, d.kv_heads, d.batch);
        run_dense(c, dv, qb, lens, scale, dout, dlse, nullptr);
        std::memcpy(out, dout.data(), dout.size_in_bytes());
        if (lse) std::memcpy(lse, dlse.data(), dlse.size_in_bytes());
    });
}

const char *vashista_last_error(void) { return g_last_error.c_str(); }

const char *vashista_status_name(vashista_status s) {
    switch (s) {
        case VASHISTA_OK:
            return "ok";
        case VASHISTA_ERROR_NULL_POINTER:
            return "null pointer";
        case VASHISTA_ERROR_INVALID_ARGUMENT:
            return "invalid argument";
        case VASHISTA_ERROR_SHAPE_MISMATCH:
            return "shape mismatch";
        case VASHISTA_ERROR_OUT_OF_RANGE:
            return "out of range";
        case VASHISTA_ERROR_NON_FINITE:
            return "non-finite value";
        case VASHISTA_ERROR_NO_VARIANT:
            return "no compiled variant";
        case VASHISTA_ERROR_KERNEL:
            return "kernel failure";
        case VASHISTA_ERROR_OUT_OF_MEMORY:
            return "out of memory";
    }
    return "unknown status";
}

size_t vashista_list_variants(char *buffer, size_t capacity) {
    const std::string s = list_variants();
    if (buffer && capacity > 0) {
        const size_t n = std::min(capacity - 1, s.size());
        std::memcpy(buffer, s.data(), n);
        buffer[n] = '\0';
    }
    return s.size();
}

}  // extern "C"
