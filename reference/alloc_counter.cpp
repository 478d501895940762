#include "alloc_counter.h"

#include <atomic>
#include <cerrno>
#include <cstddef>

extern "C" {
void *__libc_malloc(size_t);
void *__libc_calloc(size_t, size_t);
void *__libc_realloc(void *, size_t);
void *__libc_memalign(size_t, size_t);
void __libc_free(void *);
}

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
std::atomic<long long> g_bytes{0};
void count(size_t bytes) {
    if (!g_counting.load(std::memory_order_relaxed)) return;
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    g_bytes.fetch_add((long long)bytes, std::memory_order_relaxed);
}
}  // namespace

extern "C" {
void *malloc(size_t n) {
    count(n);
    return __libc_malloc(n);
}
void *calloc(size_t n, size_t size) {
    count(n * size);
    return __libc_calloc(n, size);
}
void *realloc(void *p, size_t n) {
    count(n);
    return __libc_realloc(p, n);
}
void *memalign(size_t alignment, size_t n) {
    count(n);
    return __libc_memalign(alignment, n);
}
void *aligned_alloc(size_t alignment, size_t n) {
    count(n);
    return __libc_memalign(alignment, n);
}
int posix_memalign(void **p, size_t alignment, size_t n) {
    count(n);
    *p = __libc_memalign(alignment, n);
    return *p ? 0 : ENOMEM;
}
void free(void *p) { __libc_free(p); }
}

namespace vashista::bench {

void start_counting_allocations() {
    g_allocations = 0;
    g_bytes = 0;
    g_counting = true;
}

long stop_counting_allocations() {
    g_counting = false;
    return g_allocations;
}

long long counted_bytes() { return g_bytes; }

}  // namespace vashista::bench
