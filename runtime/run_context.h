// What the runtime hands a kernel as Halide's user context: the arena its halide_malloc
// calls draw from (so vashista_run allocates nothing) and, process-wide, the engine's
// parallel-for that its parallel loops run on.
#pragma once

#include "vashista.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

namespace vashista::runtime {

// A first-fit arena in caller memory for the allocations of one kernel call at a time:
// blocks with a 64-byte header, split on allocation, merged with their free neighbours as
// the search passes them, all freed when the call returns. When it is full, an allocation
// comes from the system allocator instead (counted in `overflowed`), so a call never fails
// for want of arena.
// Without memory it only measures: allocations come from the system allocator, and `peak`
// records the most bytes (headers included) live at once.
class Arena {
public:
    static constexpr size_t kHeader = 64;

    Arena() = default;
    Arena(uint8_t *memory, size_t bytes) : base_(memory), size_(bytes / kHeader * kHeader) {}
    Arena(const Arena &) = delete;
    Arena &operator=(const Arena &) = delete;

    void start_call();  // every block free
    void *allocate(size_t bytes);
    // Frees p if it came from this arena (or, measuring, from this arena's system allocations).
    bool release(void *p);

    size_t peak() const { return peak_; }
    size_t overflowed() const { return overflowed_; }
    bool measuring() const { return base_ == nullptr; }

private:
    uint8_t *base_ = nullptr;
    size_t size_ = 0;
    std::mutex mutex_;
    size_t live_ = 0, peak_ = 0, overflowed_ = 0;
};

// Bytes of arena for a kernel call measured to need `peak` live bytes when its parallel
// tasks ran one at a time, run on `threads` threads: the root's allocations and one task's
// on each thread at once, at most (threads + 1) * peak, and room for first-fit's
// fragmentation.
constexpr size_t arena_bytes_for(size_t peak, int threads) { return peak * size_t(threads + 1) + peak / 2 + 64 * 1024; }

// Installs the runtime's halide_malloc/halide_free, parallel-for and error handler into the
// library's Halide runtime; idempotent and thread-safe.
void install_halide_hooks();
// The last message Halide's runtime reported (its error handler keeps it), cleared; "" if none.
std::string take_kernel_error();

// Threads a kernel's parallel loop may run on at once: the library's pool (1 when set to one
// thread). An engine's parallel-for may run more; the arena then may overflow to malloc.
int32_t pool_threads();
int32_t set_num_threads(int32_t n);
void set_parallel_for(vashista_parallel_for_fn fn, void *engine_ctx);

}  // namespace vashista::runtime
