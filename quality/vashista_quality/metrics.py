"""Comparing next-token distributions."""
import numpy as np

# Logits against llama.cpp on the same quantized weights. llama.cpp rounds matmul inputs to
# 8 bits, which moves logits by ~0.15 on average, so near-ties (leads of < 0.25 logit were
# seen) can flip: top-1 must agree at 90% of positions, and at every position where
# llama.cpp's top token leads the next by more than DECISIVE logits.
TOL_QUANT = {"top1": 0.90, "decisive": 1.0, "kl": 0.02, "rel": 0.15}
# Against llama.cpp on float32 weights (f16 KV cache, float32 matmuls).
TOL_F32 = {"top1": 0.98, "decisive": 1.0, "kl": 1e-4, "rel": 5e-3}
DECISIVE = 0.5


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def agreement(ours, ref):
    """Agreement figures between two logit arrays [n, vocab] (ref taken as the truth)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    d = np.abs(ours - ref)
    lp, lq = log_softmax(ref), log_softmax(ours)
    kl = float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())
    agree = ours.argmax(1) == ref.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > DECISIVE
    return {"max": float(d.max()), "mean": float(d.mean()),
            "rel": float(d.max() / np.abs(ref).max()), "top1": float(agree.mean()),
            "decisive": float(agree[decisive].mean()) if decisive.any() else 1.0,
            "n_decisive": int(decisive.sum()), "kl": kl}


def within(figures, tol):
    return (figures["top1"] >= tol["top1"] and figures["decisive"] >= tol["decisive"]
            and figures["kl"] <= tol["kl"] and figures["rel"] <= tol["rel"])
