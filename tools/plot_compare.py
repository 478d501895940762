"""Bar chart of `vashista bench --compare-schedulers` results: median step time per
schedule at each context length, min-max as error bars; failed schedulers are named."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["hand", "tuned", "Mullapudi2016", "Adams2019", "Li2018"]


def main(src, dst):
    records = json.load(open(src))
    lengths = sorted({r["T"] for r in records})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(ORDER)
    failed = []
    for k, name in enumerate(ORDER):
        xs, ys, lo, hi = [], [], [], []
        for i, t in enumerate(lengths):
            r = next((r for r in records if r["T"] == t and r["schedule"] == name), None)
            if r is None:
                continue
            if r.get("status") != "ok":
                failed.append(f"{name} @ T={t}: {r.get('status')}")
                continue
            xs.append(i + (k - len(ORDER) / 2 + 0.5) * width)
            ys.append(r["median_ms"])
            lo.append(r["median_ms"] - r["min_ms"])
            hi.append(r["max_ms"] - r["median_ms"])
        if xs:
            ax.bar(xs, ys, width, yerr=[lo, hi], label=name, capsize=2)
    ax.set_xticks(range(len(lengths)))
    ax.set_xticklabels([f"T={t // 1024}K" for t in lengths])
    ax.set_ylabel("decode step, ms (cold cache, median)")
    ax.set_yscale("log")
    ax.set_title("Fused sparse decode: tuned vs hand vs Halide autoschedulers")
    ax.legend(fontsize=8)
    if failed:
        ax.text(0.01, 0.01, "not measured: " + "; ".join(failed), transform=ax.transAxes, fontsize=7, va="bottom")
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_compare.py RESULTS.json OUT.png")
    main(sys.argv[1], sys.argv[2])
