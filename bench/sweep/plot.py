"""Plots of `make bench` (vashista_bench's JSON): step time against context length, log-log,
per batch size, with the byte floors of bound routing and dense, and llama.cpp beside ours;
the decode loop's attention tokens per second. Prints the headline ratios.

usage: plot.py bench.json out_dir"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "bound": ("tab:blue", "-"),
    "bound int8": ("tab:cyan", "-"),
    "mean": ("tab:gray", "-"),
    "mean int8": ("silver", "-"),
    "sketch": ("tab:green", "-"),
    "hier_bound": ("tab:purple", "-"),
    "hier_bound int8": ("tab:brown", "-"),
    "dense": ("black", "-"),
    "llama.cpp flash_attn": ("tab:red", "-"),
    "llama.cpp mul_mat": ("tab:orange", "-"),
    "flash_attn head-major": ("tab:pink", "-."),
}


def style(name):
    shared = name.endswith(" shared")
    color, line = STYLE.get(name.removesuffix(" shared"), ("tab:olive", "-"))
    return color, "--" if shared else line


def kernel(point, name):
    return next((k for k in point["kernels"] if k["kernel"] == name), None)


def plot_times(points, batch, path):
    pts = sorted((p for p in points if p["batch"] == batch), key=lambda p: p["T"])
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    names = [k["kernel"] for k in pts[0]["kernels"]]
    ts = [p["T"] for p in pts]
    for name in names:
        rows = [kernel(p, name) for p in pts]
        med = [r["median_ms"] for r in rows]
        lo = [r["median_ms"] - r["min_ms"] for r in rows]
        hi = [r["max_ms"] - r["median_ms"] for r in rows]
        color, line = style(name)
        ax.errorbar(ts, med, yerr=[lo, hi], color=color, linestyle=line, marker="o", ms=3, capsize=2, label=name)
    for name, color in (("bound", "tab:blue"), ("hier_bound", "tab:purple"), ("dense", "black")):
        ax.plot(ts, [kernel(p, name)["floor_ms"] for p in pts], color=color, linestyle=":", label=f"{name}: byte floor")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ts)
    ax.set_xticklabels([f"{t // 1024}K" for t in ts])
    ax.set_xlabel("context length T")
    ax.set_ylabel("step time, ms (cold cache; median, min-max)")
    bw = pts[0]["bandwidth_gbps"]
    ax.set_title(f"decode step, B={batch}, H_q=32, H_kv=8, D=128, P=64, K_c=128 ({bw:.1f} GB/s read)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loop(loop, path):
    labels = ["sparse (bound)", "sparse (hier_bound)", "dense"]
    values = [loop["sparse_tokens_per_s"], loop["sparse_hier_bound_tokens_per_s"], loop["dense_tokens_per_s"]]
    if "llama_cpp_tokens_per_s" in loop:
        labels += ["llama.cpp flash_attn", "llama.cpp mul_mat"]
        values += [loop["llama_cpp_tokens_per_s"], loop["llama_cpp_mul_mat_tokens_per_s"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(labels, values, color=["tab:blue", "tab:purple", "black", "tab:red", "tab:orange"][: len(values)])
    ax.bar_label(bars, fmt="%.3g")
    ax.set_ylabel("attention tokens per second")
    ax.set_title(f"decode loop: {loop['layers']} layers at T={loop['T'] // 1024}K, append + step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


STAGES = ["routing", "selection", "solve+output", "diagnostics", "waiting on parallel tasks", "allocation", "other"]


def plot_stages(stages, path):
    """Stacked bars: the profiled step's time per stage at each length."""
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(stages)), 4.5))
    labels = [f"{r.get('routing', 'bound')}\n{r['T'] // 1024}K" for r in stages]
    bottom = [0.0] * len(stages)
    for stage in STAGES:
        vals = [r["stages_ms"].get(stage, 0.0) for r in stages]
        if not any(vals):
            continue
        ax.bar(labels, vals, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel("context length T")
    ax.set_ylabel("ms per step (under the sampling profiler)")
    ax.set_title("B=1, bf16 summaries, per-head routing: where the step's time goes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    for r in stages:
        parts = ", ".join(f"{s} {100 * r['stages_ms'].get(s, 0) / r['total_ms']:.0f}%" for s in STAGES
                          if r["stages_ms"].get(s, 0) > 0)
        print(f"stages of {r.get('routing', 'bound')} at T={r['T'] // 1024}K ({r['total_ms']:.2f} ms profiled): "
              f"{parts}")
    return path


def headline(points):
    """At 128K (else the longest B=1 length): the default step against its floor, our dense and
    llama.cpp's paths; then the growth from 8K to the longest length, sparse and dense."""
    pts = sorted((p for p in points if p["batch"] == 1), key=lambda p: p["T"])
    if not pts:
        return
    last = next((p for p in pts if p["T"] == 131072), pts[-1])
    d = kernel(last, "dense")
    for routing in ("bound", "hier_bound"):
        b = kernel(last, routing)
        if not b:
            continue
        print(f"T={last['T'] // 1024}K, B=1: {routing} routing {b['median_ms']:.2f} ms, "
              f"{b['ratio_to_floor']:.1f}x its floor, {d['median_ms'] / b['median_ms']:.1f}x faster than our dense, "
              f"{b['heads_certified']} heads certified within the tolerance")
        for peer in ("llama.cpp flash_attn", "llama.cpp mul_mat", "flash_attn head-major"):
            p = kernel(last, peer)
            if p:
                print(f"  {p['median_ms'] / b['median_ms']:.1f}x faster than {peer} ({p['median_ms']:.1f} ms)")
    first = next((p for p in pts if p["T"] == 8192), pts[0])
    last = pts[-1]
    if first is not last:
        growth = ", ".join(f"{name} {kernel(last, name)['median_ms'] / kernel(first, name)['median_ms']:.1f}x"
                           for name in ("bound", "hier_bound", "dense") if kernel(first, name))
        print(f"growth {first['T'] // 1024}K -> {last['T'] // 1024}K: {growth}")


def main(src, out_dir):
    result = json.load(open(src))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for batch in sorted({p["batch"] for p in result["points"]}):
        path = plot_times(result["points"], batch, os.path.join(out_dir, f"time_vs_T_B{batch}.png"))
        if path:
            written.append(path)
    if "decode_loop" in result:
        written.append(plot_loop(result["decode_loop"], os.path.join(out_dir, "decode_loop.png")))
    stages_path = os.path.join(os.path.dirname(src), "stages.json")
    if os.path.exists(stages_path):
        written.append(plot_stages(json.load(open(stages_path)), os.path.join(out_dir, "stages.png")))
    headline(result["points"])
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
