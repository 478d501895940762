#include "vashista.h"

#include "HalideBuffer.h"
#include "dtype_halide.h"
#include "method_types.h"
#include "run_context.h"
#include "variants.h"

#include <algorithm>
#include <array>
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
using namespace vashista::runtime;

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

// Element types of keys, values, q and out; summaries may also be int8.
bool valid_dtype(int t) { return t >= VASHISTA_DTYPE_F32 && t <= VASHISTA_DTYPE_BF16; }
bool valid_summary_dtype(int t) { return valid_dtype(t) || t == VASHISTA_DTYPE_I8; }
const char *element_dtypes = " is not a vashista_dtype of elements (F32 0, F16 1, BF16 2; I8 3 is for summaries)";
int dtype_bytes(vashista_dtype t) { return vashista::dtype_bytes(vashista::DType(t)); }

halide_type_t halide_type(vashista_dtype t) { return vashista::halide_runtime_type(vashista::DType(t)); }
// Scale groups of a page's summary row (1, not read, unless int8).
int scale_groups(const vashista_cache_desc &d) {
    return vashista::summary_scale_groups(d.head_dim, vashista::DType(d.summary_dtype));
}

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

// A public struct's struct_size against this library's: a caller built against another
// version of vashista.h fails here instead of having fields misread.
template <typename T>
void require_struct_size(const T &s, const char *name, const char *type) {
    if (s.struct_size != sizeof(T))
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, name, "->struct_size = ", s.struct_size, " is not sizeof(", type,
             ") = ", sizeof(T), " of this library (ABI version ", VASHISTA_ABI_VERSION, "); set it to sizeof(", type,
             ") and build against this library's vashista.h");
}

struct FreeDeleter {
    void operator()(void *p) const { std::free(p); }
};
using HostMemory = std::unique_ptr<void, FreeDeleter>;

// The elements of a buffer of `sizes` (innermost first), checked for overflow and for
// whether the kernels can address them: 2^31 - 1 elements, or with large_buffers an int32
// outermost stride.
int64_t addressable_elements(const std::vector<int64_t> &sizes, const char *what) {
    int64_t elements = 1;
    for (int64_t s : sizes)
        if (__builtin_mul_overflow(elements, s, &elements))
            fail(VASHISTA_ERROR_OUT_OF_RANGE, what, " would hold more than 2^63 elements");
    const bool large = vashista::runtime::large_buffers();
    if (large ? elements / sizes.back() > INT32_MAX : elements > INT32_MAX)
        fail(VASHISTA_ERROR_OUT_OF_RANGE, what, " hold ", elements, " elements; ",
             large ? "one dimension's stride is an int32"
                   : "kernels compiled without Halide's large_buffers feature address at most 2^31 - 1 "
                     "(build the kernel library with TARGET host-large_buffers)");
    return elements;
}

// A zeroed host buffer of `sizes` (innermost first) in memory owned by `memory`. calloc
// lets a failed allocation come back as a status.
Buffer<void> zeroed_buffer(HostMemory &memory, halide_type_t type, const std::vector<int64_t> &sizes,
                           const char *what) {
    const int64_t elements = addressable_elements(sizes, what);
    memory.reset(std::calloc(size_t(elements), type.bytes()));
    if (!memory)
        fail(VASHISTA_ERROR_OUT_OF_MEMORY, "cannot allocate ", double(elements) * type.bytes(), " bytes for ", what);
    return Buffer<void>(type, memory.get(), std::vector<int>(sizes.begin(), sizes.end()));
}

}  // namespace

struct vashista_cache {
    vashista_cache_desc desc;
    std::vector<int32_t> appended;  // tokens appended per sequence
    // Summaries and the sketch per physical page (algorithm.h), so a page several sequences
    // share is summarized once.
    HostMemory summary_memory, value_norm_memory, key_absmax_memory;
    Buffer<void> summary;      // (d, c, p, h)
    Buffer<float> value_norm;  // (p, h)
    Buffer<float> key_absmax;  // (p, h)
    HostMemory summary_scale_memory;
    Buffer<void> summary_scale;  // (x, p, h) bf16: int8 summaries' scales, else one zero element
    // The token sketch (sketch routing), or one zero element of each when the cache keeps none.
    HostMemory sketch_memory, sketch_scale_memory;
    Buffer<void> sketch;        // (s, byte, p, h) uint8
    Buffer<void> sketch_scale;  // (s, group, p, h) bf16
    const vashista::runtime::SketchVariant *sketch_kernel = nullptr;
    // Super-page boxes (hier_bound routing, desc.super_pages = R > 0): per sequence b and
    // super-page s, slot b * max_supers + s of super_summary (d, lo/hi/bounds, slot, h) f32
    // (method_types.h), listed by super_table (s, b). Without super-pages, one zero element
    // each in static storage.
    HostMemory super_memory, super_table_memory;
    Buffer<void> super_summary, super_table;
    int32_t max_supers = 0;
    // When each box was last rebuilt, and from which physical pages: a box is stale for a step
    // when the block table maps one of its entries elsewhere, or when one of its pages has been
    // summarized since (page_epoch, the `epoch` of that page's last commit, is newer).
    uint64_t epoch = 0;
    std::vector<uint64_t> page_epoch;   // per physical page
    std::vector<uint64_t> super_built;  // per slot, 0 before any
    std::vector<int32_t> super_source;  // per (b, logical page): the page its box was built from
    std::vector<float> decoded_row;     // head_dim floats: a summary row while boxes are rebuilt
    // Per physical page, the tokens (slots 0 .. n-1) its summary was computed from, 0 before
    // any: a sequence whose valid tokens in a page are more than that reads keys the summary
    // does not describe (vashista_certificate STALE). Every write the runtime is told of
    // (append, summarize, truncate) recomputes the page's summary from what it then holds.
    std::vector<int32_t> summarized_tokens;
    const vashista::runtime::SummarizeVariant *summarize = nullptr;
    vashista::SummaryLayout summary_layout{0, 0, 0};
    // The one-call API (vashista_decode): its plans, one per (config, q_heads), and workspace.
    using PlanKey = std::array<char, sizeof(vashista_decode_config) + sizeof(int32_t)>;  // config, q_heads
    std::vector<std::pair<PlanKey, std::unique_ptr<vashista_plan, void (*)(vashista_plan *)>>> plans;
    std::vector<uint8_t> workspace;

    Buffer<void> kv_buffer(void *data) const {
        const auto &d = desc;
        return d.layout == VASHISTA_LAYOUT_HND
                   ? Buffer<void>(halide_type(d.kv_dtype), data, d.head_dim, d.page_size, d.kv_heads, d.num_pages)
                   : Buffer<void>(halide_type(d.kv_dtype), data, d.head_dim, d.kv_heads, d.page_size, d.num_pages);
    }
    Buffer<int32_t> page_table() const {
        return Buffer<int32_t>(const_cast<int32_t *>(desc.page_table), desc.max_pages, desc.batch);
    }
    // Row `channel` (lo or hi) of super-page slot `slot`, KV head h: head_dim floats.
    float *super_row(size_t slot, int32_t h, int channel) {
        const size_t slots = size_t(desc.batch) * max_supers;
        return static_cast<float *>(super_summary.data()) +
               ((size_t(h) * slots + slot) * vashista::kSuperChannels + channel) * desc.head_dim;
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
    auto line = [&](const char *kind, const auto &v) {
        os << kind << " " << v.name;
        if (const char *api = device_api(v.kernel)) os << " (GPU: " << api << ")";
        os << "\n";
    };
    for (const auto &v : decode_variants()) line("decode", v);
    for (const auto &v : dense_variants()) line("dense", v);
    for (const auto &v : summarize_variants()) line("summarize", v);
    for (const auto &v : sketch_variants()) line("sketch", v);
    return os.str();
}

void validate_desc(const vashista_cache_desc *d) {
    require_pointer(d, "desc");
    require_struct_size(*d, "desc", "vashista_cache_desc");
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
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->kv_dtype = ", raw(d->kv_dtype), element_dtypes);
    if (!valid_summary_dtype(raw(d->summary_dtype)))
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->summary_dtype = ", raw(d->summary_dtype),
             " is not a vashista_dtype");
    const std::string summary_error =
        vashista::summary_config_error(d->head_dim, vashista::DType(d->kv_dtype), vashista::DType(d->summary_dtype));
    if (!summary_error.empty()) fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc: ", summary_error);
    if (raw(d->layout) != VASHISTA_LAYOUT_HND && raw(d->layout) != VASHISTA_LAYOUT_NHD)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->layout = ", raw(d->layout), " is not HND (0) or NHD (1)");
    if (d->sketch_bits != 0 && !vashista::valid_sketch_bits(d->sketch_bits))
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->sketch_bits = ", d->sketch_bits, " is not 0 (no sketch), 4 or 8");
    if (d->sketch_bits != 0) {
        const std::string why = vashista::sketch_config_error(d->head_dim, d->sketch_bits, d->sketch_group);
        if (!why.empty()) fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->", why);
    }
    if (d->super_pages < 0)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->super_pages = ", d->super_pages,
             " is not 0 (no super-pages) or the pages per super-page of hier_bound routing");
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

void validate_pages(const vashista_cache &c, const int32_t *table, int32_t seq, int32_t first_page, int32_t end_page) {
    for (int32_t j = first_page; j < end_page; ++j) {
        const int32_t page = table[size_t(seq) * c.desc.max_pages + j];
        if (page < 0 || page >= c.desc.num_pages)
            fail(VASHISTA_ERROR_OUT_OF_RANGE, "page_table[", seq, "][", j, "] = ", page,
                 " is not below num_pages = ", c.desc.num_pages, (page < 0 ? " (or is negative)" : ""));
    }
}

// seq_lens of a step: each in [1, tokens appended], its pages mapped in range by `table`.
// Returns the pages the longest sequence uses: a step's kernels see only that much of the
// block table, so their work follows the sequences, not the table's width.
int32_t validate_seq_lens(const vashista_cache &c, const int32_t *table, const int32_t *seq_lens) {
    const auto &d = c.desc;
    int32_t pages_used = 1;
    for (int32_t b = 0; b < d.batch; ++b) {
        const int32_t len = seq_lens[b];
        if (len < 1 || int64_t(len) > int64_t(d.max_pages) * d.page_size)
            fail(VASHISTA_ERROR_OUT_OF_RANGE, "seq_lens[", b, "] = ", len,
                 " is not in [1, max_pages * page_size = ", int64_t(d.max_pages) * d.page_size, "]");
        if (len > c.appended[b])
            fail(VASHISTA_ERROR_OUT_OF_RANGE, "seq_lens[", b, "] = ", len, " exceeds the ", c.appended[b],
                 " tokens appended to sequence ", b, " (summaries would be stale)");
        const int32_t pages = (len + d.page_size - 1) / d.page_size;
        validate_pages(c, table, b, 0, pages);
        pages_used = std::max(pages_used, pages);
    }
    return pages_used;
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
    validate_seq_lens(*c, d.page_table, seq_lens);
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
    bool ok = v.head_dim == d.head_dim && v.page_size == d.page_size && v.group_size == group &&
              v.kv_dtype == d.kv_dtype && v.summary_dtype == d.summary_dtype && v.layout == d.layout &&
              v.solver == cfg.solver && v.routing == cfg.routing && v.group_routing == cfg.group_routing &&
              v.sink_pages == cfg.sink_pages && v.local_pages == cfg.local_pages;
    if (ok && cfg.routing == VASHISTA_ROUTING_SKETCH)
        ok = v.sketch_bits == d.sketch_bits && v.sketch_group == d.sketch_group;
    if (ok && cfg.routing == VASHISTA_ROUTING_HIER_BOUND)
        ok = v.super_pages == d.super_pages && v.super_expand == cfg.super_expand;
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
         cfg.routing == VASHISTA_ROUTING_HIER_BOUND
             ? " super_pages=" + std::to_string(d.super_pages) + " super_expand=" + std::to_string(cfg.super_expand)
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

// Runs a kernel whose allocations come from `arena` (null: the system allocator).
void check_kernel(KernelCall &call, const char *name, Arena *arena = nullptr) {
    if (arena) arena->start_call();
    take_kernel_error();
    const int rc = call.user_context(arena).run();
    if (rc == KernelCall::kBindError) fail(VASHISTA_ERROR_KERNEL, call.error());
    if (rc != 0) {
        const std::string message = take_kernel_error();
        fail(VASHISTA_ERROR_KERNEL, "kernel ", name, " returned Halide error ", rc,
             message.empty() ? "" : ": " + message);
    }
}

// A sparse step's outputs, in the plan's workspace (or the sizing run's memory).
struct SparseResult {
    Buffer<float> out, lse, diag;
    Buffer<int32_t> candidates, pages;
};

// The kernels' view of a step: q (d, g, h, b) in f32, seq_lens, the block table cropped to
// the pages the longest sequence uses, and the super-page table to the super-pages of those.
struct StepInputs {
    Buffer<float> q;
    Buffer<int32_t> lens, table;
    float scale;
    Buffer<void> super_table;
};

// The inputs of a step over the first `pages` entries of `table` (d.max_pages wide).
StepInputs step_inputs(const vashista_cache &c, float *q, const int32_t *seq_lens, const int32_t *table, int32_t pages,
                       int32_t group, float scale) {
    const auto &d = c.desc;
    return StepInputs{
        Buffer<float>(q, d.head_dim, group, d.kv_heads, d.batch),
        Buffer<int32_t>(const_cast<int32_t *>(seq_lens), d.batch),
        Buffer<int32_t>(const_cast<int32_t *>(table), d.max_pages, d.batch).cropped(0, 0, pages), scale,
        d.super_pages ? c.super_table.cropped(0, 0, vashista::super_pages_of(pages, d.super_pages)) : c.super_table};
}

// The order routing reads a step's page summaries in (route_order in method_types.h):
// (j, b), as wide as the step's block table.
struct RouteOrder {
    Buffer<int32_t> pages, rank;
};

void run_sparse(vashista_cache *c, const DecodeVariant &v, StepInputs &in, RouteOrder &route, SparseResult &r,
                Arena *ctx) {
    const auto &d = c->desc;
    Buffer<void> k = c->kv_buffer(d.k_pages), vv = c->kv_buffer(d.v_pages);
    KernelCall call(v.kernel);
    call.buffer("q", in.q.raw_buffer())
        .buffer("k_cache", k.raw_buffer())
        .buffer("v_cache", vv.raw_buffer())
        .buffer("page_table", in.table.raw_buffer())
        .buffer("seq_lens", in.lens.raw_buffer())
        .buffer("route_pages", route.pages.raw_buffer())
        .buffer("route_rank", route.rank.raw_buffer())
        .buffer("summary", c->summary.raw_buffer())
        .buffer("value_norm", c->value_norm.raw_buffer())
        .buffer("key_absmax", c->key_absmax.raw_buffer())
        .buffer("summary_scale", c->summary_scale.raw_buffer())
        .buffer("sketch", c->sketch.raw_buffer())
        .buffer("sketch_scale", c->sketch_scale.raw_buffer())
        .buffer("super_summary", c->super_summary.raw_buffer())
        .buffer("super_table", in.super_table.raw_buffer())
        .scalar("scale", in.scale)
        .buffer("out", r.out.raw_buffer())
        .buffer("lse", r.lse.raw_buffer())
        .buffer("diag", r.diag.raw_buffer())
        .buffer("candidates", r.candidates.raw_buffer())
        .buffer("pages", r.pages.raw_buffer());
    check_kernel(call, v.name, ctx);
}

// Dense attention for the KV heads (b, h) listed (all when `only` is null), each through
// crops of the buffers; `scale` includes the solver's temperature.
void run_dense(vashista_cache *c, const DenseVariant &v, StepInputs &in, float scale, Buffer<float> &out,
               Buffer<float> &lse, const std::pair<int32_t, int32_t> *only, size_t only_count, Arena *ctx) {
    const auto &d = c->desc;
    Buffer<void> k = c->kv_buffer(d.k_pages), vv = c->kv_buffer(d.v_pages);
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
        check_kernel(call, v.name, ctx);
    };
    if (!only) {
        dense(in.q, k, vv, in.table, in.lens, out, lse);
        return;
    }
    const int head_axis = d.layout == VASHISTA_LAYOUT_HND ? 2 : 1;  // (d, s, h, page) or (d, h, s, page)
    for (size_t i = 0; i < only_count; ++i) {
        const auto [b, h] = only[i];
        Buffer<float> q1 = in.q.cropped(2, h, 1).cropped(3, b, 1);
        Buffer<float> o1 = out.cropped(2, h, 1).cropped(3, b, 1);
        Buffer<float> l1 = lse.cropped(1, h, 1).cropped(2, b, 1);
        Buffer<void> k1 = k.cropped(head_axis, h, 1), v1 = vv.cropped(head_axis, h, 1);
        Buffer<int32_t> p1 = in.table.cropped(1, b, 1), s1 = in.lens.cropped(0, b, 1);
        dense(q1, k1, v1, p1, s1, o1, l1);
    }
}

void validate_config(const vashista_decode_config *cfg) {
    require_pointer(cfg, "config");
    require_struct_size(*cfg, "config", "vashista_decode_config");
    if (cfg->top_pages < 1)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->top_pages = ", cfg->top_pages, " must be >= 1");
    if (cfg->top_tokens < 1)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->top_tokens = ", cfg->top_tokens, " must be >= 1");
    const int solver = raw(cfg->solver), routing = raw(cfg->routing), group = raw(cfg->group_routing),
              policy = raw(cfg->policy);
    if (solver < VASHISTA_SOLVER_SOFTMAX || solver > VASHISTA_SOLVER_SPARSEMAX)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->solver = ", solver, " is not a vashista_solver");
    if (routing < VASHISTA_ROUTING_MEAN || routing > VASHISTA_ROUTING_HIER_BOUND)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->routing = ", routing,
             " is not mean (0), bound (1), sketch (2) or hier_bound (3)");
    if (routing == VASHISTA_ROUTING_HIER_BOUND && cfg->super_expand < 1)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->super_expand = ", cfg->super_expand,
             " must be >= 1 (the super-pages hier_bound routing expands per head)");
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

// Tokens of logical page j that a sequence of `len` tokens holds.
int32_t tokens_in_page(int32_t len, int32_t j, int32_t page_size) { return std::min(page_size, len - j * page_size); }

// Sequences that read keys their pages' summaries do not describe: a page the block table
// maps that was summarized over fewer tokens than the sequence holds in it (never
// summarized, truncated through another sequence, or rewritten by one with fewer tokens).
// A summary over more tokens bounds the sequence's tokens too (its box holds theirs).
// With `super_boxes` (hier_bound routing), also a super-page box that may not hold its pages'
// boxes: built from other pages than the table maps now, or before one of them was summarized
// again.
void find_stale(const vashista_cache &c, const int32_t *table, const int32_t *seq_lens, bool super_boxes, char *stale) {
    const auto &d = c.desc;
    for (int32_t b = 0; b < d.batch; ++b) {
        stale[b] = 0;
        for (int32_t j = 0; j < (seq_lens[b] + d.page_size - 1) / d.page_size && !stale[b]; ++j) {
            const int32_t page = table[size_t(b) * d.max_pages + j];
            stale[b] = c.summarized_tokens[page] < tokens_in_page(seq_lens[b], j, d.page_size);
            if (super_boxes) {
                const uint64_t built = c.super_built[size_t(b) * c.max_supers + j / d.super_pages];
                stale[b] |=
                    built == 0 || c.super_source[size_t(b) * d.max_pages + j] != page || c.page_epoch[page] > built;
            }
        }
    }
}

}  // namespace

// ---- Plan and run ------------------------------------------------------------------

namespace {

// A run's workspace, carved into 64-byte aligned sections.
struct Section {
    size_t offset = 0, bytes = 0;
};

struct WorkspaceLayout {
    Section q;                                            // f32 q (d, g, h, b)
    Section out, lse, diag, candidates, pages;            // the sparse step
    Section w_out, w_lse, w_diag, w_candidates, w_pages;  // the widened step (policy widen)
    Section d_out, d_lse;                                 // dense fallback
    Section route_pages, route_rank, route_scratch;       // the order routing reads pages in
    Section stale, taken, pending, still, dense_heads;    // the policy's bookkeeping
    Section arena;                                        // what the kernels allocate
    size_t total = 0;

    void add(Section &s, size_t bytes) {
        s.offset = total;
        s.bytes = bytes;
        total += (bytes + 63) / 64 * 64;
    }
};

// Sparse outputs of `v` over the cache's batch in the memory at `base` (sections of `at`).
SparseResult sparse_buffers(uint8_t *base, const Section &out, const Section &lse, const Section &diag,
                            const Section &cand, const Section &pages, const vashista_cache_desc &d,
                            const DecodeVariant &v) {
    const int G = v.group_size;
    return SparseResult{
        Buffer<float>(reinterpret_cast<float *>(base + out.offset), d.head_dim, G, d.kv_heads, d.batch),
        Buffer<float>(reinterpret_cast<float *>(base + lse.offset), G, d.kv_heads, d.batch),
        Buffer<float>(reinterpret_cast<float *>(base + diag.offset), vashista::kDiagFields, G, d.kv_heads, d.batch),
        Buffer<int32_t>(reinterpret_cast<int32_t *>(base + cand.offset), v.top_tokens, G, d.kv_heads, d.batch),
        Buffer<int32_t>(reinterpret_cast<int32_t *>(base + pages.offset), v.top_pages, G, d.kv_heads, d.batch)};
}

}  // namespace

struct vashista_plan {
    vashista_cache *cache;
    vashista_decode_config cfg;
    vashista_plan_desc desc;
    int32_t group;
    float scale, beta;
    const DecodeVariant *variant;
    const DecodeVariant *wide;  // policy widen's retry, or null
    const DenseVariant *dense;  // policies dense and widen, or null
    WorkspaceLayout layout;
};

namespace {

void validate_plan_desc(const vashista_plan_desc *p, const vashista_cache_desc &d) {
    require_pointer(p, "desc");
    require_struct_size(*p, "desc", "vashista_plan_desc");
    if (p->q_heads <= 0 || p->q_heads % d.kv_heads != 0)
        fail(VASHISTA_ERROR_SHAPE_MISMATCH, "desc->q_heads = ", p->q_heads,
             " is not a positive multiple of the cache's kv_heads = ", d.kv_heads);
    if (!valid_dtype(raw(p->q_dtype)))
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->q_dtype = ", raw(p->q_dtype), element_dtypes);
    if (!valid_dtype(raw(p->out_dtype)))
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->out_dtype = ", raw(p->out_dtype), element_dtypes);
    // The rows of q and of out, [sequence][head] at the strides given (0: contiguous), must not
    // overlap: one stride at least head_dim, the other past all rows of the first.
    auto rows = [&](int64_t seq_stride, int64_t head_stride, const char *seq_name, const char *head_name) {
        if (seq_stride < 0 || head_stride < 0)
            fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->", seq_stride < 0 ? seq_name : head_name, " = ",
                 std::min(seq_stride, head_stride), " is negative");
        const int64_t head = head_stride ? head_stride : d.head_dim;
        const int64_t seq = seq_stride ? seq_stride : head * p->q_heads;
        std::array<std::pair<int64_t, int64_t>, 2> dims{{{head, p->q_heads}, {seq, d.batch}}};  // (stride, rows)
        if (dims[1].first < dims[0].first) std::swap(dims[0], dims[1]);
        const bool inner_ok = dims[0].second == 1 || dims[0].first >= d.head_dim;
        const bool outer_ok =
            dims[1].second == 1 || dims[1].first >= std::max<int64_t>(d.head_dim, dims[0].first * dims[0].second);
        if (!inner_ok || !outer_ok)
            fail(VASHISTA_ERROR_INVALID_ARGUMENT, "desc->", seq_name, " = ", seq_stride, " and ", head_name, " = ",
                 head_stride, " make rows of ", d.head_dim, " elements overlap (", d.batch, " sequences, ", p->q_heads,
                 " heads; 0 means contiguous)");
    };
    rows(p->q_stride_seq, p->q_stride_head, "q_stride_seq", "q_stride_head");
    rows(p->out_stride_seq, p->out_stride_head, "out_stride_seq", "out_stride_head");
}

// Strides in elements, contiguous where the desc says 0.
struct Strides {
    int64_t seq, head;
};
Strides q_strides(const vashista_plan &p) {
    const int64_t head = p.desc.q_stride_head ? p.desc.q_stride_head : p.cache->desc.head_dim;
    return {p.desc.q_stride_seq ? p.desc.q_stride_seq : head * p.desc.q_heads, head};
}
Strides out_strides(const vashista_plan &p) {
    const int64_t head = p.desc.out_stride_head ? p.desc.out_stride_head : p.cache->desc.head_dim;
    return {p.desc.out_stride_seq ? p.desc.out_stride_seq : head * p.desc.q_heads, head};
}

// q in the plan's dtype and strides -> f32 (d, g, h, b), checking each element is finite.
void load_q(const vashista_plan &p, const void *q, float *to) {
    const auto &d = p.cache->desc;
    const Strides st = q_strides(p);
    const int bytes = dtype_bytes(p.desc.q_dtype);
    const vashista::DType t = vashista::DType(p.desc.q_dtype);
    for (int32_t b = 0; b < d.batch; ++b)
        for (int32_t hq = 0; hq < p.desc.q_heads; ++hq) {
            const auto *row = static_cast<const uint8_t *>(q) + (b * st.seq + hq * st.head) * bytes;
            float *dst = to + (size_t(b) * p.desc.q_heads + hq) * d.head_dim;
            for (int32_t x = 0; x < d.head_dim; ++x) {
                float v;
                if (t == vashista::DType::F32) {
                    std::memcpy(&v, row + size_t(x) * 4, 4);
                } else {
                    uint16_t bits;
                    std::memcpy(&bits, row + size_t(x) * 2, 2);
                    v = vashista::from_bits16(t, bits);
                }
                if (!std::isfinite(v))
                    fail(VASHISTA_ERROR_NON_FINITE, "q[", b, "][", hq, "][", x, "] = ", v, " is not finite");
                dst[x] = v;
            }
        }
}

// f32 out (d, g, h, b) -> the plan's dtype and strides.
void store_out(const vashista_plan &p, const Buffer<float> &from, void *out) {
    const auto &d = p.cache->desc;
    const Strides st = out_strides(p);
    const int bytes = dtype_bytes(p.desc.out_dtype);
    const vashista::DType t = vashista::DType(p.desc.out_dtype);
    const int G = p.group;
    for (int32_t b = 0; b < d.batch; ++b)
        for (int32_t hq = 0; hq < p.desc.q_heads; ++hq) {
            auto *row = static_cast<uint8_t *>(out) + (b * st.seq + hq * st.head) * bytes;
            for (int32_t x = 0; x < d.head_dim; ++x) {
                const float v = from(x, hq % G, hq / G, b);
                if (t == vashista::DType::F32) {
                    std::memcpy(row + size_t(x) * 4, &v, 4);
                } else {
                    const uint16_t bits = vashista::to_bits16(t, v);
                    std::memcpy(row + size_t(x) * 2, &bits, 2);
                }
            }
        }
}

// Runs every kernel the plan may call once, on the cache's own pages with a block table of
// page 0 at its full width and one token per sequence, its parallel tasks one at a time,
// measuring the most bytes each call has live at once: the kernel workspace is that for the
// largest call on each of the pool's threads at once (arena_bytes_for). Halide sizes its
// allocations from the buffers' extents (the table's width), not from seq_lens, so one token
// measures what a full sequence needs without the work of one. A run whose allocations
// outgrow it (an engine's pool with more threads than the library's) takes the rest from
// the system allocator.
size_t measure_kernel_workspace(const vashista_plan &p) {
    vashista_cache *c = p.cache;
    const auto &d = c->desc;
    const int G = p.group;
    const size_t heads = size_t(d.batch) * d.kv_heads * G;
    std::vector<float> q(heads * d.head_dim, 0.0f);
    std::vector<int32_t> table(size_t(d.batch) * d.max_pages, 0);
    std::vector<int32_t> lens(d.batch, 1);
    std::vector<int32_t> route_pages(table.size()), route_rank(table.size());
    std::vector<uint32_t> scratch(size_t(2) * d.max_pages);
    for (int b = 0; b < d.batch; ++b)
        vashista::route_order(&table[size_t(b) * d.max_pages], 1, d.max_pages, &route_pages[size_t(b) * d.max_pages],
                              &route_rank[size_t(b) * d.max_pages], scratch.data());
    RouteOrder route{Buffer<int32_t>(route_pages.data(), d.max_pages, d.batch),
                     Buffer<int32_t>(route_rank.data(), d.max_pages, d.batch)};
    StepInputs in = step_inputs(*c, q.data(), lens.data(), table.data(), d.max_pages, G, p.scale);
    Arena ctx;  // measuring
    size_t most = 0;
    for (const DecodeVariant *v : {p.variant, p.wide}) {
        if (!v) continue;
        SparseResult r{Buffer<float>(d.head_dim, G, d.kv_heads, d.batch), Buffer<float>(G, d.kv_heads, d.batch),
                       Buffer<float>(vashista::kDiagFields, G, d.kv_heads, d.batch),
                       Buffer<int32_t>(v->top_tokens, G, d.kv_heads, d.batch),
                       Buffer<int32_t>(v->top_pages, G, d.kv_heads, d.batch)};
        run_sparse(c, *v, in, route, r, &ctx);
        most = std::max(most, ctx.peak());
    }
    if (p.dense) {
        Buffer<float> out(d.head_dim, G, d.kv_heads, d.batch), lse(G, d.kv_heads, d.batch);
        run_dense(c, *p.dense, in, p.scale, out, lse, nullptr, 0, &ctx);
        most = std::max(most, ctx.peak());
        const std::pair<int32_t, int32_t> one{0, 0};
        run_dense(c, *p.dense, in, p.scale, out, lse, &one, 1, &ctx);
        most = std::max(most, ctx.peak());
    }
    return arena_bytes_for(most, pool_threads());
}

void plan_layout(vashista_plan &p) {
    const auto &d = p.cache->desc;
    const size_t heads = size_t(d.batch) * p.desc.q_heads, kv = size_t(d.batch) * d.kv_heads;
    WorkspaceLayout &w = p.layout;
    w.add(w.q, heads * d.head_dim * 4);
    auto sparse = [&](const DecodeVariant *v, Section &out, Section &lse, Section &diag, Section &cand,
                      Section &pages) {
        if (!v) return;
        w.add(out, heads * d.head_dim * 4);
        w.add(lse, heads * 4);
        w.add(diag, heads * vashista::kDiagFields * 4);
        w.add(cand, heads * v->top_tokens * 4);
        w.add(pages, heads * v->top_pages * 4);
    };
    sparse(p.variant, w.out, w.lse, w.diag, w.candidates, w.pages);
    sparse(p.wide, w.w_out, w.w_lse, w.w_diag, w.w_candidates, w.w_pages);
    if (p.dense) {
        w.add(w.d_out, heads * d.head_dim * 4);
        w.add(w.d_lse, heads * 4);
    }
    w.add(w.route_pages, size_t(d.batch) * d.max_pages * 4);
    w.add(w.route_rank, size_t(d.batch) * d.max_pages * 4);
    w.add(w.route_scratch, size_t(2) * d.max_pages * 4);
    w.add(w.stale, size_t(d.batch));
    w.add(w.taken, heads * 4);
    w.add(w.pending, heads * 4);
    w.add(w.still, heads * 4);
    w.add(w.dense_heads, kv * 8);
    // 64 bytes before the arena: Halide may read a little before an allocation.
    w.total += 64;
    w.add(w.arena, measure_kernel_workspace(p));
    w.total += 64 + 63;  // the slack after it, and aligning the caller's pointer to 64
}

// A fixed-capacity list in the workspace.
template <typename T>
struct List {
    T *data;
    size_t size = 0;
    void push_back(const T &v) { data[size++] = v; }
    bool empty() const { return size == 0; }
    T &back() { return data[size - 1]; }
};

void run_plan(const vashista_plan &p, void *workspace, size_t workspace_size, const int32_t *page_table, const void *q,
              const int32_t *seq_lens, void *out, float *lse, vashista_head_diag *diag, int32_t *candidates) {
    vashista_cache *c = p.cache;
    const auto &d = c->desc;
    const vashista_decode_config &cfg = p.cfg;
    const int G = p.group;
    const WorkspaceLayout &w = p.layout;
    if (workspace_size < w.total)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "workspace_size = ", workspace_size,
             " is below vashista_plan_workspace_size = ", w.total);
    uint8_t *base = reinterpret_cast<uint8_t *>((reinterpret_cast<uintptr_t>(workspace) + 63) / 64 * 64);
    const int32_t *table = page_table ? page_table : d.page_table;
    require_pointer(table, "page_table");
    const int32_t pages_used = validate_seq_lens(*c, table, seq_lens);
    float *q32 = reinterpret_cast<float *>(base + w.q.offset);
    load_q(p, q, q32);

    StepInputs in = step_inputs(*c, q32, seq_lens, table, pages_used, G, p.scale);
    // Routing's page order per sequence, over the step's table width.
    int32_t *route_pages = reinterpret_cast<int32_t *>(base + w.route_pages.offset);
    int32_t *route_rank = reinterpret_cast<int32_t *>(base + w.route_rank.offset);
    for (int b = 0; b < d.batch; ++b)
        vashista::route_order(table + size_t(b) * d.max_pages, (seq_lens[b] + d.page_size - 1) / d.page_size,
                              pages_used, route_pages + size_t(b) * pages_used, route_rank + size_t(b) * pages_used,
                              reinterpret_cast<uint32_t *>(base + w.route_scratch.offset));
    RouteOrder route{Buffer<int32_t>(route_pages, pages_used, d.batch),
                     Buffer<int32_t>(route_rank, pages_used, d.batch)};
    Arena ctx(base + w.arena.offset, w.arena.bytes);
    char *stale = reinterpret_cast<char *>(base + w.stale.offset);
    find_stale(*c, table, seq_lens, cfg.routing == VASHISTA_ROUTING_HIER_BOUND, stale);
    // A sparse result whose summaries were stale certifies nothing.
    auto run_certified = [&](const DecodeVariant &v, SparseResult &s) {
        run_sparse(c, v, in, route, s, &ctx);
        for (int b = 0; b < d.batch; ++b)
            if (stale[b])
                for (int h = 0; h < d.kv_heads; ++h)
                    for (int g = 0; g < G; ++g) {
                        s.diag(vashista::kDiagErrorBound, g, h, b) = INFINITY;
                        s.diag(vashista::kDiagCertificate, g, h, b) = float(VASHISTA_UNCERTIFIED_STALE);
                    }
    };
    SparseResult r = sparse_buffers(base, w.out, w.lse, w.diag, w.candidates, w.pages, d, *p.variant);
    run_certified(*p.variant, r);

    // Per head: what the step ends as. An uncertified head's bound is +inf: over.
    const size_t heads = size_t(d.batch) * d.kv_heads * G;
    int32_t *taken = reinterpret_cast<int32_t *>(base + w.taken.offset);
    std::fill(taken, taken + heads, int32_t(VASHISTA_TAKEN_SPARSE));
    auto over = [&](const SparseResult &s, int g, int h, int b) {
        const float bound = s.diag(vashista::kDiagErrorBound, g, h, b);
        if (!cfg.relative_tolerance) return !(bound <= cfg.tolerance);
        // ||o_dense|| >= ||o_sparse|| - bound, so this bounds the error relative to dense.
        double norm = 0;
        for (int x = 0; x < d.head_dim; ++x) norm += double(s.out(x, g, h, b)) * s.out(x, g, h, b);
        return !(double(bound) <= double(cfg.tolerance) * (std::sqrt(norm) - double(bound)));
    };
    List<std::pair<int32_t, int32_t>> dense_heads{
        reinterpret_cast<std::pair<int32_t, int32_t> *>(base + w.dense_heads.offset)};  // KV heads to recompute
    List<int32_t> pending{reinterpret_cast<int32_t *>(base + w.pending.offset)};
    for (int b = 0; b < d.batch; ++b)
        for (int h = 0; h < d.kv_heads; ++h)
            for (int g = 0; g < G; ++g)
                if (over(r, g, h, b)) pending.push_back((b * d.kv_heads + h) * G + g);
    if (!pending.empty() && cfg.policy == VASHISTA_POLICY_NONE) {
        for (size_t k = 0; k < pending.size; ++k) taken[pending.data[k]] = VASHISTA_TAKEN_REPORTED;
        pending.size = 0;
    }
    if (!pending.empty() && p.wide) {
        SparseResult wr = sparse_buffers(base, w.w_out, w.w_lse, w.w_diag, w.w_candidates, w.w_pages, d, *p.wide);
        run_certified(*p.wide, wr);
        List<int32_t> still{reinterpret_cast<int32_t *>(base + w.still.offset)};
        for (size_t k = 0; k < pending.size; ++k) {
            const int i = pending.data[k];
            const int g = i % G, h = (i / G) % d.kv_heads, b = i / G / d.kv_heads;
            if (over(wr, g, h, b)) {
                still.push_back(i);
                continue;
            }
            taken[i] = VASHISTA_TAKEN_WIDENED;
            for (int x = 0; x < d.head_dim; ++x) r.out(x, g, h, b) = wr.out(x, g, h, b);
            r.lse(g, h, b) = wr.lse(g, h, b);
            for (int x = 0; x < vashista::kDiagFields; ++x) r.diag(x, g, h, b) = wr.diag(x, g, h, b);
        }
        std::copy(still.data, still.data + still.size, pending.data);
        pending.size = still.size;
    }
    if (!pending.empty()) {
        for (size_t k = 0; k < pending.size; ++k) {
            const int i = pending.data[k];
            taken[i] = VASHISTA_TAKEN_DENSE;
            const std::pair<int32_t, int32_t> bh{i / G / d.kv_heads, (i / G) % d.kv_heads};
            if (dense_heads.empty() || dense_heads.back() != bh) dense_heads.push_back(bh);
        }
        // Dense with the solver's meaning: eg is softmax at temperature beta, and its
        // LSE is (1/beta) log sum exp(beta s), as the sparse kernel reports it.
        Buffer<float> dout(reinterpret_cast<float *>(base + w.d_out.offset), d.head_dim, G, d.kv_heads, d.batch);
        Buffer<float> dlse(reinterpret_cast<float *>(base + w.d_lse.offset), G, d.kv_heads, d.batch);
        run_dense(c, *p.dense, in, p.scale * p.beta, dout, dlse, dense_heads.data, dense_heads.size, &ctx);
        for (size_t k = 0; k < pending.size; ++k) {
            const int i = pending.data[k];
            const int g = i % G, h = (i / G) % d.kv_heads, b = i / G / d.kv_heads;
            for (int x = 0; x < d.head_dim; ++x) r.out(x, g, h, b) = dout(x, g, h, b);
            r.lse(g, h, b) = dlse(g, h, b) / p.beta;
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
                         " is not finite: its scores (scale * q.k) or weighted values are too large for the kernels' "
                         "f32 ",
                         "arithmetic (or K/V pages written outside vashista_append hold NaN or Inf)");
            }
    // Everything is computed: only now write the caller's outputs.
    store_out(p, r.out, out);
    if (lse) std::memcpy(lse, r.lse.data(), r.lse.size_in_bytes());
    if (candidates) std::memcpy(candidates, r.candidates.data(), r.candidates.size_in_bytes());
    if (diag)
        for (int b = 0; b < d.batch; ++b)
            for (int h = 0; h < d.kv_heads; ++h)
                for (int g = 0; g < G; ++g) {
                    const size_t i = (size_t(b) * d.kv_heads + h) * G + g;
                    auto field = [&](int k) { return r.diag(k, g, h, b); };
                    // Field by field over zeroed bytes, so its padding is deterministic too.
                    vashista_head_diag &out_diag = diag[i];
                    std::memset(&out_diag, 0, sizeof out_diag);
                    out_diag.struct_size = sizeof(vashista_head_diag);
                    out_diag.support_gap = field(vashista::kDiagSupportGap);
                    out_diag.leakage = field(vashista::kDiagLeakage);
                    out_diag.error_bound = field(vashista::kDiagErrorBound);
                    out_diag.candidates = int32_t(field(vashista::kDiagCandidates));
                    out_diag.policy_taken = taken[i];
                    out_diag.fw_gap = field(vashista::kDiagFwGap);
                    out_diag.certificate = int32_t(field(vashista::kDiagCertificate));
                }
}

vashista_plan *create_plan(vashista_cache *c, const vashista_decode_config *cfg, const vashista_plan_desc *pd) {
    require_pointer(c, "cache");
    validate_config(cfg);
    validate_plan_desc(pd, c->desc);
    const auto &d = c->desc;
    if (cfg->routing == VASHISTA_ROUTING_SKETCH && d.sketch_bits == 0)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->routing = sketch (2) needs a cache that keeps a token ",
             "sketch: create it with desc->sketch_bits = 8 or 4 and desc->sketch_group");
    if (cfg->routing == VASHISTA_ROUTING_HIER_BOUND && d.super_pages == 0)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "config->routing = hier_bound (3) needs a cache that keeps ",
             "super-page boxes: create it with desc->super_pages = R (the pages per super-page)");
    install_halide_hooks();
    auto p = std::make_unique<vashista_plan>();
    p->cache = c;
    p->cfg = *cfg;
    p->desc = *pd;
    p->group = pd->q_heads / d.kv_heads;
    p->scale = cfg->scale > 0 ? cfg->scale : 1.0f / std::sqrt(float(d.head_dim));
    p->beta = solver_temperature(*cfg);
    p->variant = &find_decode(*c, p->group, *cfg);
    p->wide = cfg->policy == VASHISTA_POLICY_WIDEN ? find_wider(*c, p->group, *cfg) : nullptr;
    p->dense = cfg->policy != VASHISTA_POLICY_NONE ? &find_dense(d, p->group) : nullptr;
    plan_layout(*p);
    return p.release();
}

}  // namespace

namespace {

// Summaries and sketch of logical pages [first, last] of `seq` computed from the pages the
// block table maps them to, with `new_len` tokens valid: computed into buffers of their own
// first, so a failure leaves the cache as it was.
struct PageSummaries {
    int32_t seq, first, count;
    Buffer<void> rows;                // (d, c, h, n)
    Buffer<void> row_scales;          // (x, h, n) bf16
    Buffer<float> norms, key_bounds;  // (h, n)
    Buffer<uint8_t> codes;            // (s, byte, h, n)
    Buffer<void> scales;              // (s, group, h, n)
};

PageSummaries summarize_pages(vashista_cache *c, int32_t seq, int32_t first, int32_t last, int32_t new_len) {
    const auto &d = c->desc;
    const int touched_pages = last - first + 1;
    PageSummaries s{
        seq,
        first,
        touched_pages,
        Buffer<void>(halide_type(d.summary_dtype), d.head_dim, vashista::kSummaryChannels, d.kv_heads, touched_pages),
        Buffer<void>(halide_type_t(halide_type_bfloat, 16), scale_groups(d), d.kv_heads, touched_pages),
        Buffer<float>(d.kv_heads, touched_pages),
        Buffer<float>(d.kv_heads, touched_pages),
        Buffer<uint8_t>(),
        Buffer<void>()};
    std::vector<int32_t> lens = c->appended;
    lens[seq] = new_len;
    Buffer<int32_t> touched(2, touched_pages);
    for (int i = 0; i < touched_pages; ++i) {
        touched(0, i) = seq;
        touched(1, i) = first + i;
    }
    Buffer<int32_t> lens_buffer(lens.data(), d.batch);
    Buffer<void> kb = c->kv_buffer(d.k_pages), vb = c->kv_buffer(d.v_pages);
    Buffer<int32_t> pt = c->page_table();
    KernelCall summarize(c->summarize->kernel);
    summarize.buffer("k_cache", kb.raw_buffer())
        .buffer("v_cache", vb.raw_buffer())
        .buffer("page_table", pt.raw_buffer())
        .buffer("seq_lens", lens_buffer.raw_buffer())
        .buffer("touched", touched.raw_buffer())
        .buffer("summary", s.rows.raw_buffer())
        .buffer("value_norm", s.norms.raw_buffer())
        .buffer("key_absmax", s.key_bounds.raw_buffer())
        .buffer("summary_scale", s.row_scales.raw_buffer());
    check_kernel(summarize, c->summarize->name);
    // The token sketch of the same pages: codes (s, byte, h, n), scales (s, group, h, n).
    if (c->sketch_kernel) {
        s.codes = Buffer<uint8_t>(d.page_size, vashista::sketch_code_bytes(d.head_dim, d.sketch_bits), d.kv_heads,
                                  touched_pages);
        s.scales = Buffer<void>(halide_type_t(halide_type_bfloat, 16), d.page_size, d.head_dim / d.sketch_group,
                                d.kv_heads, touched_pages);
        KernelCall sketch(c->sketch_kernel->kernel);
        sketch.buffer("k_cache", kb.raw_buffer())
            .buffer("page_table", pt.raw_buffer())
            .buffer("seq_lens", lens_buffer.raw_buffer())
            .buffer("touched", touched.raw_buffer())
            .buffer("codes", s.codes.raw_buffer())
            .buffer("scales", s.scales.raw_buffer());
        check_kernel(sketch, c->sketch_kernel->name);
    }
    return s;
}

// Writes computed summaries into the pages' places in the cache and records the tokens
// each covers.
void commit_pages(vashista_cache *c, PageSummaries &s, int32_t new_len) {
    const auto &d = c->desc;
    const size_t bytes = dtype_bytes(d.summary_dtype), row_bytes = vashista::kSummaryChannels * d.head_dim * bytes;
    const uint8_t *src = static_cast<const uint8_t *>(s.rows.data());
    uint8_t *dst = static_cast<uint8_t *>(c->summary.data());
    for (int i = 0; i < s.count; ++i) {
        const int32_t j = s.first + i;
        const int32_t page = d.page_table[size_t(s.seq) * d.max_pages + j];
        c->summarized_tokens[page] = tokens_in_page(new_len, j, d.page_size);
        c->page_epoch[page] = ++c->epoch;
        for (int h = 0; h < d.kv_heads; ++h) {
            c->value_norm(page, h) = s.norms(h, i);
            c->key_absmax(page, h) = s.key_bounds(h, i);
            // The staged rows (d, c, h, n) hold a page's channels adjacent, as the layout does.
            std::memcpy(dst + c->summary_layout.row(page, 0, h) * bytes, src + (size_t(i) * d.kv_heads + h) * row_bytes,
                        row_bytes);
            if (d.summary_dtype == VASHISTA_DTYPE_I8)
                c->summary_scale.sliced(2, h).sliced(1, page).copy_from(s.row_scales.sliced(2, i).sliced(1, h));
            if (c->sketch_kernel) {
                c->sketch.sliced(3, h).sliced(2, page).copy_from(s.codes.sliced(3, i).sliced(2, h));
                c->sketch_scale.sliced(3, h).sliced(2, page).copy_from(s.scales.sliced(3, i).sliced(2, h));
            }
        }
    }
}

// Summary row `channel` of physical page `page`, KV head h, decoded to f32 as the kernels
// decode it (int8 summaries: each code times its group's bf16 scale, exactly): head_dim values.
void decode_summary_row(const vashista_cache &c, int32_t page, int channel, int32_t h, float *out) {
    const auto &d = c.desc;
    const auto t = vashista::DType(d.summary_dtype);
    const uint8_t *row = static_cast<const uint8_t *>(c.summary.data()) +
                         c.summary_layout.row(page, channel, h) * dtype_bytes(d.summary_dtype);
    if (t == vashista::DType::F32) {
        std::memcpy(out, row, size_t(d.head_dim) * 4);
    } else if (t == vashista::DType::I8) {
        const auto *scales =
            static_cast<const uint16_t *>(c.summary_scale.data()) + (size_t(h) * d.num_pages + page) * scale_groups(d);
        for (int32_t x = 0; x < d.head_dim; ++x)
            out[x] = vashista::from_bits16(vashista::DType::BF16, scales[x / vashista::kSummaryScaleGroup]) *
                     float(int8_t(row[x]));
    } else {
        for (int32_t x = 0; x < d.head_dim; ++x) {
            uint16_t bits;
            std::memcpy(&bits, row + 2 * x, 2);
            out[x] = vashista::from_bits16(t, bits);
        }
    }
}

// Rebuilds the super-page boxes of `seq` over logical pages [first, last] (hier_bound): each
// the f32 box over the boxes of its pages the sequence holds, as the pages are summarized now.
void rebuild_super_pages(vashista_cache *c, int32_t seq, int32_t first, int32_t last) {
    const auto &d = c->desc;
    if (!d.super_pages) return;
    const int32_t R = d.super_pages, held = (c->appended[seq] + d.page_size - 1) / d.page_size;
    for (int32_t sp = first / R; sp <= last / R && sp * R < held; ++sp) {
        // validate_super_pages has checked every page read here before anything changed.
        const size_t slot = size_t(seq) * c->max_supers + sp;
        for (int32_t h = 0; h < d.kv_heads; ++h) {
            float *lo = c->super_row(slot, h, vashista::kSuperMin), *hi = c->super_row(slot, h, vashista::kSuperMax);
            float *bounds = c->super_row(slot, h, vashista::kSuperBounds);
            std::fill(lo, lo + d.head_dim, INFINITY);
            std::fill(hi, hi + d.head_dim, -INFINITY);
            std::fill(bounds, bounds + d.head_dim, 0.0f);
            for (int32_t j = sp * R; j < std::min(held, (sp + 1) * R); ++j) {
                const int32_t page = d.page_table[size_t(seq) * d.max_pages + j];
                float *row = c->decoded_row.data();
                decode_summary_row(*c, page, vashista::kSummaryMin, h, row);
                for (int32_t x = 0; x < d.head_dim; ++x) lo[x] = std::min(lo[x], row[x]);
                decode_summary_row(*c, page, vashista::kSummaryMax, h, row);
                for (int32_t x = 0; x < d.head_dim; ++x) hi[x] = std::max(hi[x], row[x]);
                bounds[vashista::kSuperValueNorm] = std::max(bounds[vashista::kSuperValueNorm], c->value_norm(page, h));
            }
            for (int32_t x = 0; x < d.head_dim; ++x)
                bounds[vashista::kSuperKeyAbsmax] =
                    std::max({bounds[vashista::kSuperKeyAbsmax], std::abs(lo[x]), std::abs(hi[x])});
        }
        for (int32_t j = sp * R; j < std::min(held, (sp + 1) * R); ++j)
            c->super_source[size_t(seq) * d.max_pages + j] = d.page_table[size_t(seq) * d.max_pages + j];
        c->super_built[slot] = c->epoch;
    }
}

// Before a write to logical pages [first, last] of `seq` that leaves it `new_len` tokens:
// with super-pages, the rebuild afterwards reads every page the sequence then holds in the
// super-pages [first, last] falls in, so the block table must map those in range too (an
// entry the write itself does not touch may have been remapped since).
void validate_super_pages(const vashista_cache &c, int32_t seq, int32_t first, int32_t last, int32_t new_len) {
    const auto &d = c.desc;
    if (!d.super_pages) return;
    const int32_t R = d.super_pages, held = (new_len + d.page_size - 1) / d.page_size;
    const int32_t begin = first / R * R, end = std::min(held, (last / R + 1) * R);
    for (int32_t j = begin; j < end; ++j) {
        const int32_t page = d.page_table[size_t(seq) * d.max_pages + j];
        if (page < 0 || page >= d.num_pages)
            fail(VASHISTA_ERROR_OUT_OF_RANGE, "page_table[", seq, "][", j, "] = ", page,
                 " is not in [0, num_pages = ", d.num_pages, "): the super-page box over pages [", begin, ", ", end,
                 ") of sequence ", seq, " is rebuilt from it");
    }
}

// What append and summarize share: tokens [start, start + count) of `seq`, in pages the
// block table maps in range, continuing what was summarized. Returns the logical pages.
std::pair<int32_t, int32_t> validate_token_range(const vashista_cache *c, int32_t seq, int32_t start, int32_t count) {
    require_pointer(c, "cache");
    const auto &d = c->desc;
    if (seq < 0 || seq >= d.batch)
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "seq = ", seq, " is not in [0, batch = ", d.batch, ")");
    if (count < 1) fail(VASHISTA_ERROR_INVALID_ARGUMENT, "count = ", count, " must be >= 1");
    if (start < 0 || start > c->appended[seq])
        fail(VASHISTA_ERROR_INVALID_ARGUMENT, "start = ", start, " is not in [0, tokens appended = ", c->appended[seq],
             "]");
    if (int64_t(start) + count > int64_t(d.max_pages) * d.page_size)
        fail(VASHISTA_ERROR_OUT_OF_RANGE, "start + count = ", int64_t(start) + count,
             " exceeds max_pages * page_size = ", int64_t(d.max_pages) * d.page_size);
    const int32_t first = start / d.page_size, last = (start + count - 1) / d.page_size;
    validate_pages(*c, d.page_table, seq, first, last + 1);
    return {first, last};
}

// Summarizes the pages of tokens just written, then commits: the summaries and the token
// count change together, after every kernel has succeeded.
void summarize_written(vashista_cache *c, int32_t seq, int32_t start, int32_t count, int32_t first, int32_t last) {
    const int32_t new_len = std::max(c->appended[seq], start + count);
    validate_super_pages(*c, seq, first, last, new_len);
    PageSummaries s = summarize_pages(c, seq, first, last, new_len);
    commit_pages(c, s, new_len);
    c->appended[seq] = new_len;
    rebuild_super_pages(c, seq, first, last);
}

// The cache's own buffers, in bytes: summaries, value norms and key bounds, the sketch (or
// its placeholder) and the per-page and per-sequence counts.
size_t cache_bytes(const vashista_cache_desc &d) {
    const size_t pages = size_t(d.num_pages) * d.kv_heads;
    size_t bytes = pages * vashista::kSummaryChannels * d.head_dim * dtype_bytes(d.summary_dtype) + pages * 2 * 4 +
                   (d.summary_dtype == VASHISTA_DTYPE_I8 ? pages * scale_groups(d) * 2 : 2);
    if (d.sketch_bits)
        bytes += pages * d.page_size *
                 (size_t(vashista::sketch_code_bytes(d.head_dim, d.sketch_bits)) + 2 * (d.head_dim / d.sketch_group));
    else
        bytes += 1 + 2;
    bytes += size_t(d.num_pages) * (sizeof(int32_t) + sizeof(uint64_t)) + size_t(d.batch) * sizeof(int32_t);
    if (d.super_pages) {
        const size_t slots = size_t(d.batch) * vashista::super_pages_of(d.max_pages, d.super_pages);
        bytes += slots * (size_t(d.kv_heads) * vashista::kSuperChannels * d.head_dim * 4 + sizeof(int32_t) +
                          sizeof(uint64_t)) +
                 size_t(d.batch) * d.max_pages * sizeof(int32_t);
    }
    return bytes;
}

}  // namespace

extern "C" {

uint32_t vashista_abi_version(void) { return VASHISTA_ABI_VERSION; }

size_t vashista_cache_memory_size(const vashista_cache_desc *desc) {
    size_t bytes = 0;
    guarded([&] {
        validate_desc(desc);
        addressable_elements({desc->head_dim, desc->page_size, desc->kv_heads, desc->num_pages},
                             "the K/V pages (num_pages x kv_heads x page_size x head_dim)");
        bytes = cache_bytes(*desc);
    });
    return bytes;
}

void vashista_decode_config_default(vashista_decode_config *config) {
    if (!config) return;
    *config = vashista_decode_config{sizeof(vashista_decode_config),
                                     64,
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
                                     0,
                                     vashista::kSuperExpandDefault};
}

vashista_status vashista_cache_create(const vashista_cache_desc *desc, vashista_cache **cache) {
    return guarded([&] {
        require_pointer(cache, "cache");
        *cache = nullptr;
        validate_desc(desc);
        install_halide_hooks();
        auto c = std::make_unique<vashista_cache>();
        c->desc = *desc;
        c->summarize = &find_summarize(*desc);
        addressable_elements({desc->head_dim, desc->page_size, desc->kv_heads, desc->num_pages},
                             "the K/V pages (num_pages x kv_heads x page_size x head_dim)");
        c->summary_layout = vashista::SummaryLayout{desc->head_dim, desc->num_pages, desc->kv_heads};
        const auto extents = c->summary_layout.extents();
        c->summary = zeroed_buffer(c->summary_memory, halide_type(desc->summary_dtype),
                                   std::vector<int64_t>(extents.begin(), extents.end()),
                                   "page summaries (num_pages x kv_heads x 3 x head_dim)");
        const std::vector<int64_t> per_page{desc->num_pages, desc->kv_heads};
        const halide_type_t f32(halide_type_float, 32);
        c->value_norm = zeroed_buffer(c->value_norm_memory, f32, per_page, "value norms (num_pages x kv_heads)");
        c->key_absmax = zeroed_buffer(c->key_absmax_memory, f32, per_page, "key bounds (num_pages x kv_heads)");
        const halide_type_t u8(halide_type_uint, 8), bf16(halide_type_bfloat, 16);
        if (desc->summary_dtype == VASHISTA_DTYPE_I8)
            c->summary_scale =
                zeroed_buffer(c->summary_scale_memory, bf16, {scale_groups(*desc), desc->num_pages, desc->kv_heads},
                              "summary scales (num_pages x kv_heads x head_dim / 16)");
        else
            c->summary_scale = zeroed_buffer(c->summary_scale_memory, bf16, {1, 1, 1}, "a placeholder summary scale");
        if (desc->sketch_bits) {
            c->sketch_kernel = &find_sketch(*desc);
            const int64_t bytes = vashista::sketch_code_bytes(desc->head_dim, desc->sketch_bits);
            c->sketch = zeroed_buffer(c->sketch_memory, u8, {desc->page_size, bytes, desc->num_pages, desc->kv_heads},
                                      "the token sketch (num_pages x kv_heads x page_size x code bytes)");
            c->sketch_scale =
                zeroed_buffer(c->sketch_scale_memory, bf16,
                              {desc->page_size, desc->head_dim / desc->sketch_group, desc->num_pages, desc->kv_heads},
                              "the token sketch's scales (num_pages x kv_heads x page_size x groups)");
        } else {
            c->sketch = zeroed_buffer(c->sketch_memory, u8, {1, 1, 1, 1}, "a placeholder sketch");
            c->sketch_scale = zeroed_buffer(c->sketch_scale_memory, bf16, {1, 1, 1, 1}, "a placeholder sketch");
        }
        const halide_type_t i32(halide_type_int, 32);
        if (desc->super_pages) {
            const int32_t supers = vashista::super_pages_of(desc->max_pages, desc->super_pages);
            c->max_supers = supers;
            c->super_summary =
                zeroed_buffer(c->super_memory, f32,
                              {desc->head_dim, vashista::kSuperChannels, int64_t(desc->batch) * supers, desc->kv_heads},
                              "super-page boxes (batch x ceil(max_pages / super_pages) x kv_heads x 2 x head_dim)");
            c->super_table = zeroed_buffer(c->super_table_memory, i32, {supers, desc->batch},
                                           "the super-page table (batch x ceil(max_pages / super_pages))");
            auto *slots = static_cast<int32_t *>(c->super_table.data());
            for (int64_t i = 0; i < int64_t(desc->batch) * supers; ++i) slots[i] = int32_t(i);  // (s, b) -> b S + s
            c->super_built.assign(size_t(desc->batch) * supers, 0);
            c->super_source.assign(size_t(desc->batch) * desc->max_pages, -1);
            c->decoded_row.assign(desc->head_dim, 0.0f);
        } else {
            static float no_super_box[1] = {0.0f};
            static int32_t no_super_slot[1] = {0};
            c->super_summary = Buffer<void>(f32, no_super_box, 1, 1, 1, 1);
            c->super_table = Buffer<void>(i32, no_super_slot, 1, 1);
        }
        c->page_epoch.assign(desc->num_pages, 0);
        c->appended.assign(desc->batch, 0);
        c->summarized_tokens.assign(desc->num_pages, 0);
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
        const auto [first, last] = validate_token_range(c, seq, start, count);
        require_pointer(k, "k");
        require_pointer(v, "v");
        const auto &d = c->desc;
        const size_t row = size_t(d.head_dim) * dtype_bytes(d.kv_dtype);
        const size_t n = size_t(count) * d.kv_heads * d.head_dim;
        for (const auto *src : {static_cast<const uint8_t *>(k), static_cast<const uint8_t *>(v)})
            for (size_t i = 0; i < n; ++i)
                if (non_finite(src + i * dtype_bytes(d.kv_dtype), d.kv_dtype)) {
                    const size_t r = i / d.head_dim;
                    fail(VASHISTA_ERROR_NON_FINITE, src == k ? "k" : "v", "[", r / d.kv_heads, "][", r % d.kv_heads,
                         "][", i % d.head_dim, "] is not finite");
                }
        // The super-page boxes the write will rebuild read pages it does not touch.
        validate_super_pages(*c, seq, first, last, std::max(c->appended[seq], start + count));
        // Everything is valid: write the tokens (keeping what they overwrite, so a failed
        // summary step can put it back, in reverse order in case the table maps two of the
        // positions to one page), then summarize the touched pages.
        std::vector<uint8_t> saved(2 * size_t(count) * d.kv_heads * row);
        auto copy_rows = [&](bool restore) {
            for (int32_t i = 0; i < count; ++i) {
                const int32_t t = restore ? count - 1 - i : i, pos = start + t;
                const int32_t page = d.page_table[size_t(seq) * d.max_pages + pos / d.page_size];
                for (int32_t h = 0; h < d.kv_heads; ++h) {
                    const size_t src = (size_t(t) * d.kv_heads + h) * row;
                    const size_t dst = c->token_offset(page, pos % d.page_size, h) * dtype_bytes(d.kv_dtype);
                    uint8_t *keep = saved.data() + 2 * src;  // K's row, then V's
                    for (auto [pages, from] : {std::pair{static_cast<uint8_t *>(d.k_pages), k},
                                               std::pair{static_cast<uint8_t *>(d.v_pages), v}}) {
                        if (restore) {
                            std::memcpy(pages + dst, keep, row);
                        } else {
                            std::memcpy(keep, pages + dst, row);
                            std::memcpy(pages + dst, static_cast<const uint8_t *>(from) + src, row);
                        }
                        keep += row;
                    }
                }
            }
        };
        copy_rows(false);
        try {
            summarize_written(c, seq, start, count, first, last);
        } catch (...) {
            copy_rows(true);
            throw;
        }
    });
}

vashista_status vashista_summarize(vashista_cache *c, int32_t seq, int32_t start, int32_t count) {
    return guarded([&] {
        const auto [first, last] = validate_token_range(c, seq, start, count);
        const auto &d = c->desc;
        const size_t bytes = dtype_bytes(d.kv_dtype);
        for (int32_t t = 0; t < count; ++t) {
            const int32_t pos = start + t;
            const int32_t page = d.page_table[size_t(seq) * d.max_pages + pos / d.page_size];
            for (int32_t h = 0; h < d.kv_heads; ++h)
                for (const void *pages : {d.k_pages, d.v_pages}) {
                    const auto *row =
                        static_cast<const uint8_t *>(pages) + c->token_offset(page, pos % d.page_size, h) * bytes;
                    for (int32_t x = 0; x < d.head_dim; ++x)
                        if (non_finite(row + x * bytes, d.kv_dtype))
                            fail(VASHISTA_ERROR_NON_FINITE, pages == d.k_pages ? "k" : "v", " of sequence ", seq,
                                 " token ", pos, " (physical page ", page, " slot ", pos % d.page_size, ") head ", h,
                                 " channel ", x, " is not finite");
                }
        }
        summarize_written(c, seq, start, count, first, last);
    });
}

vashista_status vashista_truncate(vashista_cache *c, int32_t seq, int32_t new_len) {
    return guarded([&] {
        require_pointer(c, "cache");
        const auto &d = c->desc;
        if (seq < 0 || seq >= d.batch)
            fail(VASHISTA_ERROR_INVALID_ARGUMENT, "seq = ", seq, " is not in [0, batch = ", d.batch, ")");
        if (new_len < 0 || new_len > c->appended[seq])
            fail(VASHISTA_ERROR_INVALID_ARGUMENT, "new_len = ", new_len,
                 " is not in [0, tokens appended = ", c->appended[seq], "]");
        if (new_len == c->appended[seq]) return;
        const int32_t cut = new_len / d.page_size;  // the page the cut falls in, if partial
        if (new_len > 0)
            validate_super_pages(*c, seq, (new_len - 1) / d.page_size, (new_len - 1) / d.page_size, new_len);
        if (new_len % d.page_size) {
            validate_pages(*c, d.page_table, seq, cut, cut + 1);
            PageSummaries s = summarize_pages(c, seq, cut, cut, new_len);
            commit_pages(c, s, new_len);
        }
        c->appended[seq] = new_len;
        // The last super-page no longer holds the pages past the cut.
        if (new_len > 0) rebuild_super_pages(c, seq, (new_len - 1) / d.page_size, (new_len - 1) / d.page_size);
    });
}

vashista_status vashista_share_prefix(vashista_cache *c, int32_t seq, int32_t tokens) {
    return guarded([&] {
        require_pointer(c, "cache");
        const auto &d = c->desc;
        if (seq < 0 || seq >= d.batch)
            fail(VASHISTA_ERROR_INVALID_ARGUMENT, "seq = ", seq, " is not in [0, batch = ", d.batch, ")");
        if (tokens < 0 || int64_t(tokens) > int64_t(d.max_pages) * d.page_size)
            fail(VASHISTA_ERROR_OUT_OF_RANGE, "tokens = ", tokens,
                 " is not in [0, max_pages * page_size = ", int64_t(d.max_pages) * d.page_size, "]");
        const int32_t pages = (tokens + d.page_size - 1) / d.page_size;
        validate_pages(*c, d.page_table, seq, 0, pages);
        for (int32_t j = 0; j < pages; ++j) {
            const int32_t page = d.page_table[size_t(seq) * d.max_pages + j];
            const int32_t need = tokens_in_page(tokens, j, d.page_size);
            if (c->summarized_tokens[page] < need)
                fail(VASHISTA_ERROR_INVALID_ARGUMENT, "sequence ", seq, " page ", j, " (physical page ", page,
                     ") holds ", need, " of its tokens but has a summary of ", c->summarized_tokens[page],
                     "; append or summarize them instead");
        }
        c->appended[seq] = tokens;
        if (pages > 0) rebuild_super_pages(c, seq, 0, pages - 1);
    });
}

vashista_status vashista_decode(vashista_cache *c, const vashista_decode_config *cfg, const float *q, int32_t q_heads,
                                const int32_t *seq_lens, float *out, float *lse, vashista_head_diag *diag) {
    return vashista_decode_with_candidates(c, cfg, q, q_heads, seq_lens, out, lse, diag, nullptr);
}

// The one-call API: a plan per (config, q_heads) kept in the cache, a workspace grown to the
// largest plan's, and vashista_run.
vashista_status vashista_decode_with_candidates(vashista_cache *c, const vashista_decode_config *cfg, const float *q,
                                                int32_t q_heads, const int32_t *seq_lens, float *out, float *lse,
                                                vashista_head_diag *diag, int32_t *candidates) {
    return guarded([&] {
        require_pointer(c, "cache");
        require_pointer(cfg, "config");
        require_pointer(q, "q");
        require_pointer(seq_lens, "seq_lens");
        require_pointer(out, "out");
        validate_config(cfg);
        if (q_heads <= 0 || q_heads % c->desc.kv_heads != 0)
            fail(VASHISTA_ERROR_SHAPE_MISMATCH, "q_heads = ", q_heads,
                 " is not a positive multiple of kv_heads = ", c->desc.kv_heads);
        vashista_cache::PlanKey key{};
        std::memcpy(key.data(), cfg, sizeof *cfg);
        std::memcpy(key.data() + sizeof *cfg, &q_heads, sizeof q_heads);
        const vashista_plan *plan = nullptr;
        for (const auto &[k, p] : c->plans)
            if (k == key) plan = p.get();
        if (!plan) {
            vashista_plan_desc pd;
            vashista_plan_desc_default(&pd, q_heads);
            c->plans.emplace_back(key, std::unique_ptr<vashista_plan, void (*)(vashista_plan *)>(
                                           create_plan(c, cfg, &pd), vashista_plan_destroy));
            plan = c->plans.back().second.get();
        }
        if (c->workspace.size() < plan->layout.total) c->workspace.resize(plan->layout.total);
        run_plan(*plan, c->workspace.data(), c->workspace.size(), nullptr, q, seq_lens, out, lse, diag, candidates);
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
        StepInputs in = step_inputs(*c, const_cast<float *>(q), seq_lens, d.page_table, d.max_pages, G, scale);
        Buffer<float> dout(d.head_dim, G, d.kv_heads, d.batch), dlse(G, d.kv_heads, d.batch);
        run_dense(c, dv, in, scale, dout, dlse, nullptr, 0, nullptr);
        // A non-finite answer from finite q, k and v: the scores or values exceed f32.
        for (size_t i = 0; i < dout.number_of_elements(); ++i)
            if (!std::isfinite(dout.data()[i]) || !std::isfinite(dlse.data()[i / d.head_dim]))
                fail(VASHISTA_ERROR_NON_FINITE, "the dense output of sequence ",
                     i / d.head_dim / shape.group / d.kv_heads, " query head ",
                     i / d.head_dim % (shape.group * d.kv_heads),
                     " is not finite: its scores (scale * q.k) or weighted values are too large for the kernels' f32 "
                     "arithmetic");
        std::memcpy(out, dout.data(), dout.size_in_bytes());
        if (lse) std::memcpy(lse, dlse.data(), dlse.size_in_bytes());
    });
}

void vashista_plan_desc_default(vashista_plan_desc *desc, int32_t q_heads) {
    if (!desc) return;
    *desc = vashista_plan_desc{sizeof(vashista_plan_desc), q_heads, VASHISTA_DTYPE_F32, VASHISTA_DTYPE_F32, 0, 0, 0, 0};
}

vashista_status vashista_plan_create(vashista_cache *cache, const vashista_decode_config *config,
                                     const vashista_plan_desc *desc, vashista_plan **plan) {
    return guarded([&] {
        require_pointer(plan, "plan");
        *plan = nullptr;
        *plan = create_plan(cache, config, desc);
    });
}

void vashista_plan_destroy(vashista_plan *plan) { delete plan; }

size_t vashista_plan_workspace_size(const vashista_plan *plan) { return plan ? plan->layout.total : 0; }

vashista_status vashista_run(const vashista_plan *plan, void *workspace, size_t workspace_size,
                             const int32_t *page_table, const void *q, const int32_t *seq_lens, void *out, float *lse,
                             vashista_head_diag *diag, int32_t *candidates) {
    return guarded([&] {
        require_pointer(plan, "plan");
        require_pointer(workspace, "workspace");
        require_pointer(q, "q");
        require_pointer(seq_lens, "seq_lens");
        require_pointer(out, "out");
        run_plan(*plan, workspace, workspace_size, page_table, q, seq_lens, out, lse, diag, candidates);
    });
}

int32_t vashista_set_num_threads(int32_t n) { return vashista::runtime::set_num_threads(n); }

void vashista_set_parallel_for(vashista_parallel_for_fn parallel_for, void *engine_ctx) {
    vashista::runtime::set_parallel_for(parallel_for, engine_ctx);
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
