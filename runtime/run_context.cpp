#include "run_context.h"

#include "HalideRuntime.h"

#include <algorithm>
#include <mutex>
#include <string>

namespace vashista::runtime {

namespace {

// A block's header: its size in bytes (header included) and whether it is in use.
struct Block {
    size_t size;
    bool used;
};
static_assert(sizeof(Block) <= Arena::kHeader, "a block header fits its 64 bytes");

Block *block_at(uint8_t *p) { return reinterpret_cast<Block *>(p); }

}  // namespace

void Arena::start_call() {
    std::lock_guard<std::mutex> lock(mutex_);
    live_ = peak_ = overflowed_ = 0;
    if (base_) *block_at(base_) = Block{size_, false};
}

void *Arena::allocate(size_t bytes) {
    // Halide reads a few bytes past either end of an allocation: round up and keep 64 spare.
    const size_t need = (bytes + 63) / 64 * 64 + kHeader + 64;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!base_) {
        auto *p = static_cast<uint8_t *>(halide_default_malloc(nullptr, need));
        if (!p) return nullptr;
        *block_at(p) = Block{need, true};
        live_ += need;
        peak_ = std::max(peak_, live_);
        return p + kHeader;
    }
    for (uint8_t *p = base_; p < base_ + size_;) {
        Block *b = block_at(p);
        if (!b->used) {  // merge the free blocks that follow
            while (p + b->size < base_ + size_ && !block_at(p + b->size)->used) b->size += block_at(p + b->size)->size;
            if (b->size >= need) {
                if (b->size - need >= 2 * kHeader) {
                    *block_at(p + need) = Block{b->size - need, false};
                    b->size = need;
                }
                b->used = true;
                return p + kHeader;
            }
        }
        p += b->size;
    }
    ++overflowed_;
    return nullptr;
}

bool Arena::release(void *ptr) {
    auto *p = static_cast<uint8_t *>(ptr) - kHeader;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!base_) {
        live_ -= block_at(p)->size;
        halide_default_free(nullptr, p);
        return true;
    }
    if (p < base_ || p >= base_ + size_) return false;
    block_at(p)->used = false;
    return true;
}

namespace {

// Allocations of a kernel called with an arena come from it (or from the system allocator,
// when it is full or measuring). A call with no arena, as the tuner and append make, uses
// the system allocator.
void *arena_malloc(void *user_context, size_t bytes) {
    auto *arena = static_cast<Arena *>(user_context);
    if (arena) {
        void *p = arena->allocate(bytes);
        if (p || arena->measuring()) return p;
    }
    return halide_default_malloc(nullptr, bytes);
}

void arena_free(void *user_context, void *p) {
    auto *arena = static_cast<Arena *>(user_context);
    if (arena && arena->release(p)) return;
    halide_default_free(nullptr, p);
}

std::atomic<vashista_parallel_for_fn> g_parallel_for{nullptr};
std::atomic<int32_t> g_num_threads{0};
std::atomic<void *> g_engine_ctx{nullptr};

struct LoopTask {
    halide_task_t fn;
    void *user_context;
    int min;
    uint8_t *closure;
};

int run_loop_task(void *task_ctx, int32_t index) {
    const auto *t = static_cast<const LoopTask *>(task_ctx);
    return t->fn(t->user_context, t->min + index, t->closure);
}

// A kernel's parallel loop: on the engine's parallel-for when it gave one; on the calling
// thread alone when set to one thread (Halide's own pool still wakes its workers then);
// else on Halide's pool.
int do_par_for(void *user_context, halide_task_t fn, int min, int size, uint8_t *closure) {
    // A measuring arena sees one task at a time: its peak is what one thread needs.
    const auto *arena = static_cast<const Arena *>(user_context);
    const vashista_parallel_for_fn engine = g_parallel_for.load();
    if ((arena && arena->measuring()) || (!engine && g_num_threads.load() == 1)) {
        for (int i = min; i < min + size; ++i)
            if (int rc = fn(user_context, i, closure)) return rc;
        return 0;
    }
    if (!engine) return halide_default_do_par_for(user_context, fn, min, size, closure);
    LoopTask task{fn, user_context, min, closure};
    return engine(g_engine_ctx.load(), size, run_loop_task, &task);
}

// Halide's error messages (a kernel's failed check, a GPU API that cannot be loaded): kept for
// the caller's error message, where Halide's default handler would print them and abort the
// engine's process. The kernel then returns its error code, which the runtime reports.
std::mutex g_error_mutex;
std::string g_kernel_error;

void keep_error(void *, const char *message) {
    std::lock_guard<std::mutex> lock(g_error_mutex);
    g_kernel_error = message ? message : "";
    while (!g_kernel_error.empty() && (g_kernel_error.back() == '\n' || g_kernel_error.back() == ' '))
        g_kernel_error.pop_back();
}

}  // namespace

void install_halide_hooks() {
    static std::once_flag once;
    std::call_once(once, [] {
        halide_set_custom_malloc(arena_malloc);
        halide_set_custom_free(arena_free);
        halide_set_custom_do_par_for(do_par_for);
        halide_set_error_handler(keep_error);
    });
}

std::string take_kernel_error() {
    std::lock_guard<std::mutex> lock(g_error_mutex);
    std::string message;
    message.swap(g_kernel_error);
    return message;
}

int32_t pool_threads() {
    install_halide_hooks();
    return g_num_threads.load() == 1 ? 1 : std::max(1, halide_get_num_threads());
}

int32_t set_num_threads(int32_t n) {
    if (n < 0) return -1;
    install_halide_hooks();
    halide_set_num_threads(n);
    return g_num_threads.exchange(n);
}

void set_parallel_for(vashista_parallel_for_fn fn, void *engine_ctx) {
    install_halide_hooks();
    g_engine_ctx = engine_ctx;
    g_parallel_for = fn;
}

}  // namespace vashista::runtime
