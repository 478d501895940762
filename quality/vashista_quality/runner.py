"""Teacher-forced decoding of a real model with the library's attention in the loop.

Several settings run side by side as one batch (each its own KV cache, since a sparse
step changes the keys and values of every later token): the model's matmuls take the
batch at once, attention is one library call per setting and layer. The prefix is
prefilled once, densely, and its pages are shared by every setting's block table.

Sliding-window layers (Gemma's) are not long-context: each setting attends densely over
the window through the library, its cache rewritten from token 0 with the window's keys
and values at every step (the library has no window mask). Sparse settings and the byte
counts concern the full-context layers.
"""
from dataclasses import dataclass, field
import math
import time

import numpy as np

from . import abi
from .metrics import log_softmax

PAGE = abi.PAGE_SIZE
# Relative tolerances the certified share is reported at: bound <= tau * |o_dense|.
CERTIFY_AT = (0.01, 0.1)


@dataclass
class Setting:
    """One way of running attention: library dense, or sparse with a compiled variant's
    parameters and a policy."""
    name: str
    dense: bool = False
    top_pages: int = 64
    top_tokens: int = 128
    routing: str = "bound"
    group_routing: str = "per_head"
    sink_pages: int = 0
    local_pages: int = 0
    solver: str = "softmax"
    policy: str = "none"
    tolerance: float = 1e-3
    relative_tolerance: int = 0   # 1: tolerance is relative to the output's norm
    sketch_bits: int = 0       # sketch routing: the caches keep a token sketch of these bits
    sketch_group: int = 16     # channels per sketch scale

    def params(self):
        return {k: getattr(self, k) for k in ("top_pages", "top_tokens", "routing", "group_routing", "sink_pages",
                                              "local_pages", "solver", "policy", "tolerance", "relative_tolerance")}


@dataclass
class Stats:
    """What one setting's steps measured."""
    heads: np.ndarray                       # [layers] query heads decoded by the library
    fallback: np.ndarray                    # [layers] of them answered densely
    certified: np.ndarray                   # [layers] with a certified bound
    bytes_read: float = 0.0                 # attention bytes, library layers
    bytes_dense: float = 0.0                # what dense reads for the same steps
    nll: list = field(default_factory=list)      # per step, of the forced next token
    kl: list = field(default_factory=list)       # per step, KL(dense || this setting)
    top1: list = field(default_factory=list)     # per step, same argmax as dense
    # Sampled heads: (policy_taken, certificate, bound, |o - o_dense|, |o_dense|, layer), o the answer given.
    samples: list = field(default_factory=list)

    def tight(self):
        """(bound, true error, |o_dense|) of the sampled heads answered sparsely under a certificate."""
        t = [x[2:5] for x in self.samples if x[1] == abi.CERTIFIED and x[0] != abi.TAKEN_DENSE]
        return np.array(t).reshape(-1, 3)


class Session:
    """A model, a kernel library, a prefilled prefix and settings decoding in lockstep."""

    def __init__(self, model, lib, settings, prefix_tokens, max_new, progress=None, sample_every=16,
                 dump_layer=None, dump_queries=32):
        if len(prefix_tokens) % PAGE:
            raise ValueError(f"prefix of {len(prefix_tokens)} tokens: a multiple of {PAGE} keeps its pages shared")
        self.model, self.lib, self.settings = model, lib, settings
        self.reference = next(b for b, s in enumerate(settings) if s.dense)  # KL, top-1 and dumps are against it
        self.progress = progress or (lambda msg: None)
        self.sample_every = sample_every
        self.scale = model.attn_scale
        self.configs = [None if s.dense else lib.decode_config(scale=self.scale, **s.params()) for s in settings]
        T0 = len(prefix_tokens)
        self.position = T0
        t = time.time()
        kv, logits = model.prefill(prefix_tokens, n_logits=1)
        self.prefill_s = time.time() - t
        self.first_logits = logits[-1]
        self.progress(f"prefill of {T0} tokens: {self.prefill_s:.1f} s")
        B = len(settings)
        pre_pages = T0 // PAGE
        own = math.ceil(max_new / PAGE)
        self.full_layers = [l for l in range(model.n_layers) if model.window(l) is None]
        self.caches = {}
        self.window = {}  # layer -> per setting [keys, values (float32, the last w tokens), cache]
        for l in range(model.n_layers):
            k, v = kv[l]
            if model.window(l) is not None:
                w = model.window(l)
                n = math.ceil(w / PAGE)
                self.window[l] = [[k[-w:], v[-w:],
                                   abi.LayerCache(lib, abi.PagePool(n, model.n_kv_heads, model.head_dim), np.arange(n))]
                                  for _ in range(B)]
                continue
            pool = abi.PagePool(pre_pages + B * own, model.n_kv_heads, model.head_dim)
            caches = []
            for b in range(B):
                pages = np.concatenate([np.arange(pre_pages), pre_pages + b * own + np.arange(own)])
                s = settings[b]
                c = abi.LayerCache(lib, pool, pages, s.sketch_bits if s.routing == "sketch" else 0, s.sketch_group)
                c.append(k, v)
                caches.append(c)
            self.caches[l] = caches
        L = model.n_layers
        self.stats = [Stats(np.zeros(L, np.int64), np.zeros(L, np.int64), np.zeros(L, np.int64)) for _ in settings]
        self.step_index = 0
        self.dump_layer, self.dump_queries, self.dump_q = dump_layer, dump_queries, []

    # Bytes a step reads for one KV head of a full-context layer (bf16 keys and values).
    def _dense_bytes(self, T):
        return 4 * T * self.model.head_dim

    def _sparse_bytes(self, s, T, cand):
        """Summaries of every page (mean, min, max rows and two scalars), the keys of the
        routed pages (each query head's own P pages under per-head routing, an upper bound
        on their union) and the values of the candidates (their union over the group);
        in sketch routing, the sketch instead of summaries and routed keys."""
        D, G = self.model.head_dim, self.model.n_heads // self.model.n_kv_heads
        pages = math.ceil(T / PAGE)
        union = np.unique(cand[cand >= 0]).size
        if s.routing == "sketch":
            # Every token's sketch (codes and bf16 scales), two page scalars, and the keys
            # (exact rescoring) and values of the candidates.
            return T * (D * s.sketch_bits // 8 + 2 * D // s.sketch_group) + pages * 8 + union * D * 2 * 2
        routed = min(pages, s.top_pages * (G if s.group_routing == "per_head" else 1))
        return pages * (3 * D * 2 + 8) + routed * PAGE * D * 2 + union * D * 2

    def _attend(self, layer, q, k, v):
        B = q.shape[0]
        out = np.empty_like(q)
        if layer in self.window:
            w = self.model.window(layer)
            for b in range(B):
                entry = self.window[layer][b]
                kk = entry[0] = np.concatenate([entry[0], k[b:b + 1]])[-w:]
                vv = entry[1] = np.concatenate([entry[1], v[b:b + 1]])[-w:]
                entry[2].append(kk, vv, start=0)
                out[b] = entry[2].dense(q[b], self.scale)[0]
            return out
        G = self.model.n_heads // self.model.n_kv_heads
        sample = self.step_index % self.sample_every == 0
        for b, s in enumerate(self.settings):
            c = self.caches[layer][b]
            c.append(k[b:b + 1], v[b:b + 1])
            T = c.tokens
            st = self.stats[b]
            st.bytes_dense += self._dense_bytes(T) * self.model.n_kv_heads
            if s.dense:
                if layer == self.dump_layer and b == self.reference:
                    self.dump_q = (self.dump_q + [(q[b].copy(), T - 1)])[-self.dump_queries:]
                out[b] = c.dense(q[b], self.scale)[0]
                st.bytes_read += self._dense_bytes(T) * self.model.n_kv_heads
                continue
            o, _, diag, cand = c.decode(self.configs[b], q[b])
            out[b] = o
            fell = diag["policy_taken"] == abi.TAKEN_DENSE
            st.heads[layer] += len(diag)
            st.fallback[layer] += fell.sum()
            st.certified[layer] += (diag["certificate"] == abi.CERTIFIED).sum()
            for h in range(self.model.n_kv_heads):
                grp = slice(h * G, (h + 1) * G)
                st.bytes_read += self._sparse_bytes(s, T, cand[grp])
                if fell[grp].any():
                    st.bytes_read += self._dense_bytes(T)
            if sample:
                od = c.dense(q[b], self.scale)[0].astype(np.float64)
                err = np.linalg.norm(o - od, axis=1)
                norm = np.linalg.norm(od, axis=1)
                st.samples.extend(zip(diag["policy_taken"].tolist(), diag["certificate"].tolist(),
                                      diag["error_bound"].tolist(), err.tolist(), norm.tolist(),
                                      [layer] * len(err)))
        return out

    def dumped(self):
        """The dump layer's last queries of the dense setting, their positions, and its keys and values."""
        qs = np.stack([q for q, _ in self.dump_q])
        return (qs, np.array([p for _, p in self.dump_q], np.int32),
                self.caches[self.dump_layer][self.reference].keys_values())

    def step(self, tokens):
        """Every setting takes its own next token (teacher forcing passes the same one);
        returns logits [settings, vocab]."""
        logits = self.model.step(np.asarray(tokens), self.position, self._attend)
        self.position += 1
        self.step_index += 1
        return logits

    def teacher_forced(self, targets, inputs, keep_last=0):
        """Decodes inputs[i] at each step and scores targets[i], against the reference
        setting; its last `keep_last` logits are kept in self.reference_logits."""
        t = time.time()
        n = len(inputs)
        B = len(self.settings)
        ref = self.reference
        self.reference_logits = []
        for i in range(n):
            logits = self.step(np.full(B, inputs[i]))
            lp = log_softmax(logits)
            p_ref = np.exp(lp[ref])
            if i >= n - keep_last:
                self.reference_logits.append(logits[ref].copy())
            for b in range(B):
                st = self.stats[b]
                st.nll.append(float(-lp[b, targets[i]]))
                st.kl.append(float((p_ref * (lp[ref] - lp[b])).sum()))
                st.top1.append(bool(lp[b].argmax() == lp[ref].argmax()))
            if (i + 1) % 32 == 0 or i + 1 == n:
                el = time.time() - t
                self.progress(f"step {i + 1}/{n}: {el:.0f} s, about {el / (i + 1) * (n - i - 1):.0f} s left")
        return time.time() - t


def compare(stats, reference):
    """Per-setting quality against the reference (dense) setting's logits."""
    kl = np.array(stats.kl)
    ppl = math.exp(float(np.mean(stats.nll)))
    ppl_ref = math.exp(float(np.mean(reference.nll)))
    tight = stats.tight()
    rel_err = [x[3] / max(x[4], 1e-30) for x in stats.samples]
    ratio = tight[:, 0] / np.maximum(tight[:, 1], 1e-30) if len(tight) else np.zeros(0)
    heads = stats.heads.sum()

    # Sampled heads whose certified bound is within tau of |o_dense|, overall and per layer.
    def certified_at(tau, layer=None):
        xs = [x for x in stats.samples if layer is None or x[5] == layer]
        ok = [x[1] == abi.CERTIFIED and x[2] <= tau * x[4] for x in xs]
        return float(np.mean(ok)) if ok else None

    layers = sorted({x[5] for x in stats.samples})
    return {
        "perplexity": ppl,
        "perplexity_dense": ppl_ref,
        "perplexity_change": ppl / ppl_ref - 1.0,
        "top1_agreement": float(np.mean(stats.top1)),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "bytes_ratio": stats.bytes_read / stats.bytes_dense if stats.bytes_dense else 1.0,
        "fallback_share": float(stats.fallback.sum() / heads) if heads else 0.0,
        "certified_share": float(stats.certified.sum() / heads) if heads else 0.0,
        "fallback_per_layer": [float(f / h) if h else None for f, h in zip(stats.fallback, stats.heads)],
        "certified_rel": {f"{tau:g}": certified_at(tau) for tau in CERTIFY_AT},
        # Sampled certified heads farther from library dense than their bound, beyond the
        # tests' slack for the rounding of the check (1e-6 + 1e-5 |o_dense|).
        "violations": int(sum(x[1] == abi.CERTIFIED and x[3] > x[2] + 1e-6 + 1e-5 * x[4] for x in stats.samples)),
        "certified_rel_per_layer": {f"{tau:g}": {int(l): certified_at(tau, l) for l in layers} for tau in CERTIFY_AT},
        "rel_err_median": float(np.median(rel_err)) if rel_err else 0.0,
        "rel_err_p90": float(np.quantile(rel_err, 0.9)) if rel_err else 0.0,
        "tightness_median": float(np.median(ratio)) if len(ratio) else None,
        "tightness_samples": int(len(ratio)),
        "tight_samples": tight[:: max(1, len(tight) // 400)].tolist(),
    }
