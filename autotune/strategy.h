// What to try next. Points are JSON objects {knob: value} of a SearchSpace; strategies
// know nothing of what the knobs mean.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace vashista::tune {

using nlohmann::json;

struct SearchSpace {
    std::vector<std::string> names;
    std::vector<std::vector<int>> domains;
    std::function<std::string(const json &)> violation;  // empty when valid
    bool valid(const json &point) const { return violation(point).empty(); }
};

constexpr double kFailed = std::numeric_limits<double>::infinity();

class Strategy {
public:
    virtual ~Strategy() = default;
    // A valid point not proposed or observed before, if one can be found.
    virtual json propose() = 0;
    // The cost of a point (lower is better; kFailed for a failed or wrong candidate).
    virtual void observe(const json &point, double cost);
    bool seen(const json &point) const;
    size_t observed() const { return history_.size(); }

protected:
    Strategy(SearchSpace space, uint64_t seed) : space_(std::move(space)), rng_(seed) {}
    json random_point();
    SearchSpace space_;
    std::mt19937_64 rng_;
    std::vector<std::pair<json, double>> history_;
    std::vector<std::string> proposed_;
};

class RandomStrategy : public Strategy {
public:
    RandomStrategy(SearchSpace space, uint64_t seed) : Strategy(std::move(space), seed) {}
    json propose() override;
};

// Evolutionary search: random points until `initial` are observed, then children of
// tournament-selected parents (uniform crossover, then mutation of one or more knobs),
// with a `random_fraction` of fresh random points to keep exploring.
class EvolutionaryStrategy : public Strategy {
public:
    EvolutionaryStrategy(SearchSpace space, uint64_t seed, int initial = 8, int elite = 6,
                         double random_fraction = 0.15)
        : Strategy(std::move(space), seed), initial_(initial), elite_(elite), random_fraction_(random_fraction) {}
    json propose() override;

private:
    json child();
    int initial_, elite_;
    double random_fraction_;
};

}  // namespace vashista::tune
