// The tuner's parts: spaces and strategies (never an invalid point, the optimum of a
// synthetic cost found, repeatable by seed), the database (resume after kill -9,
// damaged lines, merge), and a short real tuning run.
#include "attention_task.h"
#include "tuner.h"

#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

using namespace vashista;
using namespace vashista::tune;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string &name) {
    fs::path p = fs::temp_directory_path() / ("vashista_test_" + std::to_string(getpid())) / name;
    fs::create_directories(p.parent_path());
    fs::remove_all(p);
    return p;
}

json fake_record(const std::string &key, double ms, int trial) {
    return {{"workload_key", key}, {"status", "ok"}, {"median_ms", ms}, {"schedule", {{"x", trial}}}, {"trial", trial}};
}

// Six knobs; the cost is a bowl with one minimum at `target`, plus a constraint.
SearchSpace bowl(const std::vector<int> &target) {
    SearchSpace s;
    for (int k = 0; k < 6; ++k) {
        s.names.push_back("k" + std::to_string(k));
        s.domains.push_back({0, 1, 2, 3, 4, 5, 6, 7});
    }
    s.violation = [](const json &p) -> std::string {
        return p["k0"].get<int>() + p["k1"].get<int>() > 10 ? "k0 + k1 > 10" : "";
    };
    (void)target;
    return s;
}

double bowl_cost(const json &p, const std::vector<int> &target) {
    double c = 1;
    for (int k = 0; k < 6; ++k) c += std::pow(p["k" + std::to_string(k)].get<int>() - target[k], 2);
    return c;
}

}  // namespace

TEST_CASE("strategies never propose an invalid or repeated point", "[autotune]") {
    for (int head_dim : {64, 96, 128}) {
        Workload w;
        w.head_dim = head_dim;
        const AttentionTask task(w);
        SearchSpace space = task.space();
        REQUIRE(space.valid(task.hand_point()));
        RandomStrategy random(space, 3);
        EvolutionaryStrategy evo(space, 3);
        std::set<std::string> seen;
        for (int i = 0; i < 300; ++i) {
            json a = random.propose(), b = evo.propose();
            INFO(a.dump() << " / " << b.dump());
            REQUIRE(space.valid(a));
            REQUIRE(space.valid(b));
            REQUIRE(seen.insert("r" + a.dump()).second);
            REQUIRE(seen.insert("e" + b.dump()).second);
            evo.observe(b, double(i % 17));
        }
    }
}

TEST_CASE("the evolutionary strategy finds the optimum of a synthetic cost, repeatably", "[autotune]") {
    const std::vector<int> target{2, 7, 3, 5, 0, 6};  // k0 + k1 = 9 satisfies the constraint
    auto run = [&](uint64_t seed) {
        EvolutionaryStrategy s(bowl(target), seed);
        std::vector<std::string> order;
        double best = 1e9;
        for (int i = 0; i < 400 && best > 1; ++i) {
            json p = s.propose();
            REQUIRE(s.seen(p));
            order.push_back(p.dump());
            double c = bowl_cost(p, target);
            best = std::min(best, c);
            s.observe(p, c);
        }
        return std::make_pair(best, order);
    };
    auto [best, order] = run(11);
    CHECK(best == 1.0);  // the exact optimum, among 8^6 = 262144 points
    CHECK(order.size() < 400);
    CHECK(run(11).second == order);  // same seed, same search
    CHECK(run(12).second != order);
}

TEST_CASE("workloads and records round-trip through JSON", "[autotune]") {
    Workload w;
    w.generator = "dense";
    w.layout = "NHD";
    w.tokens = 4096;
    Workload back = Workload::from_json(json::parse(w.to_json().dump()));
    CHECK(back.key() == w.key());
    CHECK_THROWS_WITH(Workload::from_json({{"generator", "prefill"}}),
                      Catch::Contains("'prefill' is not decode or dense"));
    // Sketch routing's bits and group are part of the workload (and its key); other
    // routings' keys do not mention them.
    Workload sk;
    sk.routing = "sketch";
    sk.sketch_bits = 4;
    sk.sketch_group = 32;
    Workload sk_back = Workload::from_json(json::parse(sk.to_json().dump()));
    CHECK(sk_back.key() == sk.key());
    CHECK(sk_back.sketch_bits == 4);
    CHECK(sk_back.sketch_group == 32);
    sk.sketch_bits = 8;
    CHECK(sk.key() != sk_back.key());
    CHECK(Workload().key().find("sk") == std::string::npos);
    CHECK_THROWS_WITH(Workload::from_json({{"routing", "sketch"}, {"sketch_group", 24}}),
                      Catch::Contains("sketch_group = 24 does not divide head_dim = 128"));
    // Sink and local pages and the solver's parameters travel too; at their defaults they
    // stay out of the key (records from before keep theirs).
    Workload eg;
    eg.solver = "eg";
    const std::string default_key = eg.key();
    eg.sink_pages = 1;
    eg.local_pages = 2;
    eg.solver_steps = 4;
    eg.solver_eta = 0.5f;
    Workload eg_back = Workload::from_json(json::parse(eg.to_json().dump()));
    CHECK(eg_back.key() == eg.key());
    CHECK(eg.key() != default_key);
    CHECK(eg_back.sink_pages == 1);
    CHECK(eg_back.local_pages == 2);
    CHECK(eg_back.solver_steps == 4);
    CHECK(eg_back.solver_eta == 0.5f);
    CHECK(default_key.find("sink") == std::string::npos);
    CHECK_THROWS_WITH(Workload::from_json({{"sink_pages", 40}, {"local_pages", 40}}),
                      Catch::Contains("together at most top_pages = 64"));
    CHECK_THROWS_WITH(Workload::from_json({{"kv_type", "int8"}}),
                      Catch::Contains("kv dtype int8 is a summary dtype only"));
    CHECK_THROWS_WITH(Workload::from_json({{"summary_type", "int8"}, {"head_dim", 72}}),
                      Catch::Contains("int8 summaries need head_dim a multiple of 16"));
    CHECK(Workload::from_json({{"summary_type", "int8"}}).summary_type == "int8");
    CHECK(shard(default_workloads("host"), "1/2").size() == 1);
    CHECK(shard(default_workloads("host"), "0/2").size() == 2);
    CHECK_THROWS_WITH(shard(default_workloads("host"), "2/2"), Catch::Contains("is not i/n"));
    CHECK_THROWS(shard(default_workloads("host"), "x"));
}

TEST_CASE("the database survives kill -9 and reports damaged lines", "[autotune]") {
    const fs::path path = scratch("killed.jsonl");
    // A child appends records as fast as it can until it is killed.
    const pid_t child = fork();
    if (child == 0) {
        Database db(path.string());
        for (int i = 0;; ++i) db.append(fake_record("w", 1.0 + i, i));
    }
    while (load_records(path.string()).records.size() < 20) usleep(1000);
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    LoadReport after_kill = load_records(path.string());
    REQUIRE(after_kill.records.size() >= 20);
    REQUIRE(after_kill.problems.size() <= 1);  // at most the line being written
    for (size_t i = 0; i < after_kill.records.size(); ++i) REQUIRE(after_kill.records[i]["trial"] == int(i));

    // A line cut short, then a resumed run appends: the damage stays on its own line.
    { std::ofstream(path, std::ios::app) << "{\"workload_key\": \"w\", \"stat"; }
    Database db(path.string());
    db.append(fake_record("w", 0.5, 999));
    LoadReport r = load_records(path.string());
    REQUIRE(r.records.back()["trial"] == 999);
    REQUIRE(!r.problems.empty());
    REQUIRE_THAT(r.problems.back(), Catch::Contains("killed.jsonl:") && Catch::Contains("skipped damaged line"));
    REQUIRE(Database(path.string()).best("w").value()["trial"] == 999);
}

TEST_CASE("corrupt lines are reported with their number and skipped", "[autotune]") {
    const fs::path path = scratch("corrupt.jsonl");
    {
        std::ofstream out(path);
        out << fake_record("a", 2.0, 0).dump() << "\n"
            << "not json at all\n"
            << "[1, 2, 3]\n"
            << fake_record("a", 1.0, 1).dump() << "\n";
    }
    Database db(path.string());
    REQUIRE(db.records().size() == 2);
    REQUIRE(db.problems().size() == 2);
    REQUIRE_THAT(db.problems()[0], Catch::Contains("corrupt.jsonl:2:"));
    REQUIRE_THAT(db.problems()[1], Catch::Contains("corrupt.jsonl:3:") && Catch::Contains("not a tuning record"));
    REQUIRE(db.best("a").value()["median_ms"] == 1.0);
    REQUIRE(!db.best("b"));
}

TEST_CASE("databases from several machines merge without duplicates", "[autotune]") {
    const fs::path a = scratch("a.jsonl"), b = scratch("b.jsonl"), out = scratch("merged.jsonl");
    Database da(a.string()), dbb(b.string());
    da.append(fake_record("w1", 3.0, 0));
    da.append(fake_record("w2", 2.0, 1));
    dbb.append(fake_record("w1", 3.0, 0));  // the same record on both machines
    dbb.append(fake_record("w1", 1.5, 2));
    size_t written = 0;
    auto problems = merge_databases({a.string(), b.string(), "/nonexistent.jsonl"}, out.string(), &written);
    REQUIRE(written == 3);
    REQUIRE(problems.size() == 1);
    REQUIRE_THAT(problems[0], Catch::Contains("/nonexistent.jsonl: no such file"));
    Database merged(out.string());
    REQUIRE(merged.best("w1").value()["median_ms"] == 1.5);
    REQUIRE(merged.best("w2").value()["median_ms"] == 2.0);
}

TEST_CASE("a short real tuning run records, checks and resumes", "[autotune]") {
    Workload w;
    w.target = resolve_target("host");
    w.head_dim = 64;
    w.kv_heads = 2;
    w.top_pages = 8;
    w.top_tokens = 32;
    w.tokens = 2048;
    const fs::path dbp = scratch("tune.jsonl"), work = scratch("work");
    TuneOptions o;
    o.trials = 3;
    o.seed = 5;
    o.work_dir = work.string();
    o.measure.min_reps = 3;
    o.measure.max_reps = 5;
    std::ostringstream log;
    TuneResult first;
    {
        Database db(dbp.string());
        first = tune_task(AttentionTask(w), o, db, log);
        REQUIRE(first.trials == 3);
        REQUIRE(first.best_ms > 0);
    }
    LoadReport rep = load_records(dbp.string());
    REQUIRE(rep.records.size() == 4);  // three trials and the verification round's winner
    const json &fin = rep.records[3];
    REQUIRE(fin["kind"] == "final");
    REQUIRE(fin["finalists"].size() == 3);
    // The result reports the verification round: its winner, and the hand schedule's time
    // measured in the same round; a finalist displaces the hand schedule (the first trial)
    // only with a median paired ratio below 0.97.
    REQUIRE(first.best_ms == Approx(fin["median_ms"].get<double>()));
    REQUIRE(first.hand_ms == Approx(fin["hand_ms"].get<double>()));
    REQUIRE(first.best_schedule == fin["schedule"]);
    if (fin["schedule"] != rep.records[0]["schedule"]) REQUIRE(fin["paired_ratio_vs_hand"].get<double>() < 0.97);
    REQUIRE(Database(dbp.string()).best(w.key()).value()["kind"] == "final");
    rep.records.pop_back();
    REQUIRE(rep.records[0]["kind"] == "hand");
    REQUIRE(rep.records[0]["schedule"] == AttentionTask(w).hand_point());
    for (const auto &r : rep.records) {
        INFO(r.dump());
        REQUIRE(r["status"] == "ok");  // every candidate matched the reference
        REQUIRE(r["max_abs_err"].get<double>() <= 1e-4);
        REQUIRE(r["halide_version"] == halide_version());
        REQUIRE(r["workload_key"] == w.key());
    }
    // Resuming with a larger budget measures only the new trial.
    o.trials = 4;
    Database db(dbp.string());
    TuneResult r = tune_task(AttentionTask(w), o, db, log);
    REQUIRE(r.resumed == 3);
    REQUIRE(r.trials == 4);
    REQUIRE(load_records(dbp.string()).records.size() == 6);  // one more trial, one more verification
    REQUIRE_THAT(log.str(), Catch::Contains("resuming"));
}

TEST_CASE("a candidate that fails to compile is recorded, not fatal", "[autotune]") {
    Workload w;
    w.head_dim = 64;
    const AttentionTask task(w);
    json bad = task.hand_point();
    bad["dot_lanes"] = 48;  // outside the domain
    BuildResult b = build_candidate(build_request(task, bad, "", scratch("fail").string(), "bad_candidate", 60));
    REQUIRE(b.status == "build_failed");
    REQUIRE_THAT(b.error, Catch::Contains("dot_lanes"));
}

TEST_CASE("the runner checks a loaded kernel against the metadata it was built with", "[autotune]") {
    Workload w;
    w.target = resolve_target("host");
    w.head_dim = 64;
    w.kv_heads = 2;
    w.top_pages = 8;
    w.top_tokens = 32;
    w.tokens = 512;
    Workload dense = w;
    dense.generator = "dense";
    const fs::path work = scratch("metadata");
    const AttentionTask decode_task(w), dense_task(dense);
    load_runtime(build_runtime(work.string(), decode_task.target()));
    BuildResult built =
        build_candidate(build_request(dense_task, dense_task.hand_point(), "", work.string(), "dense_kernel", 300));
    REQUIRE(built.status == "ok");
    // The dense kernel measured as a dense task: bound by name, checked, timed.
    Runner as_dense(dense_task.instantiate(), {2, 2, 1.0});
    Measurement ok = as_dense.measure(built.library, built.function);
    INFO(ok.error);
    REQUIRE(ok.status == "ok");
    REQUIRE(ok.max_abs_err <= 1e-4);
    // The same kernel given to a decode task: its metadata has no `route_pages`, so the call is
    // refused before it runs, naming the argument and the kernel's real arguments.
    Runner as_decode(decode_task.instantiate(), {2, 2, 1.0});
    Measurement wrong = as_decode.measure(built.library, built.function);
    REQUIRE(wrong.status == "run_failed");
    REQUIRE_THAT(wrong.error,
                 Catch::Contains("has no argument 'route_pages'") && Catch::Contains("q, k_cache, v_cache"));
    // A function that is not there.
    Measurement missing = as_dense.measure(built.library, "no_such_kernel");
    REQUIRE(missing.status == "run_failed");
    REQUIRE_THAT(missing.error, Catch::Contains("no_such_kernel_argv"));
}

TEST_CASE("a record serves its own target, else another CPU of the same ISA level, never another level or a GPU",
          "[autotune]") {
    const std::string zen5 =
        "x86-64-linux-tune_znver5-avx-avx2-avx512-avx512_cannonlake-avx512_skylake-avx512_zen4-avx512_zen5-avxvnni-"
        "f16c-fma-sse41";
    const std::string spr =
        "x86-64-linux-avx-avx2-avx512-avx512_cannonlake-avx512_sapphirerapids-avx512_skylake-avxvnni-f16c-fma-sse41";
    const std::string avx2 = "x86-64-linux-avx-avx2-f16c-fma-sse41";
    CHECK(isa_level(zen5) == "x86-64-linux avx512");
    CHECK(isa_level(spr + "-strict_float") == "x86-64-linux avx512");
    CHECK(isa_level(avx2) == "x86-64-linux avx2");
    CHECK(isa_level("x86-64-linux") == "x86-64-linux baseline");
    CHECK(isa_level("arm-64-linux-sve2") == "arm-64-linux sve2");
    CHECK(isa_level(zen5 + "-cuda-cuda_capability_80") == "x86-64-linux cuda");
    CHECK(isa_level(avx2 + "-cuda-cuda_capability_86") == "x86-64-linux cuda");
    Workload w;
    w.target = zen5;
    json rec = {{"workload_key", w.key()},
                {"workload", w.to_json()},
                {"status", "ok"},
                {"median_ms", 1.0},
                {"schedule", {{"picked", "zen5"}}}};
    std::map<std::string, std::string> params = workload_params(w.to_json());
    const QueryResult on_spr = query_best({rec}, variant_query("decode", params, spr));
    REQUIRE(on_spr.best);
    CHECK((*on_spr.best)["schedule"]["picked"] == "zen5");
    CHECK_THAT(on_spr.how, Catch::Contains("tuned on " + zen5) && Catch::Contains("same ISA level"));
    const QueryResult on_avx2 = query_best({rec}, variant_query("decode", params, avx2));
    CHECK(!on_avx2.best);
    REQUIRE(on_avx2.other_targets.size() == 1);
    CHECK(on_avx2.other_targets[0] == zen5);
    // A CPU record never serves a GPU target (its schedule is no point of a GPU space), and a
    // GPU record serves another capability of its API, never a CPU.
    CHECK(!query_best({rec}, variant_query("decode", params, zen5 + "-cuda-cuda_capability_80")).best);
    json gpu_rec = rec;
    gpu_rec["workload"]["target"] = zen5 + "-cuda-cuda_capability_80";
    gpu_rec["schedule"] = {{"picked", "cuda"}};
    const QueryResult on_86 = query_best({gpu_rec}, variant_query("decode", params, avx2 + "-cuda-cuda_capability_86"));
    REQUIRE(on_86.best);
    CHECK((*on_86.best)["schedule"]["picked"] == "cuda");
    CHECK(!query_best({gpu_rec}, variant_query("decode", params, zen5)).best);
    // A field of the shape that differs: no record.
    params["head_dim"] = "64";
    CHECK(!query_best({rec}, variant_query("decode", params, zen5)).best);
    params.erase("head_dim");
    CHECK_THROWS_WITH(variant_query("decode", params, zen5), Catch::Contains("no value for 'head_dim'"));
}

TEST_CASE("an autoscheduler's kernel builds through the Generator and matches the reference", "[autotune]") {
    Workload w;
    w.generator = "dense";
    w.target = resolve_target("host");
    w.head_dim = 64;
    w.kv_heads = 2;
    w.tokens = 1024;
    const AttentionTask task(w);
    const fs::path work = scratch("autoscheduled");
    load_runtime(build_runtime(work.string(), task.target()));
    BuildResult built =
        build_candidate(build_request(task, json::object(), "Mullapudi2016", work.string(), "mullapudi_dense", 300));
    INFO(built.error);
    REQUIRE(built.status == "ok");
    Runner runner(task.instantiate(), {2, 2, 1.0});
    Measurement m = runner.measure(built.library, built.function);
    INFO(m.error);
    REQUIRE(m.status == "ok");
    REQUIRE(m.max_abs_err <= 1e-4);
}
