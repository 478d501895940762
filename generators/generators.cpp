// Thin Generator classes: GeneratorParams fix the shape, the stages come from
// algorithm.cpp, the schedule from schedules/ (the hand schedule, or a JSON file the
// tuner wrote). With an autoscheduler selected, no manual schedule is applied.
#include "algorithm.h"
#include "generator_params.h"
#include "schedule.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace vashista {
namespace {

// Halide warns that bf16 arithmetic is emulated on targets without AVX512-BF16; the
// kernels only widen bf16 to f32 (a shift), so that warning is dropped, others kept.
struct QuietBf16Warnings : Halide::CompileTimeErrorReporter {
    QuietBf16Warnings() { Halide::set_custom_compile_time_error_reporter(this); }
    void warning(const char *msg) override {
        if (!std::strstr(msg, "type operation is emulated")) std::fputs(msg, stderr);
    }
    void error(const char *msg) override { throw Halide::CompileError(msg); }
} quiet_bf16_warnings;

using Halide::Generator;
using Halide::GeneratorParam;

// The schedule a Generator applies: `schedule` (JSON text, from in-process callers such as
// the JIT path and the tuner's builder), else `schedule_file` (builds), else the hand schedule.
template <typename Schedule>
Schedule load_schedule(const std::string &text, const std::string &path, const Schedule &fallback) {
    if (!text.empty()) return schedule_from_json<Schedule>(nlohmann::json::parse(text));
    if (path.empty()) return fallback;
    std::ifstream in(path);
    if (!in) throw std::runtime_error("schedule_file '" + path + "' cannot be read");
    return schedule_from_json<Schedule>(nlohmann::json::parse(in));
}

// Estimates of what decode and dense share, from the Generator's estimate_* parameters
// (default: the demo shape at T = 32K, B = 1, H_kv = 8).
template <typename Gen>
ShapeEstimate shape_estimate(const Gen &gen, int head_dim, int page_size, int group, KvLayout layout) {
    const int tokens = gen.estimate_tokens;
    return ShapeEstimate{
        head_dim, page_size, group, gen.estimate_kv_heads, gen.estimate_batch, (tokens + page_size - 1) / page_size,
        layout};
}

template <typename Gen>
void set_common_estimates(Gen &gen, const ShapeEstimate &e) {
    set_shared_input_estimates(gen, e);
    gen.out.set_estimates(q_region(e));
    gen.lse.set_estimates(per_head_region(e, 0));
}

// The touched-page list as the summary and sketch stages read it: clamped to the list, since
// a GPU schedule's split with a guarded tail may compute a few entries past its end (the
// writes of those are guarded; the reads must stay inside the buffer).
template <typename Input>
Func touched_pages(const Input &touched) {
    return Halide::BoundaryConditions::repeat_edge(touched);
}

// The Generators' parameter defaults are the configs' defaults (algorithm.h).
const DecodeConfig kDecode{};
const DenseConfig kDense{};
const SummaryConfig kSummary{};
const SketchConfig kSketch{};

class DecodeGenerator : public Generator<DecodeGenerator> {
public:
    GeneratorParam<int> head_dim{"head_dim", kDecode.head_dim};
    GeneratorParam<int> page_size{"page_size", kDecode.page_size};
    GeneratorParam<int> top_pages{"top_pages", kDecode.top_pages};
    GeneratorParam<int> top_tokens{"top_tokens", kDecode.top_tokens};
    GeneratorParam<int> group_size{"group_size", kDecode.group_size};
    GeneratorParam<std::string> kv_type{"kv_type", type_name(kDecode.kv_type)};
    GeneratorParam<std::string> summary_type{"summary_type", type_name(kDecode.summary_type)};
    GeneratorParam<std::string> layout{"layout", to_string(kDecode.layout)};
    GeneratorParam<std::string> solver{"solver", to_string(kDecode.solver)};
    GeneratorParam<std::string> routing{"routing", to_string(kDecode.routing)};
    GeneratorParam<std::string> group_routing{"group_routing", to_string(kDecode.group_routing)};
    GeneratorParam<int> sink_pages{"sink_pages", kDecode.sink_pages};
    GeneratorParam<int> local_pages{"local_pages", kDecode.local_pages};
    GeneratorParam<int> solver_steps{"solver_steps", kDecode.solver_steps};
    GeneratorParam<float> solver_eta{"solver_eta", kDecode.solver_eta};
    GeneratorParam<float> solver_tau{"solver_tau", kDecode.solver_tau};
    GeneratorParam<int> sketch_bits{"sketch_bits", kDecode.sketch_bits};
    GeneratorParam<int> sketch_group{"sketch_group", kDecode.sketch_group};
    GeneratorParam<int> super_pages{"super_pages", kDecode.super_pages};
    GeneratorParam<int> super_expand{"super_expand", kDecode.super_expand};
    GeneratorParam<std::string> schedule{"schedule", ""};
    GeneratorParam<std::string> schedule_file{"schedule_file", ""};
    GeneratorParam<int> estimate_tokens{"estimate_tokens", 32768};
    GeneratorParam<int> estimate_batch{"estimate_batch", 1};
    GeneratorParam<int> estimate_kv_heads{"estimate_kv_heads", 8};

    Input<Buffer<float, 4>> q{"q"};
    Input<Buffer<void, 4>> k_cache{"k_cache"};
    Input<Buffer<void, 4>> v_cache{"v_cache"};
    Input<Buffer<int32_t, 2>> page_table{"page_table"};
    Input<Buffer<int32_t, 1>> seq_lens{"seq_lens"};
    Input<Buffer<int32_t, 2>> route_pages{"route_pages"};
    Input<Buffer<int32_t, 2>> route_rank{"route_rank"};
    Input<Buffer<void, 4>> summary{"summary"};
    Input<Buffer<float, 2>> value_norm{"value_norm"};
    Input<Buffer<float, 2>> key_absmax{"key_absmax"};
    Input<Buffer<void, 3>> summary_scale{"summary_scale"};
    Input<Buffer<uint8_t, 4>> sketch{"sketch"};
    Input<Buffer<void, 4>> sketch_scale{"sketch_scale"};
    Input<Buffer<float, 4>> super_summary{"super_summary"};
    Input<Buffer<int32_t, 2>> super_table{"super_table"};
    Input<float> scale{"scale"};
    Output<Buffer<float, 4>> out{"out"};
    Output<Buffer<float, 3>> lse{"lse"};
    Output<Buffer<float, 4>> diag{"diag"};
    Output<Buffer<int32_t, 4>> candidates{"candidates"};
    Output<Buffer<int32_t, 4>> pages{"pages"};

    void configure() {
        const Float16Repr repr = Float16Repr::for_target(get_target());
        k_cache.set_type(repr.stored(parse_type(kv_type)));
        v_cache.set_type(repr.stored(parse_type(kv_type)));
        summary.set_type(repr.stored(parse_type(summary_type)));
        summary_scale.set_type(repr.stored(Halide::BFloat(16)));
        sketch_scale.set_type(repr.stored(Halide::BFloat(16)));
    }

    DecodeConfig config() const {
        DecodeConfig c;
        c.head_dim = head_dim;
        c.page_size = page_size;
        c.top_pages = top_pages;
        c.top_tokens = top_tokens;
        c.group_size = group_size;
        c.kv_type = parse_type(kv_type);
        c.summary_type = parse_type(summary_type);
        c.layout = parse_layout(layout);
        c.solver = parse_solver(solver);
        c.routing = parse_routing(routing);
        c.group_routing = parse_group_routing(group_routing);
        c.sink_pages = sink_pages;
        c.local_pages = local_pages;
        c.solver_steps = solver_steps;
        c.solver_eta = solver_eta;
        c.solver_tau = solver_tau;
        c.sketch_bits = sketch_bits;
        c.sketch_group = sketch_group;
        c.super_pages = super_pages;
        c.super_expand = super_expand;
        return c;
    }

    void generate() {
        if (!get_target().has_feature(Halide::Target::StrictFloat))
            throw std::invalid_argument(
                "vashista_decode needs the strict_float target feature (its certificate "
                "relies on IEEE infinities and NaN): target " +
                get_target().to_string());
        DecodeConfig cfg = config();
        require_dense_sketch_rows(sketch, cfg.page_size);
        // The GPU schedule picks how many bits of the top-k's threshold a counting pass finds.
        const bool gpu = get_target().has_gpu_feature();
        DecodeGpuSchedule gpu_schedule;
        if (gpu && !using_autoscheduler()) {
            gpu_schedule = load_schedule(schedule, schedule_file, hand_gpu_schedule(cfg));
            cfg.top_k.digit_bits = gpu_schedule.digit_bits;
        }
        cfg.top_k.popcount_by_shifts = get_target().has_feature(Halide::Target::OpenCL);
        const Float16Repr repr = Float16Repr::for_target(get_target());
        DecodeInputs in{q,
                        repr.f32_view(k_cache, cfg.kv_type),
                        repr.f32_view(v_cache, cfg.kv_type),
                        page_table,
                        seq_lens,
                        repr.f32_view(summary, cfg.summary_type),
                        value_norm,
                        key_absmax,
                        route_pages,
                        route_rank,
                        repr.f32_view(summary_scale, Halide::BFloat(16)),
                        sketch,
                        repr.f32_view(sketch_scale, Halide::BFloat(16)),
                        super_summary,
                        super_table,
                        super_table.dim(0).extent(),
                        super_summary.dim(2).extent(),
                        scale,
                        page_table.dim(0).extent(),
                        k_cache.dim(3).extent()};
        DecodeStages st = define_decode(cfg, in);
        if (cfg.routing == RoutingMode::HierBound)
            // Every page of the block table needs its super-page (else a page's leakage term
            // would use another super-page's bound).
            add_requirement(super_table.dim(0).extent() * cfg.super_pages >= page_table.dim(0).extent(),
                            "vashista_decode: super_table lists ", super_table.dim(0).extent(),
                            " super-pages per sequence, fewer than the ", page_table.dim(0).extent(),
                            " pages of the block table need at super_pages = ", cfg.super_pages);
        out = st.result_out;
        lse = st.result_lse;
        diag = st.result_diag;
        candidates = st.result_candidates;
        pages = st.result_pages;
        set_estimates(cfg);
        if (using_autoscheduler()) return;
        if (gpu)
            apply_gpu(gpu_schedule, cfg, st);
        else
            apply_cpu(load_schedule(schedule, schedule_file, hand_schedule(cfg)), cfg, st);
    }

    void set_estimates(const DecodeConfig &cfg) {
        const ShapeEstimate e = shape_estimate(*this, cfg.head_dim, cfg.page_size, cfg.group_size, cfg.layout);
        set_common_estimates(*this, e);
        summary.set_estimates(summary_region(e));
        value_norm.set_estimates(value_norm_region(e));
        key_absmax.set_estimates(value_norm_region(e));
        route_pages.set_estimates(page_table_region(e));
        route_rank.set_estimates(page_table_region(e));
        summary_scale.set_estimates(
            summary_scale_region(e, summary_scale_groups(cfg.head_dim, dtype_of(cfg.summary_type))));
        sketch.set_estimates(sketch_region(e, cfg.sketch_bits));
        sketch_scale.set_estimates(sketch_scale_region(e, cfg.sketch_group));
        const int supers = super_pages_of(e.pages, cfg.super_pages);
        super_summary.set_estimates({{0, e.head_dim}, {0, kSuperChannels}, {0, supers * e.batch}, {0, e.kv_heads}});
        super_table.set_estimates({{0, supers}, {0, e.batch}});
        diag.set_estimates(per_head_region(e, kDiagFields));
        candidates.set_estimates(per_head_region(e, cfg.top_tokens));
        pages.set_estimates(per_head_region(e, cfg.top_pages));
    }
};

class DenseGenerator : public Generator<DenseGenerator> {
public:
    GeneratorParam<int> head_dim{"head_dim", kDense.head_dim};
    GeneratorParam<int> page_size{"page_size", kDense.page_size};
    GeneratorParam<int> group_size{"group_size", kDense.group_size};
    GeneratorParam<std::string> kv_type{"kv_type", type_name(kDense.kv_type)};
    GeneratorParam<std::string> layout{"layout", to_string(kDense.layout)};
    GeneratorParam<std::string> schedule{"schedule", ""};
    GeneratorParam<std::string> schedule_file{"schedule_file", ""};
    GeneratorParam<int> estimate_tokens{"estimate_tokens", 32768};
    GeneratorParam<int> estimate_batch{"estimate_batch", 1};
    GeneratorParam<int> estimate_kv_heads{"estimate_kv_heads", 8};

    Input<Buffer<float, 4>> q{"q"};
    Input<Buffer<void, 4>> k_cache{"k_cache"};
    Input<Buffer<void, 4>> v_cache{"v_cache"};
    Input<Buffer<int32_t, 2>> page_table{"page_table"};
    Input<Buffer<int32_t, 1>> seq_lens{"seq_lens"};
    Input<float> scale{"scale"};
    Output<Buffer<float, 4>> out{"out"};
    Output<Buffer<float, 3>> lse{"lse"};

    void configure() {
        k_cache.set_type(Float16Repr::for_target(get_target()).stored(parse_type(kv_type)));
        v_cache.set_type(Float16Repr::for_target(get_target()).stored(parse_type(kv_type)));
    }

    void generate() {
        const Float16Repr repr = Float16Repr::for_target(get_target());
        DenseConfig cfg;
        cfg.head_dim = head_dim;
        cfg.page_size = page_size;
        cfg.group_size = group_size;
        cfg.kv_type = parse_type(kv_type);
        cfg.layout = parse_layout(layout);
        const bool gpu = get_target().has_gpu_feature();
        const DenseCpuSchedule cpu_s =
            gpu ? DenseCpuSchedule{} : load_schedule(schedule, schedule_file, hand_schedule(cfg));
        const DenseGpuSchedule gpu_s =
            gpu ? load_schedule(schedule, schedule_file, hand_gpu_schedule(cfg)) : DenseGpuSchedule{};
        cfg.split_pages = gpu ? gpu_s.split_pages : cpu_s.split_pages;
        DenseInputs in{q,
                       repr.f32_view(k_cache, cfg.kv_type),
                       repr.f32_view(v_cache, cfg.kv_type),
                       page_table,
                       seq_lens,
                       scale,
                       page_table.dim(0).extent(),
                       k_cache.dim(3).extent()};
        DenseStages st = define_dense(cfg, in);
        out = st.out;
        lse = st.lse;
        set_common_estimates(*this, shape_estimate(*this, cfg.head_dim, cfg.page_size, cfg.group_size, cfg.layout));
        if (using_autoscheduler()) return;
        if (gpu)
            apply_gpu(gpu_s, cfg, st);
        else
            apply_cpu(cpu_s, cfg, st);
    }
};

class SummaryGenerator : public Generator<SummaryGenerator> {
public:
    GeneratorParam<int> head_dim{"head_dim", kSummary.head_dim};
    GeneratorParam<int> page_size{"page_size", kSummary.page_size};
    GeneratorParam<std::string> kv_type{"kv_type", type_name(kSummary.kv_type)};
    GeneratorParam<std::string> summary_type{"summary_type", type_name(kSummary.summary_type)};
    GeneratorParam<std::string> layout{"layout", to_string(kSummary.layout)};

    Input<Buffer<void, 4>> k_cache{"k_cache"};
    Input<Buffer<void, 4>> v_cache{"v_cache"};
    Input<Buffer<int32_t, 2>> page_table{"page_table"};
    Input<Buffer<int32_t, 1>> seq_lens{"seq_lens"};
    Input<Buffer<int32_t, 2>> touched{"touched"};
    Output<Buffer<void, 4>> summary{"summary"};
    Output<Buffer<float, 2>> value_norm{"value_norm"};
    Output<Buffer<float, 2>> key_absmax{"key_absmax"};
    Output<Buffer<void, 3>> summary_scale{"summary_scale"};

    void configure() {
        k_cache.set_type(Float16Repr::for_target(get_target()).stored(parse_type(kv_type)));
        v_cache.set_type(Float16Repr::for_target(get_target()).stored(parse_type(kv_type)));
        summary.set_type(Float16Repr::for_target(get_target()).stored(parse_type(summary_type)));
        summary_scale.set_type(Float16Repr::for_target(get_target()).stored(Halide::BFloat(16)));
    }

    void generate() {
        const Float16Repr repr = Float16Repr::for_target(get_target());
        SummaryConfig cfg;
        cfg.head_dim = head_dim;
        cfg.page_size = page_size;
        cfg.kv_type = parse_type(kv_type);
        cfg.summary_type = parse_type(summary_type);
        cfg.layout = parse_layout(layout);
        SummaryInputs in{repr.f32_view(k_cache, cfg.kv_type),
                         repr.f32_view(v_cache, cfg.kv_type),
                         page_table,
                         seq_lens,
                         touched_pages(touched),
                         page_table.dim(0).extent(),
                         k_cache.dim(3).extent(),
                         page_table.dim(1).extent(),
                         repr};
        SummaryStages st = define_summary(cfg, in);
        summary = st.summary;
        value_norm = st.value_norm;
        key_absmax = st.key_absmax;
        summary_scale = st.scale;
        if (using_autoscheduler()) return;
        if (get_target().has_gpu_feature())
            apply_gpu(hand_gpu_schedule(cfg), cfg, st);
        else
            apply_cpu(hand_schedule(cfg), cfg, st);
    }
};

// The token sketch of touched pages: codes (s, byte, h, n) and scales (s, group, h, n).
class SketchGenerator : public Generator<SketchGenerator> {
public:
    GeneratorParam<int> head_dim{"head_dim", kSketch.head_dim};
    GeneratorParam<int> page_size{"page_size", kSketch.page_size};
    GeneratorParam<std::string> kv_type{"kv_type", type_name(kSketch.kv_type)};
    GeneratorParam<std::string> layout{"layout", to_string(kSketch.layout)};
    GeneratorParam<int> sketch_bits{"sketch_bits", kSketch.bits};
    GeneratorParam<int> sketch_group{"sketch_group", kSketch.group};

    Input<Buffer<void, 4>> k_cache{"k_cache"};
    Input<Buffer<int32_t, 2>> page_table{"page_table"};
    Input<Buffer<int32_t, 1>> seq_lens{"seq_lens"};
    Input<Buffer<int32_t, 2>> touched{"touched"};
    Output<Buffer<uint8_t, 4>> codes{"codes"};
    Output<Buffer<void, 4>> scales{"scales"};

    void configure() {
        k_cache.set_type(Float16Repr::for_target(get_target()).stored(parse_type(kv_type)));
        scales.set_type(Float16Repr::for_target(get_target()).stored(Halide::BFloat(16)));
    }

    void generate() {
        const Float16Repr repr = Float16Repr::for_target(get_target());
        SketchConfig cfg;
        cfg.head_dim = head_dim;
        cfg.page_size = page_size;
        cfg.kv_type = parse_type(kv_type);
        cfg.layout = parse_layout(layout);
        cfg.bits = sketch_bits;
        cfg.group = sketch_group;
        SummaryInputs in{repr.f32_view(k_cache, cfg.kv_type),
                         Func(),
                         page_table,
                         seq_lens,
                         touched_pages(touched),
                         page_table.dim(0).extent(),
                         k_cache.dim(3).extent(),
                         page_table.dim(1).extent(),
                         repr};
        SketchStages st = define_sketch(cfg, in);
        codes = st.codes;
        scales = st.scale;
        if (using_autoscheduler()) return;
        if (get_target().has_gpu_feature())
            apply_gpu(hand_gpu_schedule(cfg), cfg, st);
        else
            apply_cpu(hand_schedule(cfg), cfg, st);
    }
};

}  // namespace

std::vector<std::string> generator_names() {
    return {"vashista_decode", "vashista_dense", "vashista_summarize", "vashista_sketch"};
}

namespace {
std::string exact(float v) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.9g", double(v));  // round-trips every float
    return buf;
}
}  // namespace

GeneratorParams generator_params(const DecodeConfig &c) {
    return {{"head_dim", std::to_string(c.head_dim)},
            {"page_size", std::to_string(c.page_size)},
            {"top_pages", std::to_string(c.top_pages)},
            {"top_tokens", std::to_string(c.top_tokens)},
            {"group_size", std::to_string(c.group_size)},
            {"kv_type", type_name(c.kv_type)},
            {"summary_type", type_name(c.summary_type)},
            {"layout", to_string(c.layout)},
            {"solver", to_string(c.solver)},
            {"routing", to_string(c.routing)},
            {"group_routing", to_string(c.group_routing)},
            {"sink_pages", std::to_string(c.sink_pages)},
            {"local_pages", std::to_string(c.local_pages)},
            {"solver_steps", std::to_string(c.solver_steps)},
            {"solver_eta", exact(c.solver_eta)},
            {"solver_tau", exact(c.solver_tau)},
            {"sketch_bits", std::to_string(c.sketch_bits)},
            {"sketch_group", std::to_string(c.sketch_group)},
            {"super_pages", std::to_string(c.super_pages)},
            {"super_expand", std::to_string(c.super_expand)}};
}

GeneratorParams generator_params(const DenseConfig &c) {
    return {{"head_dim", std::to_string(c.head_dim)},
            {"page_size", std::to_string(c.page_size)},
            {"group_size", std::to_string(c.group_size)},
            {"kv_type", type_name(c.kv_type)},
            {"layout", to_string(c.layout)}};
}

GeneratorParams generator_params(const SummaryConfig &c) {
    return {{"head_dim", std::to_string(c.head_dim)},
            {"page_size", std::to_string(c.page_size)},
            {"kv_type", type_name(c.kv_type)},
            {"summary_type", type_name(c.summary_type)},
            {"layout", to_string(c.layout)}};
}

GeneratorParams generator_params(const SketchConfig &c) {
    return {{"head_dim", std::to_string(c.head_dim)}, {"page_size", std::to_string(c.page_size)},
            {"kv_type", type_name(c.kv_type)},        {"layout", to_string(c.layout)},
            {"sketch_bits", std::to_string(c.bits)},  {"sketch_group", std::to_string(c.group)}};
}

}  // namespace vashista

HALIDE_REGISTER_GENERATOR(vashista::DecodeGenerator, vashista_decode)
HALIDE_REGISTER_GENERATOR(vashista::DenseGenerator, vashista_dense)
HALIDE_REGISTER_GENERATOR(vashista::SummaryGenerator, vashista_summarize)
HALIDE_REGISTER_GENERATOR(vashista::SketchGenerator, vashista_sketch)
