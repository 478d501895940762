// libFuzzer target over the C ABI (vashista.h): each input is decoded into a cache
// description, a block table and up to kMaxOps calls (append, summarize, truncate, share_prefix, decode,
// dense, plan and run, block-table edits, list_variants), with valid values mostly and
// invalid ones now and then, the kernels' loops on the library's serial pool or on an
// engine's parallel-for, and every call's result is checked against what the header promises:
//   - every call returns a vashista_status; vashista_last_error() is non-empty after an
//     error and "" after a success;
//   - on an error the caller's outputs (out, lse, diag, candidates; the K/V pages for an
//     append) are unchanged: they are filled with a sentinel before the call and compared;
//   - on success out and lse are finite, diag is well-formed (enums in range, error_bound
//     +inf unless certified, policy_taken agreeing with the policy and the tolerance),
//     candidates are increasing token positions below seq_lens[b] then -1, vashista_run
//     writes nothing outside the heads' rows of a strided out (nor reads q between them), and
//     an append wrote its tokens where the block table maps them;
//   - a head's certificate is VASHISTA_UNCERTIFIED_STALE exactly when a model of the block
//     table's history says its sequence's summaries are stale;
//   - vashista_appended_tokens follows the calls exactly: max(old, start + count) after a
//     successful append or summarize, new_len after a successful truncate, unchanged after
//     an error (so it never decreases except through a successful truncate).
// A violation prints what went wrong and aborts, which libFuzzer reports as a crash.
//
// The input format (make_seeds.py writes seeds in it): one byte per field unless noted, read
// front to back, 0 past the end. Most fields take a byte below a threshold as the common,
// valid choice (0 is always valid) and the bytes above it as an invalid or unusual value.
// The library is told the truth about every buffer it is given: the K/V pages, block
// tables, q, out and workspaces are exactly as large as the description and strides say
// (a count or q_heads the library must reject is the one exception: what it would read is
// then cut to what the cache can hold).
#include "vashista.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr int kMaxOps = 8;
constexpr uint8_t kSentinel = 0xA5;

// ---- Reading the input -------------------------------------------------------------------

struct Reader {
    const uint8_t *p;
    size_t n;
    uint8_t byte() {
        if (!n) return 0;
        --n;
        return *p++;
    }
    uint16_t u16() {
        const uint16_t lo = byte();
        return uint16_t(lo | byte() << 8);
    }
    bool empty() const { return n == 0; }
};

template <typename T, size_t N>
T one_of(uint8_t b, const T (&values)[N]) {
    return values[b % N];
}

// ---- Checking ------------------------------------------------------------------------------

[[noreturn]] __attribute__((format(printf, 1, 2))) void violation(const char *fmt, ...) {
    std::fprintf(stderr, "fuzz_abi: property violated: ");
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "\n  vashista_last_error(): \"%s\"\n", vashista_last_error());
    std::abort();
}

// FUZZ_ABI_TRACE=1: each call with its arguments and result on stderr (to read a crash).
bool g_trace;
__attribute__((format(printf, 1, 2))) void trace(const char *fmt, ...) {
    if (!g_trace) return;
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
}

// Calls per function: [function][0] all, [1] OK.
enum Fn { kCreate, kAppend, kSummarize, kTruncate, kShare, kDecode, kDense, kPlan, kRun, kFnCount };
const char *const kFnNames[kFnCount] = {"cache_create", "append", "summarize",   "truncate", "share_prefix",
                                        "decode",       "dense",  "plan_create", "run"};
unsigned long long g_calls[kFnCount][2];
unsigned long long g_inputs, g_status[9];
bool g_no_cache;  // the input's cache could not be created: every call must say NULL_POINTER

void print_stats() {
    std::fprintf(stderr, "fuzz_abi: %llu inputs; calls ok/all:", g_inputs);
    for (int f = 0; f < kFnCount; ++f) std::fprintf(stderr, " %s %llu/%llu", kFnNames[f], g_calls[f][1], g_calls[f][0]);
    std::fprintf(stderr, "; statuses:");
    for (int s = 0; s < 9; ++s) std::fprintf(stderr, " %d:%llu", s, g_status[s]);
    std::fprintf(stderr, "\n");
}

// What every call returns: a status of the enum, with the last error set accordingly.
void check_status(vashista_status s, Fn fn) {
    int v;
    std::memcpy(&v, &s, sizeof v);
    if (v < VASHISTA_OK || v > VASHISTA_ERROR_OUT_OF_MEMORY)
        violation("%s returned %d, not a vashista_status", kFnNames[fn], v);
    ++g_calls[fn][0];
    ++g_status[v];
    const char *e = vashista_last_error();
    trace("  -> %s%s%s\n", vashista_status_name(s), e && e[0] ? ": " : "", e ? e : "(null)");
    if (!e) violation("vashista_last_error() returned NULL after %s", kFnNames[fn]);
    if (s == VASHISTA_OK) {
        ++g_calls[fn][1];
        if (e[0]) violation("vashista_last_error() is \"%s\" after a successful %s", e, kFnNames[fn]);
    } else if (!e[0]) {
        violation("%s returned %s with an empty vashista_last_error()", kFnNames[fn], vashista_status_name(s));
    }
    if (std::strcmp(vashista_status_name(s), "unknown status") == 0) violation("status %d has no name", v);
    if (g_no_cache && fn != kCreate && s != VASHISTA_ERROR_NULL_POINTER)
        violation("%s without a cache returned %s", kFnNames[fn], vashista_status_name(s));
}

void check_unchanged(const void *p, size_t bytes, const char *what, Fn fn, vashista_status s) {
    const auto *b = static_cast<const uint8_t *>(p);
    for (size_t i = 0; i < bytes; ++i)
        if (b[i] != kSentinel)
            violation("%s returned %s but changed byte %zu of %s (%zu bytes)", kFnNames[fn], vashista_status_name(s), i,
                      what, bytes);
}

// A buffer of `bytes`, every byte the sentinel (exactly as large: ASan sees any overrun).
std::vector<uint8_t> sentinel_buffer(size_t bytes) { return std::vector<uint8_t>(bytes, kSentinel); }

// ---- Values --------------------------------------------------------------------------------

// Element values drawn from a seed, scaled, with one NaN or Inf now and then.
struct Values {
    uint32_t seed = 1;
    float magnitude = 1;
    int special = 0;  // 0 none, 1 NaN, 2 +Inf, 3 -Inf
    uint32_t special_at = 0;

    static Values read(Reader &r) {
        Values v;
        v.seed = uint32_t(r.u16()) * 2654435761u | 1u;
        const uint8_t m = r.byte();
        v.magnitude = m < 200 ? 1.0f : m < 225 ? 100.0f : m < 245 ? 3e4f : 1e30f;
        const uint8_t s = r.byte();
        if (s >= 240) {
            v.special = 1 + s % 3;
            v.special_at = r.u16();
        }
        return v;
    }
    bool big() const { return magnitude > 1e4f; }
    bool has_special(size_t n) const { return special && special_at < n; }
    // Element i of a stream of n: the special value lands at special_at (when below n).
    float at(size_t i) const {
        if (special && i == special_at) return special == 1 ? NAN : special == 2 ? INFINITY : -INFINITY;
        uint32_t x = seed ^ uint32_t(i * 0x9E3779B9u);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x *= 0x85EBCA6Bu;
        x ^= x >> 16;
        return (float(x & 0xFFFF) / 32767.5f - 1.0f) * magnitude;
    }
};

uint16_t to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

uint16_t to_f16(float f) {  // truncating; NaN, Inf and overflow as IEEE binary16
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    const int e = int((u >> 23) & 0xff);
    uint32_t mant = u & 0x7fffffu;
    if (e == 0xff) return uint16_t(sign | 0x7c00u | (mant ? 0x200u : 0u));
    const int he = e - 127 + 15;
    if (he >= 31) return uint16_t(sign | 0x7c00u);
    if (he <= 0) {
        if (he < -10) return sign;
        mant |= 0x800000u;
        return uint16_t(sign | (mant >> (14 - he)));
    }
    return uint16_t(sign | (uint32_t(he) << 10) | (mant >> 13));
}

int dtype_size(int dtype) { return dtype == VASHISTA_DTYPE_F16 || dtype == VASHISTA_DTYPE_BF16 ? 2 : 4; }

void store(uint8_t *p, int dtype, float x) {
    if (dtype == VASHISTA_DTYPE_BF16 || dtype == VASHISTA_DTYPE_F16) {
        const uint16_t b = dtype == VASHISTA_DTYPE_BF16 ? to_bf16(x) : to_f16(x);
        std::memcpy(p, &b, 2);
    } else {
        std::memcpy(p, &x, 4);
    }
}

bool finite_element(const uint8_t *p, int dtype) {
    if (dtype == VASHISTA_DTYPE_BF16 || dtype == VASHISTA_DTYPE_F16) {
        uint16_t b;
        std::memcpy(&b, p, 2);
        const uint16_t e = dtype == VASHISTA_DTYPE_F16 ? 0x7c00 : 0x7f80;
        return (b & e) != e;
    }
    float f;
    std::memcpy(&f, p, 4);
    return std::isfinite(f);
}

// Stores an enum field from its raw integer (possibly not one of the enum's values).
template <typename E>
void set_raw(E &field, int value) {
    static_assert(sizeof(E) == sizeof(int), "C enums are int-sized");
    std::memcpy(&field, &value, sizeof value);
}
template <typename E>
int get_raw(const E &field) {
    int v;
    std::memcpy(&v, &field, sizeof v);
    return v;
}

// ---- The world of one input ------------------------------------------------------------------

struct World {
    // The description as generated (the buffers are sized from these, positive or not).
    vashista_cache_desc desc{};
    int batch = 1, kv_heads = 1, head_dim = 1, page_size = 1, num_pages = 1, max_pages = 1;
    int kv_dtype = 0, layout = 0;
    std::vector<uint8_t> k_pages, v_pages;
    std::vector<int32_t> table;
    vashista_cache *cache = nullptr;
    std::vector<int32_t> appended;  // the model of vashista_appended_tokens
    bool big = false;               // K/V values beyond f16's range have been written
    float kv_magnitude = 0;         // the largest magnitude of K/V values written
    vashista_plan *plan = nullptr;
    vashista_decode_config plan_cfg{};
    vashista_plan_desc plan_desc{};

    ~World() {
        vashista_plan_destroy(plan);
        vashista_cache_destroy(cache);
    }
    int capacity() const { return max_pages * page_size; }
    // Byte offset of (page, slot, head) in the pages, as the layout puts it.
    size_t token_offset(int page, int slot, int head) const {
        const size_t e = layout == VASHISTA_LAYOUT_HND
                             ? ((size_t(page) * kv_heads + head) * page_size + slot) * head_dim
                             : ((size_t(page) * page_size + slot) * kv_heads + head) * head_dim;
        return e * dtype_size(kv_dtype);
    }
    // The physical page of (seq, pos) if the block table maps it in range, else -1.
    int page_of(int seq, int pos) const {
        const int j = pos / page_size;
        if (seq < 0 || seq >= batch || j >= max_pages) return -1;
        const int page = table[size_t(seq) * max_pages + j];
        return page >= 0 && page < num_pages ? page : -1;
    }
    int model(int seq) const { return seq >= 0 && seq < batch ? appended[seq] : 0; }

    // The model of what the certificate calls stale (vashista.h): per physical page, the
    // tokens its summary covers (0 before any); a sequence is stale when one of its pages
    // holds more of its tokens than that. With super-pages (hier_bound routing) also when a
    // page's super-page box was built from another page than the table maps now, or from an
    // older summary of it: per physical page a version (raised by every summary written), per
    // (sequence, logical page) the page and version its super-page box last saw.
    std::vector<int32_t> summarized_tokens;
    int super_pages = 0;
    std::vector<uint64_t> version;
    std::vector<std::pair<int32_t, uint64_t>> box_saw;  // [seq][j], page -1: never built
    void init_model() {
        appended.assign(batch, 0);
        summarized_tokens.assign(num_pages, 0);
        version.assign(num_pages, 0);
        box_saw.assign(size_t(batch) * max_pages, {-1, 0});
    }
    int tokens_in_page(int len, int j) const { return std::min(page_size, len - j * page_size); }
    void summarized(int seq, int j, int len) {
        const int page = table[size_t(seq) * max_pages + j];
        summarized_tokens[page] = tokens_in_page(len, j);
        ++version[page];
    }
    // The super-page boxes of seq over logical pages [first, last] are rebuilt from the pages
    // seq holds.
    void rebuilt(int seq, int first, int last) {
        if (!super_pages) return;
        const int held = (appended[seq] + page_size - 1) / page_size;
        for (int sp = first / super_pages; sp <= last / super_pages; ++sp)
            for (int j = sp * super_pages; j < std::min(held, (sp + 1) * super_pages); ++j) {
                const int page = table[size_t(seq) * max_pages + j];
                box_saw[size_t(seq) * max_pages + j] = {page, version[page]};
            }
    }
    // A successful append or summarize of tokens [start, start + count) of seq.
    void wrote(int seq, int start, int count) {
        const int new_len = std::max(appended[seq], start + count);
        const int first = start / page_size, last = (start + count - 1) / page_size;
        for (int j = first; j <= last; ++j) summarized(seq, j, new_len);
        appended[seq] = new_len;
        rebuilt(seq, first, last);
    }
    // A successful truncate of seq to new_len tokens.
    void truncated(int seq, int new_len) {
        if (new_len == appended[seq]) return;
        if (new_len % page_size) summarized(seq, new_len / page_size, new_len);
        appended[seq] = new_len;
        if (new_len > 0) rebuilt(seq, (new_len - 1) / page_size, (new_len - 1) / page_size);
    }
    // A successful share_prefix of `tokens` tokens to seq.
    void shared(int seq, int tokens) {
        appended[seq] = tokens;
        if (tokens > 0) rebuilt(seq, 0, (tokens - 1) / page_size);
    }
    // Whether vashista_share_prefix(seq, tokens) must succeed: the pages are mapped in range
    // and each has a summary of at least the tokens seq holds in it.
    bool shareable(int seq, int tokens) const {
        if (seq < 0 || seq >= batch || tokens < 0 || tokens > capacity()) return false;
        for (int j = 0; j < (tokens + page_size - 1) / page_size; ++j) {
            const int page = table[size_t(seq) * max_pages + j];
            if (page < 0 || page >= num_pages || summarized_tokens[page] < tokens_in_page(tokens, j)) return false;
        }
        return true;
    }
    // Whether a step of seq over len tokens through block table t reads a stale summary (or,
    // with `boxes`, a stale super-page box).
    bool stale(const int32_t *t, int seq, int len, bool boxes) const {
        const size_t row = size_t(seq) * max_pages;
        for (int j = 0; j < (len + page_size - 1) / page_size; ++j) {
            if (summarized_tokens[t[row + j]] < tokens_in_page(len, j)) return true;
            const auto [page, seen] = box_saw[row + j];
            if (boxes && (page != t[row + j] || seen != version[page])) return true;
        }
        return false;
    }
};

void read_desc(Reader &r, World &w) {
    w.batch = 1 + r.byte() % 3;
    w.kv_heads = 1 + r.byte() % 3;
    uint8_t b = r.byte();
    w.head_dim = b < 235 ? 64 : one_of(b, {0, -64, 32, 128, 63, 16, 1, 66});
    b = r.byte();
    w.page_size = b < 235 ? 16 : one_of(b, {0, -16, 8, 32, 1, 17});
    b = r.byte();
    w.num_pages = b < 250 ? 1 + b % 12 : one_of(b, {0, -1, INT_MIN});
    b = r.byte();
    w.max_pages = b < 250 ? 1 + b % 12 : one_of(b, {0, -3});
    b = r.byte();
    w.kv_dtype = b < 160   ? VASHISTA_DTYPE_BF16
                 : b < 205 ? VASHISTA_DTYPE_F32
                 : b < 235 ? VASHISTA_DTYPE_F16
                           : one_of(b, {3, -1, 255, INT_MIN, INT_MAX});
    b = r.byte();
    const int summary = b < 200 ? w.kv_dtype : b < 230 ? VASHISTA_DTYPE_I8 : one_of(b, {0, 1, 2, 4, -1});
    b = r.byte();
    // The layouts the library compiles: bf16 HND, f32 NHD.
    const int usual = w.kv_dtype == VASHISTA_DTYPE_F32 ? VASHISTA_LAYOUT_NHD : VASHISTA_LAYOUT_HND;
    w.layout = b < 210 ? usual : b < 235 ? 1 - usual : one_of(b, {2, -1, INT_MAX});
    b = r.byte();
    int bits = 0, group = 0;
    if (b >= 150 && b < 225) {
        bits = 8;
        group = 16;
    } else if (b >= 225) {
        const int odd[][2] = {{4, 16}, {8, 0}, {8, 7}, {3, 16}, {8, -16}, {4, 8}, {8, 64}, {8, 128}, {0, 5}, {16, 16}};
        bits = odd[b % 10][0];
        group = odd[b % 10][1];
    }
    w.desc.struct_size = sizeof(vashista_cache_desc);
    w.desc.batch = w.batch;
    w.desc.kv_heads = w.kv_heads;
    w.desc.head_dim = w.head_dim;
    w.desc.page_size = w.page_size;
    w.desc.num_pages = w.num_pages;
    w.desc.max_pages = w.max_pages;
    set_raw(w.desc.kv_dtype, w.kv_dtype);
    set_raw(w.desc.summary_dtype, summary);
    set_raw(w.desc.layout, w.layout);
    w.desc.sketch_bits = bits;
    w.desc.sketch_group = group;
    // Super-pages of 2 pages (hier_bound) for half the caches without a sketch, from the same byte.
    w.desc.super_pages = b < 75 ? 0 : b < 150 ? 2 : b % 16 == 0 ? -1 : 0;
    w.super_pages = std::max(w.desc.super_pages, 0);
    // The pages and the table, as large as the description says (one element when it says
    // nothing sensible: the library must reject such a description without reading them).
    const bool sized =
        w.batch > 0 && w.kv_heads > 0 && w.head_dim > 0 && w.page_size > 0 && w.num_pages > 0 && w.max_pages > 0;
    const size_t page_bytes =
        sized ? size_t(w.num_pages) * w.kv_heads * w.page_size * w.head_dim * dtype_size(w.kv_dtype) : 4;
    w.k_pages.assign(page_bytes, 0);
    w.v_pages.assign(page_bytes, 0);
    w.table.assign(size_t(w.batch) * std::max(w.max_pages, 1), 0);
    if (w.max_pages > 0)
        for (auto &e : w.table) {
            b = r.byte();
            e = b < 235 ? b % std::max(w.num_pages, 1)
                        : one_of(b, {-1, w.num_pages, w.num_pages + 7, INT_MIN, INT_MAX});
        }
    w.desc.k_pages = w.k_pages.data();
    w.desc.v_pages = w.v_pages.data();
    w.desc.page_table = w.table.data();
    b = r.byte();  // now and then a wrong struct_size or a NULL pointer
    if (b >= 240) {
        switch (b % 4) {
            case 0:
                w.desc.struct_size = sizeof(vashista_cache_desc) - 8;
                break;
            case 1:
                w.desc.k_pages = nullptr;
                break;
            case 2:
                w.desc.v_pages = nullptr;
                break;
            default:
                w.desc.page_table = nullptr;
        }
    }
    w.appended.assign(w.batch, 0);
}

// An engine's parallel-for (vashista_set_parallel_for): the tasks on the calling thread, last
// first (any order is allowed).
int g_engine_tag;
int reverse_parallel_for(void *engine_ctx, int32_t count, vashista_task_fn task, void *task_ctx) {
    if (engine_ctx != &g_engine_tag) violation("the parallel-for got engine_ctx %p, not %p", engine_ctx, &g_engine_tag);
    if (count < 0) violation("the parallel-for got count %d", count);
    for (int32_t i = count - 1; i >= 0; --i)
        if (const int rc = task(task_ctx, i)) return rc;
    return 0;
}

bool create_cache(Reader &r, World &w) {
    const uint8_t b = r.byte();
    // Bit 6: the kernels' loops on an engine's parallel-for instead of the library's (serial) pool.
    if (b & 0x40)
        vashista_set_parallel_for(reverse_parallel_for, &g_engine_tag);
    else
        vashista_set_parallel_for(nullptr, nullptr);
    auto *const untouched = reinterpret_cast<vashista_cache *>(uintptr_t(0x5A5A5A50));
    vashista_cache *c = untouched;
    trace(
        "cache_create batch %d kv_heads %d head_dim %d page_size %d num_pages %d max_pages %d kv %d summary %d "
        "layout %d sketch %d/%d struct_size %zu%s%s\n",
        w.batch, w.kv_heads, w.head_dim, w.page_size, w.num_pages, w.max_pages, w.kv_dtype,
        get_raw(w.desc.summary_dtype), w.layout, w.desc.sketch_bits, w.desc.sketch_group, w.desc.struct_size,
        b == 255 ? " desc NULL" : "", b == 254 ? " cache NULL" : "");
    const vashista_status s = vashista_cache_create(b == 255 ? nullptr : &w.desc, b == 254 ? nullptr : &c);
    check_status(s, kCreate);
    if (s == VASHISTA_OK) {
        if (!c || c == untouched) violation("vashista_cache_create returned OK without a cache");
        w.cache = c;
        w.init_model();
        return true;
    }
    if (c != nullptr && c != untouched) violation("vashista_cache_create failed but returned a cache");
    // The calls that follow get a NULL cache; the harness sizes their buffers from sane values.
    w.head_dim = std::clamp(w.head_dim, 1, 128);
    w.page_size = std::clamp(w.page_size, 1, 32);
    w.num_pages = std::max(w.num_pages, 1);
    w.max_pages = std::max(w.max_pages, 1);
    return false;
}

// A sequence index: mostly in [0, batch), now and then outside.
int read_seq(Reader &r, const World &w) {
    const uint8_t b = r.byte();
    return b < 245 ? b % w.batch : one_of(b, {-1, w.batch, INT_MIN, INT_MAX});
}

// Where a write starts: mostly where the sequence ends, sometimes inside it, now and then past it.
int read_start(Reader &r, int appended) {
    const uint8_t b = r.byte();
    if (b < 200) return appended;
    if (b < 235) return b % (appended + 1);
    return one_of(b, {appended + 1, -1, INT_MAX, INT_MIN});
}

int read_count(Reader &r, const World &w, int start) {
    const uint8_t b = r.byte();
    if (b < 240) return 1 + b % 48;
    const int past = int(std::clamp<int64_t>(int64_t(w.capacity()) - start + 1, INT_MIN, INT_MAX));
    return one_of(b, {0, -1, past, INT_MAX, INT_MIN});
}

void check_appended(const World &w, const char *after) {
    for (int b = 0; b < w.batch; ++b) {
        const int32_t got = vashista_appended_tokens(w.cache, b);
        const int32_t want = w.cache ? w.appended[b] : -1;
        if (got != want) violation("after %s, vashista_appended_tokens(seq %d) = %d, expected %d", after, b, got, want);
    }
    if (vashista_appended_tokens(w.cache, -1) != -1 || vashista_appended_tokens(w.cache, w.batch) != -1)
        violation("vashista_appended_tokens accepted a sequence outside [0, batch)");
}

// ---- Operations ------------------------------------------------------------------------------

void op_append(Reader &r, World &w) {
    const int seq = read_seq(r, w);
    const int before = w.model(seq);
    const int start = read_start(r, before);
    const int count = read_count(r, w, start);
    const Values vals = Values::read(r);
    const uint8_t nulls = r.byte();
    // [count][kv_heads][head_dim] each, or as much as the cache could take for a count the
    // library must reject.
    const int64_t tokens = std::clamp<int64_t>(count, 1, std::max(1, w.capacity()));
    const size_t elements = size_t(tokens) * w.kv_heads * w.head_dim, bytes = size_t(dtype_size(w.kv_dtype));
    std::vector<uint8_t> k(elements * bytes), v(elements * bytes);
    const bool special = vals.has_special(2 * elements);
    for (size_t i = 0; i < elements; ++i) {
        store(&k[i * bytes], w.kv_dtype, vals.at(i));
        store(&v[i * bytes], w.kv_dtype, vals.at(elements + i));
    }
    const std::vector<uint8_t> k_before = w.k_pages, v_before = w.v_pages;
    trace("append seq %d start %d count %d magnitude %g special %d@%u nulls %d\n", seq, start, count, vals.magnitude,
          vals.special, vals.special_at, nulls);
    const vashista_status s = vashista_append(w.cache, seq, start, count, nulls == 255 ? nullptr : k.data(),
                                              nulls == 254 ? nullptr : v.data());
    check_status(s, kAppend);
    if (s != VASHISTA_OK) {
        if (w.k_pages != k_before || w.v_pages != v_before)
            violation("vashista_append returned %s but changed the K/V pages", vashista_status_name(s));
        return;
    }
    if (special) violation("vashista_append accepted a NaN or Inf in k or v");
    if (vals.big()) w.big = true;
    w.kv_magnitude = std::max(w.kv_magnitude, vals.magnitude);
    // The tokens are where the block table maps them (the last write of a slot wins).
    std::vector<char> seen(size_t(w.num_pages) * w.page_size, 0);
    const size_t row = size_t(w.head_dim) * bytes;
    for (int t = count - 1; t >= 0; --t) {
        const int pos = start + t, page = w.page_of(seq, pos);
        if (page < 0) violation("vashista_append accepted token %d of sequence %d, mapped out of range", pos, seq);
        char &done = seen[size_t(page) * w.page_size + pos % w.page_size];
        if (done) continue;
        done = 1;
        for (int h = 0; h < w.kv_heads; ++h) {
            const size_t at = w.token_offset(page, pos % w.page_size, h), src = (size_t(t) * w.kv_heads + h) * row;
            if (std::memcmp(&w.k_pages[at], &k[src], row) || std::memcmp(&w.v_pages[at], &v[src], row))
                violation("vashista_append did not write token %d head %d of sequence %d into page %d", pos, h, seq,
                          page);
        }
    }
    w.wrote(seq, start, count);
}

void op_summarize(Reader &r, World &w) {
    const int seq = read_seq(r, w);
    const int before = w.model(seq);
    const int start = read_start(r, before);
    const int count = read_count(r, w, start);
    const uint8_t write = r.byte();
    const Values vals = Values::read(r);
    // The engine writes its own KV first: tokens whose page the block table maps in range.
    if (w.cache && write < 220 && seq >= 0 && seq < w.batch && start >= 0 && count >= 1) {
        const size_t bytes = size_t(dtype_size(w.kv_dtype));
        size_t i = 0;
        for (int64_t pos = start; pos < int64_t(start) + count && pos < w.capacity(); ++pos) {
            const int page = w.page_of(seq, int(pos));
            for (int h = 0; h < w.kv_heads; ++h)
                for (int x = 0; x < w.head_dim; ++x, ++i) {
                    if (page < 0) continue;
                    const size_t at = w.token_offset(page, int(pos) % w.page_size, h) + size_t(x) * bytes;
                    store(&w.k_pages[at], w.kv_dtype, vals.at(2 * i));
                    store(&w.v_pages[at], w.kv_dtype, vals.at(2 * i + 1));
                }
        }
        if (vals.big()) w.big = true;
        w.kv_magnitude = std::max(w.kv_magnitude, vals.magnitude);
    }
    trace("summarize seq %d start %d count %d (written: %d, magnitude %g special %d@%u)\n", seq, start, count,
          write < 220, vals.magnitude, vals.special, vals.special_at);
    const vashista_status s = vashista_summarize(w.cache, seq, start, count);
    check_status(s, kSummarize);
    if (s == VASHISTA_OK) w.wrote(seq, start, count);
}

void op_truncate(Reader &r, World &w) {
    const int seq = read_seq(r, w);
    const int before = w.model(seq);
    const uint8_t b = r.byte();
    const int new_len = b < 225 ? b % (before + 1) : one_of(b, {before + 1, -1, INT_MAX, INT_MIN, before});
    trace("truncate seq %d new_len %d\n", seq, new_len);
    const vashista_status s = vashista_truncate(w.cache, seq, new_len);
    check_status(s, kTruncate);
    if (s == VASHISTA_OK) w.truncated(seq, new_len);
}

// Sharing a prefix: mostly as many tokens as another sequence holds (the pages it maps may
// be that sequence's), now and then any length or a bad argument.
void op_share_prefix(Reader &r, World &w) {
    const int seq = read_seq(r, w);
    const uint8_t b = r.byte();
    const int tokens = b < 200   ? w.model(b % w.batch)
                       : b < 240 ? b % (w.capacity() + 1)
                                 : one_of(b, {-1, w.capacity() + 1, INT_MAX, INT_MIN});
    trace("share_prefix seq %d tokens %d\n", seq, tokens);
    const vashista_status s = vashista_share_prefix(w.cache, seq, tokens);
    check_status(s, kShare);
    const bool expect = !g_no_cache && w.shareable(seq, tokens);
    if ((s == VASHISTA_OK) != expect)
        violation("share_prefix seq %d tokens %d returned %s, the model says it %s", seq, tokens,
                  vashista_status_name(s), expect ? "must succeed" : "must fail");
    if (s == VASHISTA_OK) w.shared(seq, tokens);
}

// A decode configuration: the compiled variant's settings mostly (P = 4, K_c = 16, softmax,
// bound, sketch or hier_bound routing, one sink and two local pages), anything now and then.
vashista_decode_config read_config(Reader &r) {
    vashista_decode_config c;
    vashista_decode_config_default(&c);
    if (c.struct_size != sizeof c) violation("vashista_decode_config_default set struct_size %zu", c.struct_size);
    uint8_t b = r.byte();
    c.top_pages = b < 200 ? 4 : b < 240 ? b % 9 : one_of(b, {-1, INT_MIN, 64, 8});
    b = r.byte();
    c.top_tokens = b < 200 ? 16 : b < 240 ? b % 33 : one_of(b, {-1, 128, 32, INT_MIN});
    b = r.byte();
    set_raw(c.solver, b < 210 ? 0 : b < 240 ? b % 4 : one_of(b, {4, -1, INT_MAX}));
    b = r.byte();
    set_raw(c.routing, b < 160   ? VASHISTA_ROUTING_BOUND
                       : b < 215 ? VASHISTA_ROUTING_SKETCH
                       : b < 230 ? VASHISTA_ROUTING_MEAN
                       : b < 245 ? VASHISTA_ROUTING_HIER_BOUND
                                 : one_of(b, {4, -1, INT_MIN}));
    c.super_expand = 2;  // the hier_bound variant's Q
    b = r.byte();
    set_raw(c.group_routing, b < 235 ? 0 : b < 245 ? 1 : one_of(b, {2, -1}));
    b = r.byte();
    set_raw(c.policy, b < 140   ? VASHISTA_POLICY_DENSE
                      : b < 190 ? VASHISTA_POLICY_NONE
                      : b < 230 ? VASHISTA_POLICY_WIDEN
                                : one_of(b, {3, -1, INT_MAX}));
    b = r.byte();
    c.tolerance = b < 140   ? 1e-3f
                  : b < 180 ? 0.0f
                  : b < 205 ? 1e30f
                  : b < 230 ? 0.05f
                            : one_of(b, {NAN, -1.0f, INFINITY, -0.0f, -INFINITY});
    b = r.byte();
    c.scale = b < 200 ? 0.0f : b < 230 ? 0.0625f * (1 + b % 8) : b < 240 ? 1e30f : one_of(b, {NAN, -1.0f, INFINITY});
    b = r.byte();
    if (b >= 230) {
        c.solver_steps = one_of(r.byte(), {0, -1, 6, 1000, 1});
        c.solver_eta = one_of(r.byte(), {NAN, 0.2f, -1.0f, 0.0f, 1e30f});
        c.solver_tau = one_of(r.byte(), {NAN, 1.0f, -1.0f, 0.0f, INFINITY});
    }
    b = r.byte();
    c.sink_pages = b < 230 ? 1 : b % 4 - 1;
    b = r.byte();
    c.local_pages = b < 230 ? 2 : b % 5 - 1;
    b = r.byte();
    c.relative_tolerance = b < 200 ? 0 : b < 240 ? 1 : one_of(b, {2, -1});
    b = r.byte();
    if (b >= 250) c.struct_size = one_of(b, {size_t(0), sizeof c - 4, sizeof c + 4});
    return c;
}

int read_q_heads(Reader &r, const World &w) {
    const uint8_t b = r.byte();
    if (b < 215) return 2 * w.kv_heads;
    if (b < 235) return w.kv_heads * (1 + b % 3);
    if (b < 245) return 2 * w.kv_heads + 1;
    return one_of(b, {0, -1, INT_MIN, w.kv_heads + 1});
}

// seq_lens: each sequence's appended tokens mostly (or fewer), now and then outside [1, appended].
std::vector<int32_t> read_seq_lens(Reader &r, const World &w, bool &null) {
    null = r.byte() >= 252;
    std::vector<int32_t> lens(w.batch);
    for (int b = 0; b < w.batch; ++b) {
        const uint8_t v = r.byte();
        const int a = w.appended[b];
        lens[b] = v < 200   ? std::max(a, 1)
                  : v < 235 ? 1 + v % std::max(a, 1)
                            : one_of(v, {0, -1, a + 1, w.capacity() + 1, INT_MAX, INT_MIN});
    }
    return lens;
}

// What a step's outputs must be on success. q_heads is the query heads per sequence.
void check_step_outputs(const World &w, Fn fn, const vashista_decode_config &cfg, int q_heads,
                        const std::vector<int32_t> &lens, const int32_t *table, const float *lse,
                        const vashista_head_diag *diag, const int32_t *candidates) {
    const size_t heads = size_t(w.batch) * q_heads;
    if (lse)
        for (size_t i = 0; i < heads; ++i)
            if (!std::isfinite(lse[i])) violation("%s returned OK with lse[%zu] = %g", kFnNames[fn], i, lse[i]);
    if (diag) {
        const int policy = get_raw(cfg.policy);
        for (size_t i = 0; i < heads; ++i) {
            const vashista_head_diag &d = diag[i];
            if (d.struct_size != sizeof(vashista_head_diag))
                violation("%s: diag[%zu].struct_size = %zu", kFnNames[fn], i, d.struct_size);
            if (d.certificate < VASHISTA_CERTIFIED || d.certificate > VASHISTA_UNCERTIFIED_OVERFLOW)
                violation("%s: diag[%zu].certificate = %d", kFnNames[fn], i, d.certificate);
            if (d.policy_taken < VASHISTA_TAKEN_SPARSE || d.policy_taken > VASHISTA_TAKEN_DENSE)
                violation("%s: diag[%zu].policy_taken = %d", kFnNames[fn], i, d.policy_taken);
            if (std::isnan(d.error_bound) || d.error_bound < 0)
                violation("%s: diag[%zu].error_bound = %g", kFnNames[fn], i, d.error_bound);
            if (d.certificate != VASHISTA_CERTIFIED && d.error_bound != INFINITY)
                violation("%s: diag[%zu] is uncertified (%d) with error_bound %g, not +inf", kFnNames[fn], i,
                          d.certificate, d.error_bound);
            const bool stale = w.stale(table, int(i / q_heads), lens[i / q_heads],
                                       get_raw(cfg.routing) == VASHISTA_ROUTING_HIER_BOUND);
            if (stale != (d.certificate == VASHISTA_UNCERTIFIED_STALE))
                violation("%s: diag[%zu].certificate = %d, but sequence %zu's summaries are%s stale", kFnNames[fn], i,
                          d.certificate, i / q_heads, stale ? "" : " not");
            if (d.candidates < 0 || d.candidates > cfg.top_tokens)
                violation("%s: diag[%zu].candidates = %d with top_tokens = %d", kFnNames[fn], i, d.candidates,
                          cfg.top_tokens);
            const bool allowed = policy == VASHISTA_POLICY_NONE ? d.policy_taken <= VASHISTA_TAKEN_REPORTED
                                 : policy == VASHISTA_POLICY_DENSE
                                     ? d.policy_taken == VASHISTA_TAKEN_SPARSE || d.policy_taken == VASHISTA_TAKEN_DENSE
                                     : d.policy_taken != VASHISTA_TAKEN_REPORTED;
            if (!allowed)
                violation("%s: diag[%zu].policy_taken = %d under policy %d", kFnNames[fn], i, d.policy_taken, policy);
            if (!cfg.relative_tolerance) {
                const bool within = d.error_bound <= cfg.tolerance;
                if ((d.policy_taken == VASHISTA_TAKEN_SPARSE || d.policy_taken == VASHISTA_TAKEN_WIDENED) && !within)
                    violation("%s: diag[%zu] took sparse (%d) with error_bound %g over tolerance %g", kFnNames[fn], i,
                              d.policy_taken, d.error_bound, cfg.tolerance);
                if (d.policy_taken == VASHISTA_TAKEN_REPORTED && within)
                    violation("%s: diag[%zu] reported error_bound %g within tolerance %g", kFnNames[fn], i,
                              d.error_bound, cfg.tolerance);
            }
        }
    }
    if (candidates)
        for (size_t i = 0; i < heads; ++i) {
            const int32_t *row = candidates + i * size_t(cfg.top_tokens);
            const int32_t len = lens[i / q_heads];
            bool ended = false;
            for (int k = 0; k < cfg.top_tokens; ++k) {
                if (row[k] == -1) {
                    ended = true;
                    continue;
                }
                if (ended || row[k] < 0 || row[k] >= len || (k > 0 && row[k] <= row[k - 1]))
                    violation(
                        "%s: candidates[%zu][%d] = %d (previous %d, seq_len %d): not increasing positions "
                        "below seq_len followed by -1",
                        kFnNames[fn], i, k, row[k], k ? row[k - 1] : -2, len);
            }
        }
}

void op_decode(Reader &r, World &w) {
    const vashista_decode_config cfg = read_config(r);
    const int q_heads = read_q_heads(r, w);
    bool lens_null;
    const std::vector<int32_t> lens = read_seq_lens(r, w, lens_null);
    const Values vals = Values::read(r);
    const uint8_t flags = r.byte();
    const bool cfg_null = flags >= 252 && flags % 2, q_null = flags >= 252 && !(flags % 2), out_null = flags == 251;
    const bool with_candidates = flags & 4, lse_null = flags & 1, diag_null = flags & 2, cand_null = flags & 8;
    // The library reads batch x q_heads x head_dim of q when it accepts q_heads.
    const size_t heads = size_t(w.batch) * std::max(q_heads, 1);
    const size_t elements = heads * w.head_dim;
    std::vector<float> q(elements);
    for (size_t i = 0; i < elements; ++i) q[i] = vals.at(i);
    const int top_tokens = std::max(cfg.top_tokens, 1);
    auto out = sentinel_buffer(elements * 4), lse = sentinel_buffer(heads * 4),
         diag = sentinel_buffer(heads * sizeof(vashista_head_diag)), cand = sentinel_buffer(heads * top_tokens * 4);
    auto *outp = out_null ? nullptr : reinterpret_cast<float *>(out.data());
    auto *lsep = lse_null ? nullptr : reinterpret_cast<float *>(lse.data());
    auto *diagp = diag_null ? nullptr : reinterpret_cast<vashista_head_diag *>(diag.data());
    auto *candp = cand_null ? nullptr : reinterpret_cast<int32_t *>(cand.data());
    trace(
        "decode%s q_heads %d P %d K_c %d solver %d routing %d group %d policy %d tolerance %g%s scale %g sink %d "
        "local %d q magnitude %g special %d@%u%s\n",
        with_candidates ? "_with_candidates" : "", q_heads, cfg.top_pages, cfg.top_tokens, get_raw(cfg.solver),
        get_raw(cfg.routing), get_raw(cfg.group_routing), get_raw(cfg.policy), cfg.tolerance,
        cfg.relative_tolerance ? " relative" : "", cfg.scale, cfg.sink_pages, cfg.local_pages, vals.magnitude,
        vals.special, vals.special_at, cfg_null ? " config NULL" : "");
    const vashista_status s =
        with_candidates
            ? vashista_decode_with_candidates(w.cache, cfg_null ? nullptr : &cfg, q_null ? nullptr : q.data(), q_heads,
                                              lens_null ? nullptr : lens.data(), outp, lsep, diagp, candp)
            : vashista_decode(w.cache, cfg_null ? nullptr : &cfg, q_null ? nullptr : q.data(), q_heads,
                              lens_null ? nullptr : lens.data(), outp, lsep, diagp);
    check_status(s, kDecode);
    if (s != VASHISTA_OK) {
        check_unchanged(out.data(), out.size(), "out", kDecode, s);
        check_unchanged(lse.data(), lse.size(), "lse", kDecode, s);
        check_unchanged(diag.data(), diag.size(), "diag", kDecode, s);
        check_unchanged(cand.data(), cand.size(), "candidates", kDecode, s);
        return;
    }
    if (vals.has_special(elements)) violation("vashista_decode accepted a NaN or Inf in q");
    for (size_t i = 0; i < elements; ++i)
        if (!finite_element(&out[i * 4], VASHISTA_DTYPE_F32))
            violation("vashista_decode returned OK with out[%zu] not finite", i);
    check_step_outputs(w, kDecode, cfg, q_heads, lens, w.table.data(), lsep, diagp, with_candidates ? candp : nullptr);
    if (!with_candidates) check_unchanged(cand.data(), cand.size(), "candidates (not passed)", kDecode, s);
}

void op_dense(Reader &r, World &w) {
    const int q_heads = read_q_heads(r, w);
    bool lens_null;
    const std::vector<int32_t> lens = read_seq_lens(r, w, lens_null);
    uint8_t b = r.byte();
    const float scale = b < 200 ? 0.0f : b < 235 ? 0.0625f * (1 + b % 16) : one_of(b, {NAN, -1.0f, INFINITY, 1e30f});
    const Values vals = Values::read(r);
    b = r.byte();
    const bool lse_null = b & 1, q_null = b == 254, out_null = b == 252;
    const size_t heads = size_t(w.batch) * std::max(q_heads, 1), elements = heads * w.head_dim;
    std::vector<float> q(elements);
    for (size_t i = 0; i < elements; ++i) q[i] = vals.at(i);
    auto out = sentinel_buffer(elements * 4), lse = sentinel_buffer(heads * 4);
    trace("dense q_heads %d scale %g q magnitude %g special %d@%u (K/V beyond f16: %d)\n", q_heads, scale,
          vals.magnitude, vals.special, vals.special_at, w.big);
    const vashista_status s =
        vashista_dense(w.cache, q_null ? nullptr : q.data(), q_heads, lens_null ? nullptr : lens.data(), scale,
                       out_null ? nullptr : reinterpret_cast<float *>(out.data()),
                       lse_null ? nullptr : reinterpret_cast<float *>(lse.data()));
    check_status(s, kDense);
    if (s != VASHISTA_OK) {
        check_unchanged(out.data(), out.size(), "out", kDense, s);
        check_unchanged(lse.data(), lse.size(), "lse", kDense, s);
        return;
    }
    if (vals.has_special(elements)) violation("vashista_dense accepted a NaN or Inf in q");
    for (size_t i = 0; i < elements; ++i)
        if (!finite_element(&out[i * 4], VASHISTA_DTYPE_F32)) {
            float o, l = NAN;
            std::memcpy(&o, &out[i * 4], 4);
            if (!lse_null) std::memcpy(&l, &lse[(i / w.head_dim) * 4], 4);
            violation("vashista_dense returned OK with out[%zu] = %g (lse %g; scale %g, q magnitude %g, K/V %g)", i, o,
                      l, scale, vals.magnitude, w.kv_magnitude);
        }
    if (lse_null) {
        check_unchanged(lse.data(), lse.size(), "lse (not passed)", kDense, s);
    } else {
        for (size_t i = 0; i < heads; ++i)
            if (!finite_element(&lse[i * 4], VASHISTA_DTYPE_F32))
                violation("vashista_dense returned OK with lse[%zu] not finite", i);
    }
}

int read_dtype(Reader &r) {
    const uint8_t b = r.byte();
    return b < 170   ? VASHISTA_DTYPE_F32
           : b < 200 ? VASHISTA_DTYPE_BF16
           : b < 235 ? VASHISTA_DTYPE_F16
                     : one_of(b, {3, -1, INT_MAX});
}

// Element strides of a plan's q or out: 0 (contiguous) mostly, else padded, overlapping
// between sequences, or invalid.
void read_strides(Reader &r, const World &w, int64_t &seq, int64_t &head) {
    seq = head = 0;
    const uint8_t b = r.byte();
    if (b < 170) return;
    uint8_t v = r.byte();
    head = v < 100   ? 0
           : v < 220 ? w.head_dim + v % 16
                     : one_of(v, {int64_t(-1), int64_t(w.head_dim - 1), int64_t(1), INT64_MIN});
    v = r.byte();
    const int64_t h = head >= w.head_dim ? head : w.head_dim;
    seq = v < 100   ? 0
          : v < 200 ? h * 2 * w.kv_heads + v % 16
          : v < 230 ? 1 + v % 8
                    : one_of(v, {int64_t(-1), int64_t(h), INT64_MIN});
}

// Elements a strided [batch][q_heads][head_dim] spans (0 strides contiguous).
size_t strided_extent(const World &w, int q_heads, int64_t seq, int64_t head) {
    const int64_t h = head ? head : w.head_dim;
    const int64_t s = seq ? seq : h * q_heads;
    return size_t((w.batch - 1) * s + (q_heads - 1) * h + w.head_dim);
}

bool make_plan(Reader &r, World &w) {
    vashista_plan_destroy(w.plan);
    w.plan = nullptr;
    const vashista_decode_config cfg = read_config(r);
    vashista_plan_desc pd;
    vashista_plan_desc_default(&pd, read_q_heads(r, w));
    if (pd.struct_size != sizeof pd) violation("vashista_plan_desc_default set struct_size %zu", pd.struct_size);
    set_raw(pd.q_dtype, read_dtype(r));
    set_raw(pd.out_dtype, read_dtype(r));
    read_strides(r, w, pd.q_stride_seq, pd.q_stride_head);
    read_strides(r, w, pd.out_stride_seq, pd.out_stride_head);
    const uint8_t b = r.byte();
    if (b >= 252) pd.struct_size = b == 252 ? sizeof pd + 8 : 0;
    auto *const untouched = reinterpret_cast<vashista_plan *>(uintptr_t(0x5A5A5A50));
    vashista_plan *p = untouched;
    trace(
        "plan_create q_heads %d q %d out %d strides q %lld/%lld out %lld/%lld P %d K_c %d routing %d policy %d "
        "tolerance %g scale %g\n",
        pd.q_heads, get_raw(pd.q_dtype), get_raw(pd.out_dtype), (long long)pd.q_stride_seq, (long long)pd.q_stride_head,
        (long long)pd.out_stride_seq, (long long)pd.out_stride_head, cfg.top_pages, cfg.top_tokens,
        get_raw(cfg.routing), get_raw(cfg.policy), cfg.tolerance, cfg.scale);
    const vashista_status s =
        vashista_plan_create(w.cache, b == 253 ? nullptr : &cfg, b == 254 ? nullptr : &pd, b == 255 ? nullptr : &p);
    check_status(s, kPlan);
    if (s != VASHISTA_OK) {
        if (p != nullptr && p != untouched) violation("vashista_plan_create failed but returned a plan");
        return false;
    }
    if (!p || p == untouched) violation("vashista_plan_create returned OK without a plan");
    if (vashista_plan_workspace_size(p) == 0) violation("a plan needs no workspace");
    w.plan = p;
    w.plan_cfg = cfg;
    w.plan_desc = pd;
    return true;
}

void run_plan(Reader &r, World &w) {
    const vashista_plan_desc &pd = w.plan_desc;
    const vashista_decode_config &cfg = w.plan_cfg;
    const size_t need = vashista_plan_workspace_size(w.plan);
    uint8_t b = r.byte();
    size_t size = need;
    if (b >= 215 && b < 240)
        size = need - 1 - size_t(r.byte()) % std::min<size_t>(need, 256);
    else if (b >= 240 && b < 250)
        size = need + r.byte();
    const bool ws_null = b >= 250;
    const size_t misalign = r.byte() % 64;
    std::vector<uint8_t> workspace(size + misalign);
    // The block table: the cache's (NULL), or a copy given to the call, with an entry changed.
    b = r.byte();
    std::vector<int32_t> table = w.table;
    const bool own_table = b >= 180;
    if (own_table && b >= 215) {
        const uint8_t i = r.byte(), v = r.byte();
        table[i % table.size()] = v < 230 ? v % w.num_pages : one_of(v, {-1, w.num_pages, INT_MIN});
    }
    bool lens_null;
    const std::vector<int32_t> lens = read_seq_lens(r, w, lens_null);
    const Values vals = Values::read(r);
    const uint8_t flags = r.byte();
    const bool lse_null = flags & 1, diag_null = flags & 2, cand_null = flags & 4, q_null = flags == 254,
               out_null = flags == 252;

    const int qt = get_raw(pd.q_dtype), ot = get_raw(pd.out_dtype);
    const size_t qb = size_t(dtype_size(qt)), ob = size_t(dtype_size(ot));
    const int64_t q_head = pd.q_stride_head ? pd.q_stride_head : w.head_dim;
    const int64_t q_seq = pd.q_stride_seq ? pd.q_stride_seq : q_head * pd.q_heads;
    const int64_t o_head = pd.out_stride_head ? pd.out_stride_head : w.head_dim;
    const int64_t o_seq = pd.out_stride_seq ? pd.out_stride_seq : o_head * pd.q_heads;
    // q: NaN everywhere but the heads' rows (the library must not read between them).
    const size_t q_extent = strided_extent(w, pd.q_heads, pd.q_stride_seq, pd.q_stride_head);
    std::vector<uint8_t> q(q_extent * qb);
    for (size_t i = 0; i < q_extent; ++i) store(&q[i * qb], qt, NAN);
    const size_t elements = size_t(w.batch) * pd.q_heads * w.head_dim;
    std::vector<char> written(strided_extent(w, pd.q_heads, pd.out_stride_seq, pd.out_stride_head), 0);
    for (int s = 0; s < w.batch; ++s)
        for (int h = 0; h < pd.q_heads; ++h)
            for (int x = 0; x < w.head_dim; ++x) {
                const size_t i = (size_t(s) * pd.q_heads + h) * w.head_dim + x;
                store(&q[size_t(s * q_seq + h * q_head + x) * qb], qt, vals.at(i));
                written[size_t(s * o_seq + h * o_head + x)] = 1;
            }
    const size_t heads = size_t(w.batch) * pd.q_heads;
    auto out = sentinel_buffer(written.size() * ob), lse = sentinel_buffer(heads * 4),
         diag = sentinel_buffer(heads * sizeof(vashista_head_diag)), cand = sentinel_buffer(heads * cfg.top_tokens * 4);
    auto *diagp = diag_null ? nullptr : reinterpret_cast<vashista_head_diag *>(diag.data());
    auto *candp = cand_null ? nullptr : reinterpret_cast<int32_t *>(cand.data());
    auto *lsep = lse_null ? nullptr : reinterpret_cast<float *>(lse.data());
    trace("run workspace %zu of %zu (+%zu)%s table %s q magnitude %g special %d@%u\n", size, need, misalign,
          ws_null ? " NULL" : "", own_table ? "own" : "cache's", vals.magnitude, vals.special, vals.special_at);
    const vashista_status s =
        vashista_run(w.plan, ws_null ? nullptr : workspace.data() + misalign, size, own_table ? table.data() : nullptr,
                     q_null ? nullptr : q.data(), lens_null ? nullptr : lens.data(), out_null ? nullptr : out.data(),
                     lsep, diagp, candp);
    check_status(s, kRun);
    if (s != VASHISTA_OK) {
        check_unchanged(out.data(), out.size(), "out", kRun, s);
        check_unchanged(lse.data(), lse.size(), "lse", kRun, s);
        check_unchanged(diag.data(), diag.size(), "diag", kRun, s);
        check_unchanged(cand.data(), cand.size(), "candidates", kRun, s);
        // Rows of q are finite unless the values put a NaN or Inf there: a complaint about q
        // then means the library read between the rows (a 16-bit q may also round to Inf).
        if (s == VASHISTA_ERROR_NON_FINITE && std::strncmp(vashista_last_error(), "q[", 2) == 0 &&
            !vals.has_special(elements) && !(qt == VASHISTA_DTYPE_F16 && vals.magnitude > 6e4f))
            violation("vashista_run: q is finite in every head's row, yet: %s", vashista_last_error());
        return;
    }
    if (vals.has_special(elements)) violation("vashista_run accepted a NaN or Inf in q");
    for (size_t i = 0; i < written.size(); ++i) {
        if (!written[i]) {
            for (size_t k = 0; k < ob; ++k)
                if (out[i * ob + k] != kSentinel)
                    violation("vashista_run wrote element %zu of out, between the heads' rows (strides %lld, %lld)", i,
                              (long long)pd.out_stride_seq, (long long)pd.out_stride_head);
        } else if (!finite_element(&out[i * ob], ot) && !(ot == VASHISTA_DTYPE_F16 && w.big)) {
            violation("vashista_run returned OK with out element %zu not finite (out dtype %d)", i, ot);
        }
    }
    check_step_outputs(w, kRun, cfg, pd.q_heads, lens, own_table ? table.data() : w.table.data(), lsep, diagp, candp);
}

void op_plan(Reader &r, World &w) {
    const uint8_t b = r.byte();
    if (!w.cache) {
        make_plan(r, w);
        return;
    }
    if ((!w.plan || b >= 128) && !make_plan(r, w)) return;
    const int runs = 1 + r.byte() % 2;
    for (int i = 0; i < runs; ++i) run_plan(r, w);
}

// vashista_list_variants into a buffer of some capacity: the full length back, at most
// capacity - 1 characters and a NUL written, nothing past them.
void op_list_variants(Reader &r) {
    const size_t full = vashista_list_variants(nullptr, 0);
    if (full == 0) violation("vashista_list_variants lists no variant");
    const uint8_t b = r.byte();
    const size_t capacity = b < 128 ? full + 1 : b % (full + 2);
    std::vector<char> buffer(std::max<size_t>(capacity, 1), char(kSentinel));
    trace("list_variants capacity %zu of %zu\n", capacity, full + 1);
    const size_t n = vashista_list_variants(buffer.data(), capacity);
    if (n != full) violation("vashista_list_variants returned %zu, then %zu", full, n);
    const size_t written = capacity ? std::min(capacity - 1, full) + 1 : 0;
    if (written && (buffer[written - 1] != 0 || std::strlen(buffer.data()) != written - 1))
        violation("vashista_list_variants into %zu bytes: no NUL at %zu", capacity, written - 1);
    for (size_t i = written; i < buffer.size(); ++i)
        if (buffer[i] != char(kSentinel))
            violation("vashista_list_variants into %zu bytes wrote byte %zu", capacity, i);
    if (written > 8 && std::strncmp(buffer.data(), "decode ", 7) != 0)
        violation("vashista_list_variants starts \"%.20s\"", buffer.data());
}

void op_edit_table(Reader &r, World &w) {
    const int edits = 1 + r.byte() % 4;
    for (int e = 0; e < edits; ++e) {
        const size_t i = r.byte() % w.table.size();
        const uint8_t v = r.byte();
        if (v < 220)
            w.table[i] = v % std::max(w.num_pages, 1);
        else if (v < 240)
            std::swap(w.table[i], w.table[v % w.table.size()]);
        else
            w.table[i] = one_of(v, {-1, w.num_pages, INT_MAX, INT_MIN});
    }
}

}  // namespace

// UBSan stops at its first report (the checks are compiled recoverable so that the known,
// unfixed reports in ubsan.supp can be skipped); UBSAN_OPTIONS still overrides these.
extern "C" const char *__ubsan_default_options() {
    return "halt_on_error=1:print_stacktrace=1:suppressions=" VASHISTA_FUZZ_UBSAN_SUPPRESSIONS;
}

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    // The kernels' loops serially on the fuzzing thread: deterministic, and one core each.
    vashista_set_num_threads(1);
    g_trace = std::getenv("FUZZ_ABI_TRACE") != nullptr;
    std::atexit(print_stats);
    if (vashista_abi_version() != VASHISTA_ABI_VERSION) violation("ABI version %u", vashista_abi_version());
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Reader r{data, size};
    ++g_inputs;
    trace("---- input of %zu bytes\n", size);
    World w;
    read_desc(r, w);
    const bool created = create_cache(r, w);
    g_no_cache = !created;
    check_appended(w, "vashista_cache_create");
    // Without a cache every call must say so; two suffice.
    const int ops = created ? kMaxOps : 2;
    for (int i = 0; i < ops && !r.empty(); ++i) {
        const uint8_t op = r.byte() % 9;
        if (op == 6) trace("edit block table\n");
        switch (op) {
            case 0:
                op_append(r, w);
                break;
            case 1:
                op_summarize(r, w);
                break;
            case 2:
                op_truncate(r, w);
                break;
            case 3:
                op_decode(r, w);
                break;
            case 4:
                op_dense(r, w);
                break;
            case 5:
                op_plan(r, w);
                break;
            case 6:
                op_edit_table(r, w);
                break;
            case 7:
                op_share_prefix(r, w);
                break;
            default:
                op_list_variants(r);
        }
        check_appended(w, "an operation");
    }
    return 0;
}
