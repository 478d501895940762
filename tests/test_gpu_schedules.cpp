// The GPU schedules (schedules/gpu.cpp) against the reference with the checks the CPU
// kernels pass, on a GPU target: by default Halide's OpenCL target on this machine's OpenCL
// device (pocl's CPU device: tools/setup.sh installs it); with VASHISTA_GPU_TARGET=cuda
// (`make test-gpu`, the test_gpu_schedules_cuda entry) CUDA on an NVIDIA GPU, and where no
// CUDA device is usable the process reports itself skipped (exit 77, ctest's skip code).
// And the same Generators compiled for CUDA ahead of time.
#include "kernel_check.h"

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

using namespace vashista;

namespace {

constexpr int kSkipped = 77;

Halide::Target gpu_target() {
    const char *env = std::getenv("VASHISTA_GPU_TARGET");
    const std::string which = env ? env : "opencl";
    if (which == "cuda") {
        const Halide::Target t =
            Halide::get_host_target().with_feature(Halide::Target::CUDA).with_feature(Halide::Target::CUDACapability80);
        if (!Halide::host_supports_target_device(t)) {
            std::printf(
                "SKIPPED: VASHISTA_GPU_TARGET=cuda, and no CUDA device is usable on this machine "
                "(Halide could not open one for %s); nothing was run\n",
                t.to_string().c_str());
            std::fflush(stdout);
            std::exit(kSkipped);
        }
        return t;
    }
    if (which != "opencl") FAIL("VASHISTA_GPU_TARGET is '" << which << "': opencl (the default) or cuda");
    const Halide::Target t = Halide::get_host_target().with_feature(Halide::Target::OpenCL);
    if (!Halide::host_supports_target_device(t))
        FAIL(
            "no OpenCL device: the GPU schedules run on pocl's CPU device here (Debian's pocl-opencl-icd, which "
            "tools/setup.sh installs; `clinfo -l` lists it)");
    return t;
}

}  // namespace

TEST_CASE("the dense kernel's GPU schedules match the reference on the GPU target", "[gpu]") {
    const Halide::Target t = gpu_target();
    test::check_dense_kernel(t, "");
    // Random points of the space (the hand schedule is one), every knob varied.
    std::mt19937 rng(5);
    DenseConfig shape;
    shape.head_dim = 32;
    shape.group_size = 4;
    for (int i = 0; i < 3; ++i) {
        const DenseGpuSchedule s = random_point<DenseGpuSchedule>(shape, rng);
        test::check_dense_kernel(t, schedule_to_json(s).dump());
    }
}

TEST_CASE("the summarize kernel's GPU schedule matches the reference on the GPU target, bit for bit", "[gpu]") {
    test::check_summarize_kernel(gpu_target());
}

TEST_CASE("the sketch kernel's GPU schedule matches the reference on the GPU target, bit for bit", "[gpu]") {
    test::check_sketch_kernel(gpu_target());
}

TEST_CASE("GPU schedule points outside their space are refused, naming why", "[gpu]") {
    DenseConfig cfg;
    cfg.head_dim = 128;
    cfg.group_size = 8;
    GeneratorParams p = generator_params(cfg);
    p["schedule"] = R"({"split_pages": 64, "group_threads": 1})";
    REQUIRE_THROWS_WITH(GeneratorJit("vashista_dense", p, gpu_target()),
                        Catch::Contains("8192 threads is more than 1024"));
    p["schedule"] = R"({"split_pages": 12})";
    REQUIRE_THROWS_WITH(GeneratorJit("vashista_dense", p, gpu_target()),
                        Catch::Contains("'split_pages' = 12 is not one of"));
}

TEST_CASE("the fused decode's GPU schedules match the reference on the GPU target", "[gpu]") {
    // The hand schedule (4-bit top-k digits) on every (solver, routing mode) with one group
    // routing each, alternating; blocks of 32 threads (a thread runs several pages, slots,
    // candidates) with 2-bit digits on the softmax and eg cases, and 1-bit digits (32
    // counting passes) on softmax. (pocl compiles each kernel once, in seconds to tens of
    // seconds: fw and sparsemax have the most block-wide stages.)
    const Halide::Target t = gpu_target();
    const std::vector<Solver> all = {Solver::Softmax, Solver::EG, Solver::FW, Solver::Sparsemax};
    test::check_decode_matrix(t, "", all, true);
    test::check_decode_matrix(t, R"({"threads": 32, "digit_bits": 2})", {Solver::Softmax, Solver::EG}, true);
    test::check_decode_matrix(t, R"({"threads": 64, "digit_bits": 1})", {Solver::Softmax}, true);
}

namespace {

// A Generator compiled ahead of time for `target` into an object file; its bytes.
std::string compile_object(const std::string &generator, const GeneratorParams &params, const Halide::Target &target,
                           const std::filesystem::path &dir) {
    auto gen = Halide::Internal::GeneratorRegistry::create(generator, Halide::GeneratorContext(target));
    REQUIRE(gen);
    gen->set_generatorparam_values(params);
    Halide::Pipeline p = gen->build_pipeline();
    const std::filesystem::path obj = dir / (generator + ".o");
    p.compile_to_object(obj.string(), p.infer_arguments(), generator, target);
    std::ifstream in(obj, std::ios::binary);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    return bytes.str();
}

}  // namespace

TEST_CASE("the kernels compile for CUDA ahead of time, with PTX for each capability", "[gpu]") {
    const std::filesystem::path dir = std::filesystem::temp_directory_path() / "vashista_cuda_objects";
    std::filesystem::create_directories(dir);
    for (const char *capability : {"cuda_capability_80", "cuda_capability_86"}) {
        const Halide::Target t("x86-64-linux-cuda-" + std::string(capability));
        const std::string sm = std::string(".target sm_") + (capability + std::string("cuda_capability_").size());
        for (Halide::Type kv : {Halide::BFloat(16), Halide::Float(16), Halide::Float(32)}) {
            if (kv != Halide::BFloat(16) && t.has_feature(Halide::Target::CUDACapability86)) continue;  // bf16 suffices
            DenseConfig dense;
            dense.kv_type = kv;
            SummaryConfig summary;
            summary.kv_type = kv;
            summary.summary_type = kv == Halide::Float(32) ? Halide::Int(8) : kv;
            SketchConfig sketch;
            sketch.kv_type = kv;
            const std::pair<const char *, GeneratorParams> kernels[] = {
                {"vashista_dense", generator_params(dense)},
                {"vashista_summarize", generator_params(summary)},
                {"vashista_sketch", generator_params(sketch)}};
            for (const auto &[name, params] : kernels) {
                INFO(name << " " << type_name(kv) << " for " << t.to_string());
                const std::string object = compile_object(name, params, t, dir);
                CHECK(object.find(sm) != std::string::npos);
            }
        }
        // The fused decode (bf16 pages): bound routing with softmax, and sketch routing with
        // fw and shared groups (the most block-wide stages).
        DecodeConfig bound;
        DecodeConfig sketch = bound;
        sketch.routing = RoutingMode::Sketch;
        sketch.solver = Solver::FW;
        sketch.group_routing = GroupRouting::Shared;
        for (const DecodeConfig &cfg : {bound, sketch}) {
            INFO("vashista_decode " << to_string(cfg.routing) << " routing for " << t.to_string());
            const std::string object = compile_object("vashista_decode", generator_params(cfg),
                                                      t.with_feature(Halide::Target::StrictFloat), dir);
            CHECK(object.find(sm) != std::string::npos);
        }
    }
    std::filesystem::remove_all(dir);
}
