"""Reference logits from llama.cpp (through llama_cpp_python's low-level API).

The model is loaded with `use_extra_bufts = False`: llama.cpp's extra CPU buffer types
(weight repacking, the AMX path) crashed on this machine's CPU, and the plain CPU buffers
compute the same function.
"""
import ctypes
import os
import sys
from contextlib import contextmanager

import numpy as np

import llama_cpp as L


@L.llama_log_callback
def _quiet_log(level, text, user_data):
    """Drop llama.cpp's log lines."""


@contextmanager
def _stderr_to_devnull():
    """Silence what native code writes straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextmanager
def _model(gguf_path, vocab_only=False):
    """A llama.cpp model on the CPU, without extra buffer types, freed on exit."""
    L.llama_log_set(_quiet_log, ctypes.c_void_p(0))
    with _stderr_to_devnull():
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.use_extra_bufts = False
        mparams.vocab_only = vocab_only
        model = L.llama_model_load_from_file(os.fsencode(str(gguf_path)), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {gguf_path}")
    try:
        yield model
    finally:
        L.llama_model_free(model)


def tokenize(gguf_path, text, add_special=False):
    """llama.cpp's tokenization of `text` (special-token text not parsed)."""
    data = text.encode("utf-8")
    with _model(gguf_path, vocab_only=True) as model:
        vocab = L.llama_model_get_vocab(model)
        cap = len(data) + 16
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, data, len(data), buf, cap, add_special, False)
        if n < 0:
            raise RuntimeError("llama_tokenize failed")
        return list(buf[:n])


def logits(gguf_path, tokens, n_logits=1, n_threads=2, batch=512, kv_f32=False):
    """llama.cpp's logits for the last `n_logits` positions of `tokens`: float32 [n_logits, vocab].

    The tokens are decoded in order, `batch` at a time, into one sequence at positions
    0..T-1. `kv_f32` keeps llama.cpp's KV cache in float32 instead of its default float16.
    """
    tokens = [int(t) for t in tokens]
    n = len(tokens)
    n_logits = min(int(n_logits), n)
    if n == 0 or n_logits <= 0:
        raise ValueError("need at least one token and one logit")
    with _model(gguf_path) as model:
        return _decode(model, tokens, n_logits, n_threads, batch, kv_f32)


def _decode(model, tokens, n_logits, n_threads, batch, kv_f32):
    n = len(tokens)
    ctx = None
    batch_buf = None
    try:
        cparams = L.llama_context_default_params()
        cparams.n_ctx = max(256, -(-n // 256) * 256)
        cparams.n_batch = batch
        cparams.n_ubatch = batch
        cparams.n_seq_max = 1
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        if kv_f32:
            cparams.type_k = L.GGML_TYPE_F32
            cparams.type_v = L.GGML_TYPE_F32
        with _stderr_to_devnull():
            ctx = L.llama_init_from_model(model, cparams)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context")
        batch = min(batch, L.llama_n_batch(ctx))
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        out = np.empty((n_logits, n_vocab), dtype=np.float32)
        first_out = n - n_logits
        batch_buf = L.llama_batch_init(batch, 0, 1)
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            batch_buf.n_tokens = stop - start
            for i, pos in enumerate(range(start, stop)):
                batch_buf.token[i] = tokens[pos]
                batch_buf.pos[i] = pos
                batch_buf.n_seq_id[i] = 1
                batch_buf.seq_id[i][0] = 0
                batch_buf.logits[i] = pos >= first_out
            rc = L.llama_decode(ctx, batch_buf)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} at position {start}")
            for pos in range(max(start, first_out), stop):
                row = L.llama_get_logits_ith(ctx, pos - start)
                out[pos - first_out] = np.ctypeslib.as_array(row, shape=(n_vocab,))
        return out
    finally:
        if batch_buf is not None:
            L.llama_batch_free(batch_buf)
        if ctx:
            L.llama_free(ctx)
