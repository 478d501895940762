// Counts the process's heap allocations (malloc, calloc, realloc and the aligned forms, on
// every thread) while a function runs. Linking vashista_alloc_counter interposes the malloc
// family of the whole program, so only tests and benchmarks that count link it, and never a
// sanitizer build (whose allocator it would replace).
#pragma once

namespace vashista::bench {

void start_counting_allocations();
long stop_counting_allocations();  // allocations since start_counting_allocations
long long counted_bytes();         // bytes those allocations asked for (calloc: n * size)

template <typename F>
long allocations_in(F &&f) {
    start_counting_allocations();
    f();
    return stop_counting_allocations();
}

}  // namespace vashista::bench
