#include "buffers.h"
#include <chrono>
#include <cstdio>
using namespace vashista;
template <typename F> double ms_of(F &&f) { f(); auto t = std::chrono::steady_clock::now(); for (int i = 0; i < 5; ++i) f(); return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count() * 200; }
int main(int argc, char **argv) {
    for (auto dt : {ref::DType::F32, ref::DType::BF16}) {
        ref::ProblemSpec spec; spec.kv_heads = 8; spec.group = 4; spec.head_dim = 128; spec.seq_lens = {32768}; spec.extra_pages = 0; spec.spare_pages = 0; spec.dtype = dt;
        auto p = ref::make_problem(spec);
        auto sum = ref::summarize(p.cache, p.seqs, dt);
        DecodeConfig cfg; cfg.routing = RoutingMode::Bound; cfg.kv_type = cfg.summary_type = test::halide_type(dt);
        auto buf = test::decode_buffers(p, cfg, sum, ref::default_scale(128));
        Halide::Target t = Halide::get_host_target();
        if (argc > 1) t = Halide::Target(argv[1]);
        if (dt == ref::DType::F32 && getenv("STMT")) continue;
        DenseConfig dc; dc.kv_type = cfg.kv_type; DenseCpuSchedule ds = hand_schedule(dc); if (getenv("DENSE")) ds = schedule_from_json<DenseCpuSchedule>(nlohmann::json::parse(getenv("DENSE"))); dc.split_pages = ds.split_pages; DenseJit jit(dc); jit.schedule(ds); jit.compile(t);
        if (getenv("STMT")) { jit.pipeline.compile_to_lowered_stmt("/tmp/dense.stmt", jit.pipeline.infer_arguments(), Halide::Text, t); return 0; }
        Halide::Buffer<float> out(128, 4, 8, 1), lse(4, 8, 1);
        DecodeJit dj(cfg); dj.schedule(hand_schedule(cfg)); dj.compile(t);
        printf("%s dense %.2f ms  sparse %.2f ms\n", ref::dtype_name(dt), ms_of([&]{ jit.run(buf, out, lse); }), ms_of([&]{ run(dj, buf); }));
    }
}
