#include "strategy.h"

#include <algorithm>

namespace vashista::tune {

void Strategy::observe(const json &point, double cost) {
    history_.emplace_back(point, cost);
    proposed_.push_back(point.dump());
}

bool Strategy::seen(const json &point) const {
    return std::find(proposed_.begin(), proposed_.end(), point.dump()) != proposed_.end();
}

json Strategy::random_point() {
    for (int attempt = 0; attempt < 10000; ++attempt) {
        json p = json::object();
        for (size_t k = 0; k < space_.names.size(); ++k)
            p[space_.names[k]] = space_.domains[k][rng_() % space_.domains[k].size()];
        if (space_.valid(p)) return p;
    }
    throw std::runtime_error("the search space has no valid point within 10000 draws");
}

json RandomStrategy::propose() {
    json p = random_point();
    for (int attempt = 0; attempt < 1000 && seen(p); ++attempt) p = random_point();
    proposed_.push_back(p.dump());
    return p;
}

json EvolutionaryStrategy::child() {
    std::vector<std::pair<json, double>> ranked;
    for (const auto &h : history_)
        if (h.second < kFailed) ranked.push_back(h);
    if (ranked.size() < 2) return random_point();
    std::sort(ranked.begin(), ranked.end(), [](const auto &a, const auto &b) { return a.second < b.second; });
    ranked.resize(std::min<size_t>(ranked.size(), size_t(elite_)));
    auto tournament = [&]() -> const json & {
        const auto &a = ranked[rng_() % ranked.size()], &b = ranked[rng_() % ranked.size()];
        return a.second <= b.second ? a.first : b.first;
    };
    const json &mother = tournament(), &father = tournament();
    json c = json::object();
    for (const auto &name : space_.names) c[name] = (rng_() & 1) ? mother[name] : father[name];
    // Mutate one knob for sure, each other with probability 1/n.
    const size_t n = space_.names.size();
    const size_t forced = rng_() % n;
    for (size_t k = 0; k < n; ++k)
        if (k == forced || rng_() % n == 0) c[space_.names[k]] = space_.domains[k][rng_() % space_.domains[k].size()];
    return c;
}

json EvolutionaryStrategy::propose() {
    std::uniform_real_distribution<double> u(0, 1);
    for (int attempt = 0; attempt < 1000; ++attempt) {
        const bool explore = history_.size() < size_t(initial_) || u(rng_) < random_fraction_;
        json p = explore ? random_point() : child();
        if (space_.valid(p) && !seen(p)) {
            proposed_.push_back(p.dump());
            return p;
        }
    }
    json p = random_point();
    proposed_.push_back(p.dump());
    return p;
}

}  // namespace vashista::tune
