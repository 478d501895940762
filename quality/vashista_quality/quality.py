"""vashista quality: a real model decoding with sparse attention, against dense.

For each model: prefill a long real text densely, then decode the next N tokens with
teacher forcing under every setting at once (library dense is the reference), and
report per setting perplexity, top-1 agreement and KL against dense, the share of heads
that fell back per layer, the attention bytes read relative to dense and the
certificate's tightness on sampled heads. Then a pass-key retrieval check at several
depths, a layer dump for `vashista diagnose`, JSON, plots and a markdown table.
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from . import abi, dump, metrics
from .runner import PAGE, Session, Setting, compare
from . import model as models
from .text import real_text

EDGE = dict(sink_pages=1, local_pages=2)


def settings_for(name):
    """The sweep: library dense, the (P, K_c) grid with sink and local pages, one change
    at a time around a base, and the base under policy dense at several tolerances."""
    if name == "smollm2":
        grid = [(32, 128), (64, 128), (64, 256), (64, 512), (128, 512), (128, 1024), (256, 2048)]
        base = (64, 256)
        shared = [base, (128, 1024)]
        widest = (128, 1024)
    else:
        grid = [(64, 256), (128, 512), (128, 1024), (256, 2048)]
        base = (128, 512)
        shared = [(128, 512), (256, 1024)]
        widest = (256, 2048)
    P, K = base
    s = [Setting("dense", dense=True)]
    s += [Setting(f"P{p} K{k}", top_pages=p, top_tokens=k, **EDGE) for p, k in grid]
    s += [Setting(f"P{p} K{k} shared", top_pages=p, top_tokens=k, group_routing="shared", **EDGE) for p, k in shared]
    s += [Setting(f"P{P} K{K} no sink/local", top_pages=P, top_tokens=K),
          Setting(f"P{P} K{K} mean, no sink/local", top_pages=P, top_tokens=K, routing="mean"),
          Setting(f"P{P} K{K} mean", top_pages=P, top_tokens=K, routing="mean", **EDGE),
          Setting(f"P{P} K{K} eg", top_pages=P, top_tokens=K, solver="eg", **EDGE)]
    if name == "smollm2":
        s.append(Setting(f"P{P} K{K} local 4", top_pages=P, top_tokens=K, sink_pages=1, local_pages=4))
    # Token-sketch routing (8-bit codes, scales per 16 channels unless named): candidates
    # by sketch score, certified from per-token upper bounds; P >= K_c makes them the
    # global top K_c. Policy dense at 10% of the output's norm (relative tolerance).
    sk = dict(routing="sketch", sketch_bits=8, sketch_group=16, **EDGE)
    rel = dict(policy="dense", tolerance=0.1, relative_tolerance=1)
    for p, k in [(128, 512), (128, 1024), (512, 1024), (512, 2048)]:
        s.append(Setting(f"P{p} K{k} sketch", top_pages=p, top_tokens=k, **sk))
    for p, k in [(128, 1024), (512, 1024), (512, 2048)]:
        s.append(Setting(f"P{p} K{k} sketch dense@10%", top_pages=p, top_tokens=k, **sk, **rel))
    if name == "smollm2":
        s += [Setting("P128 K1024 sketch g32", top_pages=128, top_tokens=1024, **{**sk, "sketch_group": 32}),
              Setting("P128 K1024 sketch 4-bit", top_pages=128, top_tokens=1024, **{**sk, "sketch_bits": 4})]
    s.append(Setting(f"P{widest[0]} K{widest[1]} dense@10%", top_pages=widest[0], top_tokens=widest[1], **rel,
                     **EDGE))
    for tol in (0.01, 0.1, 1.0):
        s.append(Setting(f"P{P} K{K} dense@{tol:g}", top_pages=P, top_tokens=K, policy="dense", tolerance=tol, **EDGE))
    s.append(Setting(f"P{widest[0]} K{widest[1]} dense@0.1", top_pages=widest[0], top_tokens=widest[1],
                     policy="dense", tolerance=0.1, **EDGE))
    return s


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def llama_cpp_check(model, tokens, ours):
    """The library-dense run's last next-token distributions against llama.cpp's logits for
    the same tokens (its own dense attention, same weights): the outside reference."""
    try:
        from . import llama_reference
    except ImportError:
        log("llama.cpp check skipped: llama-cpp-python is not installed (tools/setup.sh quality)")
        return {"skipped": "llama-cpp-python not installed"}
    t = time.time()
    ref = llama_reference.logits(model.path, tokens, n_logits=len(ours))
    fig = metrics.agreement(ours, ref)
    fig["within_tolerance"] = metrics.within(fig, metrics.TOL_QUANT)
    fig["tolerance"] = metrics.TOL_QUANT
    fig["positions"] = len(ours)
    fig["seconds"] = time.time() - t
    log(f"library dense vs llama.cpp over the last {len(ours)} steps: top-1 {fig['top1']:.3f}, "
        f"KL {fig['kl']:.2e}, max |dlogit| {fig['max']:.3f} ({'within' if fig['within_tolerance'] else 'OUTSIDE'} "
        f"tolerance)")
    return fig


def teacher_forced(model, lib, settings, tokens, context, steps, dump_layer=None, dump_path=None, llama_check=64):
    T0 = (context - steps) // PAGE * PAGE
    if len(tokens) < T0 + steps + 1:
        raise SystemExit(f"vashista quality: the text has {len(tokens)} tokens; {T0 + steps + 1} needed")
    s = Session(model, lib, settings, tokens[:T0], steps, progress=log, dump_layer=dump_layer)
    decode_s = s.teacher_forced(tokens[T0 + 1:T0 + steps + 1], tokens[T0:T0 + steps], keep_last=llama_check)
    rows = []
    for x, st in zip(settings, s.stats):
        r = {"setting": x.name, "dense": x.dense, **({} if x.dense else x.params())}
        r.update(compare(st, s.stats[s.reference]))
        rows.append(r)
    if dump_path is not None:
        qs, pos, (k, v) = s.dumped()
        dump.save(dump_path, qs, k, v, pos, {"model": model.name, "layer": dump_layer, "scale": model.attn_scale,
                                             "text": "Debian license texts"}, dtype="BF16")
        log(f"wrote {dump_path}")
    result = {"prefix_tokens": T0, "steps": steps, "prefill_s": s.prefill_s, "decode_s": decode_s,
              "full_context_layers": s.full_layers, "settings": rows}
    if llama_check:
        result["llama_cpp"] = llama_cpp_check(model, tokens[:T0 + steps], np.stack(s.reference_logits))
    return result


def retrieval(model, lib, settings, filler_tokens, context, depths, rng):
    """Pass keys hidden at `depths` of `context` tokens of filler; each setting answers greedily."""
    results = []
    for depth in depths:
        key = str(rng.integers(10000, 99999))
        needle = model.tokenize(f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n", bos=False)
        question = model.tokenize("\nWhat is the pass key? The pass key is", bos=False)
        room = context - len(needle) - len(question) - 1
        room -= (room + len(needle) + len(question) + 1) % PAGE
        at = int(room * depth)
        prompt = [model.bos_token] + filler_tokens[:at] + needle + filler_tokens[at:room] + question
        s = Session(model, lib, settings, prompt, 8, progress=lambda m: None)
        first = int(np.argmax(s.first_logits))
        out = [[first] for _ in settings]
        for _ in range(7):
            lg = s.step(np.array([o[-1] for o in out]))
            for b, o in enumerate(out):
                o.append(int(np.argmax(lg[b])))
        answers = [model.detokenize(o) for o in out]
        found = [key in re.sub(r"\s", "", a) for a in answers]
        results.append({"depth": depth, "key": key, "tokens": len(prompt),
                        "answers": {x.name: a for x, a in zip(settings, answers)},
                        "retrieved": {x.name: f for x, f in zip(settings, found)}})
        log(f"retrieval at depth {depth:.0%}: dense {'found' if found[s.reference] else 'missed'} the key; "
            f"{sum(found) - found[s.reference]}/{len(found) - 1} sparse settings found it")
    return results


def plots(result, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    name = result["model"]
    rows = [r for r in result["quality"]["settings"] if not r["dense"]]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        c = "tab:red" if r["policy"] == "dense" else "tab:blue"
        ax.scatter(r["bytes_ratio"], 100 * r["perplexity_change"], color=c)
        ax.annotate(r["setting"], (r["bytes_ratio"], 100 * r["perplexity_change"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(1.0, color="gray", ls=":", lw=1)
    ax.axvline(0.25, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ticks = [0.1, 0.2, 0.25, 0.5, 1, 2]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("attention bytes read / dense (full-context layers)")
    ax.set_ylabel("perplexity change vs dense (%, symlog)")
    ax.set_title(f"{name}: quality against bytes (blue: policy none, red: policy dense)")
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}_ppl_vs_bytes.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        if r["policy"] != "dense":
            continue
        layers = [i for i, f in enumerate(r["fallback_per_layer"]) if f is not None]
        ax.plot(layers, [100 * r["fallback_per_layer"][i] for i in layers], marker="o", ms=3, label=r["setting"])
    ax.set_xlabel("layer")
    ax.set_ylabel("heads answered densely (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{name}: fallback per layer (policy dense)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}_fallback_per_layer.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 6))
    lo, hi = 1e-6, 1e3
    for r in rows:
        t = np.array(r["tight_samples"])
        if len(t) and r["policy"] == "none" and r["routing"] in ("bound", "sketch"):
            ax.scatter(np.maximum(t[:, 1], lo), t[:, 0], s=4, alpha=0.5, label=r["setting"])
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("true error |o_sparse - o_dense|")
    ax.set_ylabel("certified bound")
    ax.set_title(f"{name}: bound against true error (sampled heads)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, markerscale=3)
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}_bound_vs_error.png", dpi=110)
    plt.close(fig)


def table(result):
    rows = result["quality"]["settings"]
    ret = result.get("retrieval", [])
    lines = [f"| {result['model']} setting | policy | ppl Δ | top-1 | KL | bytes/dense | fallback | certified | "
             "certified at 1% / 10% of \\|o\\| | bound/err | retrieved where dense did |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    dense_name = next(r["setting"] for r in rows if r["dense"])
    for r in rows:
        hits = [x for x in ret if x["retrieved"][dense_name]]
        found = sum(x["retrieved"][r["setting"]] for x in hits)
        rt = f"{found}/{len(hits)}" + (f" (dense missed {len(ret) - len(hits)})" if r["dense"] and len(hits) < len(ret)
                                       else "") if ret else "-"
        if r["dense"]:
            lines.append(f"| dense (ppl {r['perplexity']:.3f}) | - | 0 | 1 | 0 | 1 | - | - | - | - | {rt} |")
            continue
        pol = r["policy"] if r["policy"] == "none" else (
            f"dense, {100 * r['tolerance']:g}% of \\|o\\|" if r.get("relative_tolerance") else
            f"dense, tol {r['tolerance']:g}")
        tm = r["tightness_median"]
        cr = r["certified_rel"]
        rel = " / ".join("-" if cr[t] is None else f"{100 * cr[t]:.0f}%" for t in ("0.01", "0.1"))
        lines.append(f"| {r['setting']} | {pol} | {100 * r['perplexity_change']:+.2f}% | {r['top1_agreement']:.3f} | "
                     f"{r['kl_mean']:.2e} | {r['bytes_ratio']:.3f} | {100 * r['fallback_share']:.1f}% | "
                     f"{100 * r['certified_share']:.0f}% | {rel} | {'-' if tm is None else f'{tm:.0f}'} | {rt} |")
    return "\n".join(lines) + "\n"


def run_model(name, args, lib):
    log(f"{name}: loading")
    model = models.load(name, args.gguf.get(name))
    text = real_text()
    tokens = model.tokenize(text)
    log(f"{name}: {len(tokens)} tokens of text; context {args.context[name]}, {args.steps} decoded tokens")
    settings = settings_for(name)
    if args.only:
        settings = [x for x in settings if x.dense or re.search(args.only, x.name)]
    out = args.out
    full = [l for l in range(model.n_layers) if model.window(l) is None]
    layer = full[len(full) // 2]  # the layer dumped for `vashista diagnose`
    result = {"model": name, "context": args.context[name]}
    t = time.time()
    result["quality"] = teacher_forced(model, lib, settings, tokens, args.context[name], args.steps, layer,
                                       out / f"{name}_layer{layer}.safetensors")
    result["quality"]["seconds"] = time.time() - t
    if args.retrieval_depths:
        t = time.time()
        filler = tokens[1:]  # the same text without its BOS
        rng = np.random.default_rng(5)
        result["retrieval"] = retrieval(model, lib, settings, filler, args.retrieval_context[name],
                                        args.retrieval_depths, rng)
        result["retrieval_seconds"] = time.time() - t
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plots(result, out)
    (out / f"{name}.md").write_text(table(result))
    log(f"{name}: wrote {out / (name + '.json')}, {name}.md and plots")
    print(table(result))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(prog="vashista quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,gemma3", help="comma-separated: smollm2, gemma3")
    ap.add_argument("--lib", default="build/lib/libvashista_models.so", help="kernel library with the sweep's variants")
    ap.add_argument("--out", default="build/quality-report", help="folder for JSON, plots, tables and dumps")
    ap.add_argument("--steps", type=int, default=512, help="teacher-forced decode steps (default 512)")
    ap.add_argument("--smollm2-context", type=int, default=8192)
    ap.add_argument("--gemma3-context", type=int, default=16384)
    ap.add_argument("--gemma3-gguf", help="path of the assembled Gemma GGUF (default: build/models/)")
    ap.add_argument("--retrieval-depths", default="0.1,0.5,0.9", help="pass-key depths ('' to skip)")
    ap.add_argument("--only", help="regex: run only the settings whose name matches (and dense)")
    a = ap.parse_args(argv)
    names = a.models.split(",")
    unknown = [n for n in names if n not in ("smollm2", "gemma3")]
    if unknown:
        print(f"vashista quality: unknown model '{unknown[0]}' (smollm2, gemma3)", file=sys.stderr)
        return 2
    if not Path(a.lib).exists():
        print(f"vashista quality: no kernel library at {a.lib} (make quality builds it)", file=sys.stderr)
        return 2
    a.out = Path(a.out)
    a.out.mkdir(parents=True, exist_ok=True)
    a.context = {"smollm2": a.smollm2_context, "gemma3": a.gemma3_context}
    a.retrieval_context = {"smollm2": min(a.smollm2_context, 4096), "gemma3": min(a.gemma3_context, 8192)}
    a.retrieval_depths = [float(x) for x in a.retrieval_depths.split(",") if x]
    a.gguf = {"gemma3": a.gemma3_gguf}
    lib = abi.Library(a.lib)
    for name in names:
        run_model(name, a, lib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
