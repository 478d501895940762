// vashista-runner: measures a bundle's candidates on this machine and writes
// BUNDLE/results.jsonl, to be joined to a database with `vashista db ingest`.
#include "attention_task.h"
#include "runner.h"

#include <cstdio>
#include <fstream>
#include <map>

using namespace vashista::tune;

int main(int argc, char **argv) {
    if (argc != 2 || std::string(argv[1]) == "--help") {
        std::fprintf(argc == 2 ? stdout : stderr,
                     "usage: vashista-runner BUNDLE\n"
                     "Checks every candidate in BUNDLE/manifest.json against the reference, times it\n"
                     "with a cold cache, and writes BUNDLE/results.jsonl.\n");
        return argc == 2 ? 0 : 2;
    }
    const std::string dir = argv[1];
    std::ifstream in(dir + "/manifest.json");
    if (!in) {
        std::fprintf(stderr, "vashista-runner: cannot read %s/manifest.json\n", dir.c_str());
        return 2;
    }
    const json manifest = json::parse(in, nullptr, false);
    if (manifest.is_discarded() || !manifest.contains("candidates")) {
        std::fprintf(stderr, "vashista-runner: %s/manifest.json is not a bundle manifest\n", dir.c_str());
        return 2;
    }
    const std::string version = manifest.value("halide_version", "unknown");
    load_runtime(dir + "/libvashista_halide_runtime.so");
    std::ofstream out(dir + "/results.jsonl", std::ios::app);
    std::map<std::string, std::unique_ptr<Runner>> runners;
    const auto &cands = manifest["candidates"];
    for (size_t i = 0; i < cands.size(); ++i) {
        const json &c = cands[i];
        const Workload w = Workload::from_json(c["workload"]);
        Measurement m;
        const BuildOutcome built{c["status"], c.value("error", ""), c.value("build_s", 0.0)};
        if (built.status == "ok") {
            auto &r = runners[w.key()];
            if (!r) r = std::make_unique<Runner>(std::make_unique<AttentionInstance>(w));
            m = r->measure(dir + "/" + c["library"].get<std::string>(), c["function"]);
        }
        const json rec = make_record(w.key(), w.to_json(), c["schedule"], c.value("kind", "search"), built, m,
                                     c.value("trial", int(i)), c.value("seed", 1), version);
        out << rec.dump() << "\n" << std::flush;
        std::fprintf(stderr, "  %zu/%zu %s: %s %s\n", i + 1, cands.size(), w.key().c_str(),
                     rec["status"].get<std::string>().c_str(),
                     rec.contains("median_ms") ? (std::to_string(rec["median_ms"].get<double>()) + " ms").c_str() : "");
    }
    std::printf("wrote %s/results.jsonl\n", dir.c_str());
    return 0;
}
