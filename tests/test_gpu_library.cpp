// A kernel library compiled for a GPU target (vashista_add_kernel_library with TARGET
// host-opencl or host-cuda-...), used through the C API as an engine uses a CPU library:
// append (the summarize kernel), sparse decode with candidates, and dense, each against the
// reference (library_check.h). The kernels run on the host memory the runtime gives them, copied to the device
// and back per call. Built twice: against an OpenCL library, run here on pocl's CPU device,
// and (VASHISTA_TEST_CUDA) against a CUDA library, which reports itself skipped (exit 77,
// ctest's skip code) where no CUDA driver and device are usable.
#include "library_check.h"
#include "vashista.h"

#include <catch2/catch.hpp>

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace vashista;

namespace {

#ifdef VASHISTA_TEST_CUDA
// Whether the CUDA driver loads and sees a device (what the kernels' runtime will ask).
bool cuda_device_usable() {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return false;
    using Init = int (*)(unsigned);
    using Count = int (*)(int *);
    auto init = reinterpret_cast<Init>(dlsym(lib, "cuInit"));
    auto count = reinterpret_cast<Count>(dlsym(lib, "cuDeviceGetCount"));
    int devices = 0;
    return init && count && init(0) == 0 && count(&devices) == 0 && devices > 0;
}
#endif

}  // namespace

TEST_CASE("a GPU kernel library runs through the C API and matches the reference", "[runtime][gpu]") {
#ifdef VASHISTA_TEST_CUDA
    if (!cuda_device_usable()) {
        // What runs without one: a kernel call fails with the CUDA runtime's message as an
        // error status, and the process goes on.
        std::vector<uint16_t> k_pages(2 * 2 * 16 * 64), v_pages(k_pages.size()), kv(2 * 64, 0x3f80);
        const int32_t page_table[2] = {0, 1};
        vashista_cache_desc desc{sizeof(vashista_cache_desc),
                                 1,
                                 2,
                                 64,
                                 16,
                                 2,
                                 2,
                                 VASHISTA_DTYPE_BF16,
                                 VASHISTA_DTYPE_BF16,
                                 VASHISTA_LAYOUT_HND,
                                 k_pages.data(),
                                 v_pages.data(),
                                 page_table,
                                 0,
                                 0,
                                 0};
        vashista_cache *cache = nullptr;
        REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_OK);
        REQUIRE(vashista_append(cache, 0, 0, 1, kv.data(), kv.data()) == VASHISTA_ERROR_KERNEL);
        REQUIRE_THAT(std::string(vashista_last_error()), Catch::Contains("CUDA"));
        vashista_cache_destroy(cache);
        std::printf(
            "SKIPPED: no CUDA driver with a device on this machine (libcuda.so.1, cuInit, "
            "cuDeviceGetCount); the CUDA kernel library was built and linked, and a call failed cleanly "
            "(\"%s\"); the matrix was not run\n",
            vashista_last_error());
        std::fflush(stdout);
        std::exit(77);
    }
#endif
    // Every variant of the library was compiled for the GPU API, so every call below ran there.
    char list[4096];
    REQUIRE(vashista_list_variants(list, sizeof(list)) < sizeof(list));
    const std::string variants = list;
    INFO(variants);
#ifdef VASHISTA_TEST_CUDA
    const std::string api = "(GPU: cuda)";
#else
    const std::string api = "(GPU: opencl)";
#endif
    size_t lines = 0, on_api = 0;
    for (size_t at = 0; (at = variants.find('\n', at)) != std::string::npos; ++at) ++lines;
    for (size_t at = 0; (at = variants.find(api, at)) != std::string::npos; ++at) ++on_api;
    REQUIRE(lines == 3);  // decode, dense, summarize
    REQUIRE(on_api == lines);

    testing::check_library_matches_reference({8, 32, 1, 2});
}
