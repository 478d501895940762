"""vashista diagnose: per head, how a layer's attention fares under sparse decoding.

Reads a layer dump (vashista_quality.dump: q, k, v, positions in safetensors), runs each
query through a kernel library's sparse step at the given settings (policy none, so every
head reports its own bound) and through float64 dense attention, and reports per query
head: the support gap, the softmax mass the candidates capture, the certificate's bound
and the true error relative to |o_dense|, and a recommendation:
  sparse   every query certified with bound <= tolerance * |o_dense|
  widen    sparse is within the tolerance on every query, but the bound does not show it
           at these settings: a larger P / K_c (or a tighter certificate) is needed
  dense    sparse misses by more than the tolerance on some query: keep this head dense
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import abi, dump
from .model import dense_attention64

DEFAULT_LIBS = ("build/lib/libvashista_models.so", "build/lib/libvashista_smollm2_test.so")


SUMMARY_DTYPES = {"bfloat16": abi.BF16, "int8": abi.I8}


def diagnose(lib, q, k, v, positions, scale, top_pages, top_tokens, tolerance, summary_dtype=abi.BF16, **settings):
    Q, H, D = q.shape
    T, KVH, _ = k.shape
    pool = abi.PagePool(abi.pages_for(T), KVH, D)
    cache = abi.LayerCache(lib, pool, np.arange(pool.num_pages), summary_dtype=summary_dtype)
    cache.append(k, v)
    ks, vs = cache.keys_values()  # what the kernels read: bf16
    cfg = lib.decode_config(top_pages=top_pages, top_tokens=top_tokens, policy="none", scale=scale, **settings)
    rows = {f: np.zeros((Q, H)) for f in ("gap", "mass", "bound", "err", "certified")}
    for i, p in enumerate(positions):
        o, _, diag, cand = cache.decode(cfg, q[i], seq_len=int(p) + 1)
        od, w = (x[0] for x in dense_attention64(q[i][None], ks[None, :p + 1], vs[None, :p + 1], scale))
        norm = np.maximum(np.linalg.norm(od, axis=1), 1e-30)
        rows["gap"][i] = diag["support_gap"]
        rows["mass"][i] = [w[h, c[c >= 0]].sum() for h, c in enumerate(cand)]
        rows["bound"][i] = diag["error_bound"] / norm
        rows["err"][i] = np.linalg.norm(o - od, axis=1) / norm
        rows["certified"][i] = diag["certificate"] == abi.CERTIFIED
    heads = []
    for h in range(H):
        safe = bool(np.all(rows["certified"][:, h] == 1) and np.all(rows["bound"][:, h] <= tolerance))
        accurate = bool(np.all(rows["err"][:, h] <= tolerance))
        heads.append({
            "head": h,
            "support_gap": {"min": float(rows["gap"][:, h].min()), "median": float(np.median(rows["gap"][:, h])),
                            "max": float(rows["gap"][:, h].max())},
            "mass_captured": {"min": float(rows["mass"][:, h].min()), "median": float(np.median(rows["mass"][:, h]))},
            "bound_rel": {"median": float(np.median(rows["bound"][:, h])), "max": float(rows["bound"][:, h].max())},
            "error_rel": {"median": float(np.median(rows["err"][:, h])), "max": float(rows["err"][:, h].max())},
            "certified_share": float(rows["certified"][:, h].mean()),
            "recommendation": "sparse" if safe else "widen" if accurate else "dense",
        })
    return heads


def main(argv=None):
    ap = argparse.ArgumentParser(prog="vashista diagnose", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump", help="layer dump (safetensors: q, k, v, positions)")
    ap.add_argument("--lib", help="kernel library (.so) with a decode variant for the dump's shape "
                    f"(default: the first of {', '.join(DEFAULT_LIBS)} that exists)")
    ap.add_argument("--top-pages", type=int, default=64, help="P (default 64)")
    ap.add_argument("--top-tokens", type=int, default=128, help="K_c (default 128)")
    ap.add_argument("--routing", default="bound", choices=sorted(abi.ROUTINGS))
    ap.add_argument("--summary-dtype", default="bfloat16", choices=sorted(SUMMARY_DTYPES),
                    help="page summaries: bfloat16 (default) or int8 (compact, a looser box)")
    ap.add_argument("--group-routing", default="per_head", choices=sorted(abi.GROUP_ROUTINGS))
    ap.add_argument("--sink-pages", type=int, default=1)
    ap.add_argument("--local-pages", type=int, default=2)
    ap.add_argument("--solver", default="softmax", choices=["softmax", "eg"])
    ap.add_argument("--tolerance", type=float, default=0.01, help="relative to |o_dense| (default 0.01)")
    ap.add_argument("--json", help="also write the per-head report here")
    a = ap.parse_args(argv)
    try:
        q, k, v, positions, meta = dump.load(a.dump)
    except dump.DumpError as e:
        print(f"vashista diagnose: {e}", file=sys.stderr)
        return 2
    lib_path = a.lib or next((p for p in DEFAULT_LIBS if Path(p).exists()), None)
    if not lib_path or not Path(lib_path).exists():
        where = lib_path or " or ".join(DEFAULT_LIBS)
        print(f"vashista diagnose: no kernel library at {where} (build it, or pass --lib)", file=sys.stderr)
        return 2
    scale = float(meta.get("scale", 1.0 / np.sqrt(q.shape[2])))
    try:
        heads = diagnose(abi.Library(lib_path), q, k, v, positions, scale, a.top_pages, a.top_tokens, a.tolerance,
                         summary_dtype=SUMMARY_DTYPES[a.summary_dtype], routing=a.routing, group_routing=a.group_routing, sink_pages=a.sink_pages,
                         local_pages=a.local_pages, solver=a.solver)
    except abi.VashistaError as e:
        print(f"vashista diagnose: {e}", file=sys.stderr)
        return 2
    print(f"{a.dump}: {q.shape[0]} queries, {q.shape[1]} query heads over {k.shape[1]} KV heads, D={q.shape[2]}, "
          f"{k.shape[0]} tokens; P={a.top_pages} K_c={a.top_tokens} {a.routing} routing, {a.summary_dtype} summaries, "
          f"tolerance {a.tolerance:g}")
    print(f"{'head':>4} {'gap med':>8} {'mass min':>8} {'mass med':>8} {'bound/|o|':>10} {'err/|o|':>9} "
          f"{'cert':>5}  recommendation")
    for r in heads:
        print(f"{r['head']:>4} {r['support_gap']['median']:>8.3f} {r['mass_captured']['min']:>8.3f} "
              f"{r['mass_captured']['median']:>8.3f} {r['bound_rel']['max']:>10.3g} {r['error_rel']['max']:>9.3g} "
              f"{r['certified_share']:>5.2f}  {r['recommendation']}")
    counts = {k: sum(r["recommendation"] == k for r in heads) for k in ("sparse", "widen", "dense")}
    print("heads: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if a.json:
        report = {"dump": a.dump, "metadata": meta, "library": lib_path,
                  "settings": {"top_pages": a.top_pages, "top_tokens": a.top_tokens, "routing": a.routing,
                               "summary_dtype": a.summary_dtype,
                               "group_routing": a.group_routing, "sink_pages": a.sink_pages,
                               "local_pages": a.local_pages, "solver": a.solver, "tolerance": a.tolerance},
                  "heads": heads, "summary": counts}
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
