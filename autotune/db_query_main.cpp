// vashista-db-query: the database's best record for a kernel library's variant, as
// vashista_tuned_spec (cmake/VashistaKernels.cmake) asks at configure time. Built by CMake
// from this file and database.cpp alone, before anything else of the project exists.
//   vashista-db-query --db FILE --generator decode|dense --target T [--tokens N] [PARAM=VALUE ...]
// PARAM=VALUE: the variant's GeneratorParams (every key of its spec; the query uses those of
// tuning_fields). Prints one JSON object: {"schedule", "tokens", "median_ms" (text), "kind",
// "how"} of the best record, or no schedule when none matches; "other_targets" lists the
// targets tuned for the same shape that the query could not use.
#include "database.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

using namespace vashista::tune;

int main(int argc, char **argv) {
    std::string db_path, generator, target;
    int tokens = 0;
    std::map<std::string, std::string> params;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const bool has_value = i + 1 < argc;
        if (a == "--db" && has_value) {
            db_path = argv[++i];
        } else if (a == "--generator" && has_value) {
            generator = argv[++i];
        } else if (a == "--target" && has_value) {
            target = argv[++i];
        } else if (a == "--tokens" && has_value) {
            tokens = std::atoi(argv[++i]);
        } else if (const auto eq = a.find('='); eq != std::string::npos && a[0] != '-') {
            params[a.substr(0, eq)] = a.substr(eq + 1);
        } else {
            std::fprintf(stderr,
                         "usage: vashista-db-query --db FILE --generator G --target T [--tokens N] "
                         "[FIELD=VALUE ...]\n(argument '%s' not understood)\n",
                         a.c_str());
            return 2;
        }
    }
    if (db_path.empty() || generator.empty() || target.empty()) {
        std::fprintf(stderr, "vashista-db-query: --db, --generator and --target are required\n");
        return 2;
    }
    RecordQuery q;
    try {
        q = variant_query(generator, params, target, tokens);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "vashista-db-query: %s\n", e.what());
        return 2;
    }
    const LoadReport loaded = load_records(db_path);
    for (const auto &p : loaded.problems) std::fprintf(stderr, "vashista-db-query: %s\n", p.c_str());
    const QueryResult r = query_best(loaded.records, q);
    json out = json::object();
    if (r.best) {
        out["schedule"] = (*r.best)["schedule"];
        out["tokens"] = r.best->value("workload", json::object()).value("tokens", 0);
        char ms[32];  // as people read it (CMake prints it in its messages)
        std::snprintf(ms, sizeof(ms), "%.4g", (*r.best)["median_ms"].get<double>());
        out["median_ms"] = ms;
        out["kind"] = r.best->value("kind", "");
        out["how"] = r.how;
    }
    out["other_targets"] = r.other_targets;
    std::printf("%s\n", out.dump().c_str());
    return 0;
}
