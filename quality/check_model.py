"""Check the numpy forward passes (vashista_quality.model) against llama.cpp.

    python quality/check_model.py [--model smollm2|gemma3|all] [--tokens N] [--f32-reference] [--timing]

For each model: tokenizes license texts from /usr/share/common-licenses, runs `prefill` on the
first N tokens, compares the last 64 positions' logits with llama.cpp's on the same tokens, and
checks that one `step` (with `dense_attention` as the attention) reproduces prefill's logits
for the last token. `--f32-reference` also compares with llama.cpp running a float32 copy of
the dequantized weights, which takes llama.cpp's 8-bit activation quantization out of the
comparison. Exits 1 if any figure is outside its tolerance.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from vashista_quality import llama_reference, model as model_mod  # noqa: E402
from vashista_quality.metrics import DECISIVE, TOL_F32, TOL_QUANT, agreement as compare, within  # noqa: E402
from vashista_quality.text import real_text as license_text  # noqa: E402

# step() against prefill() in this implementation.
TOL_STEP_REL = 1e-4


def report(tag, figures, tol):
    ok = within(figures, tol)
    print(f"  {tag}: max|dlogit| {figures['max']:.4f}  mean|dlogit| {figures['mean']:.4f}  "
          f"relative {figures['rel']:.2e}  top-1 {figures['top1']:.3f} "
          f"(lead > {DECISIVE}: {figures['decisive']:.3f} of {figures['n_decisive']})  "
          f"KL(llama.cpp||numpy) {figures['kl']:.2e}\n    [{'ok' if ok else 'FAIL'}: top-1 >= "
          f"{tol['top1']}, top-1 where decisive >= {tol['decisive']}, KL <= {tol['kl']:g}, "
          f"relative <= {tol['rel']:g}]")
    return ok


def dense_attend(model, batch, capacity):
    """An `attend` for Model.step that keeps a float32 cache per layer and attends densely."""
    caches = [[np.zeros((batch, capacity, model.n_kv_heads, model.head_dim), np.float32),
               np.zeros((batch, capacity, model.n_kv_heads, model.value_dim), np.float32)]
              for _ in range(model.n_layers)]
    length = [0] * model.n_layers

    def attend(layer, q, k, v):
        n = length[layer]
        caches[layer][0][:, n] = k
        caches[layer][1][:, n] = v
        length[layer] = n + 1
        return model_mod.dense_attention(q, caches[layer][0][:, :n + 1], caches[layer][1][:, :n + 1],
                                         model.attn_scale, model.window(layer))

    def fill(kv):
        for layer, (k, v) in enumerate(kv):
            caches[layer][0][:, :len(k)] = k
            caches[layer][1][:, :len(v)] = v
            length[layer] = len(k)

    return attend, fill


def write_f32_copy(src, dst):
    """Write `src` with every tensor dequantized to float32 (same metadata) to `dst`."""
    import gguf
    from gguf.quants import dequantize
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.fields["general.architecture"].contents(), use_temp_file=False)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        value = 0 if key == "general.file_type" else field.contents()
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, dequantize(t.data, t.tensor_type).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def check(name, n_tokens, n_logits, chunk, f32_reference, path=None):
    print(f"{name}:")
    t0 = time.perf_counter()
    m = model_mod.load(name, path)
    print(f"  loaded {m.path} in {time.perf_counter() - t0:.1f}s: {m.n_layers} layers, "
          f"{m.n_heads}/{m.n_kv_heads} heads of {m.head_dim}, vocab {m.vocab_size}, "
          f"attn_scale {m.attn_scale:.5f}, windows {sorted({str(m.window(i)) for i in range(m.n_layers)})}")
    tokens = []
    chars = 8 * n_tokens
    while len(tokens) < n_tokens:
        text = license_text(chars)
        tokens = m.tokenize(text, bos=True)
        if len(text) < chars:
            break
        chars *= 2
    if len(tokens) < n_tokens:
        raise SystemExit(f"only {len(tokens)} tokens of text available")
    tokens = tokens[:n_tokens]
    n_logits = min(n_logits, n_tokens)

    t0 = time.perf_counter()
    kv, ours = m.prefill(tokens, n_logits=n_logits, chunk=chunk)
    t_prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = llama_reference.logits(m.path, tokens, n_logits)
    t_ref = time.perf_counter() - t0
    print(f"  {n_tokens} tokens, last {n_logits} logits; numpy prefill {t_prefill:.1f}s, "
          f"llama.cpp {t_ref:.1f}s")
    ok = report("vs llama.cpp (same weights)", compare(ours, ref), TOL_QUANT)

    if f32_reference:
        with tempfile.TemporaryDirectory() as tmp:
            f32_path = os.path.join(tmp, "f32.gguf")
            write_f32_copy(m.path, f32_path)
            ref32 = llama_reference.logits(f32_path, tokens, n_logits)
        ok &= report("vs llama.cpp (float32 weights)", compare(ours, ref32), TOL_F32)

    batch = 2
    attend, fill = dense_attend(m, batch, n_tokens)
    fill([(k[:n_tokens - 1], v[:n_tokens - 1]) for k, v in kv])
    stepped = m.step(np.full(batch, tokens[-1]), n_tokens - 1, attend)
    d = np.abs(stepped - ours[-1][None]).max()
    rel = float(d / np.abs(ours[-1]).max())
    step_ok = rel <= TOL_STEP_REL and np.array_equal(stepped[0], stepped[1])
    print(f"  step vs prefill at position {n_tokens - 1} (B={batch}): max|dlogit| {d:.2e}, "
          f"relative {rel:.2e}  [{'ok' if step_ok else 'FAIL'}: relative <= {TOL_STEP_REL:g}, "
          f"rows of the batch equal]")
    return ok and step_ok


def timing(name, n_tokens, path=None):
    m = model_mod.load(name, path)
    tokens = m.tokenize(license_text(8 * n_tokens))
    while len(tokens) < n_tokens:
        tokens = tokens + tokens[1:]
    tokens = tokens[:n_tokens]
    t0 = time.perf_counter()
    kv, _ = m.prefill(tokens)
    print(f"{name}: prefill of {n_tokens} tokens {time.perf_counter() - t0:.1f}s")
    for batch in (1, 16):
        attend, fill = dense_attend(m, batch, n_tokens + 4)
        fill(kv)
        toks = np.full(batch, tokens[-1])
        m.step(toks, n_tokens, attend)
        t0 = time.perf_counter()
        for i in range(3):
            m.step(toks, n_tokens + 1 + i, attend)
        per = (time.perf_counter() - t0) / 3
        print(f"{name}: step at context {n_tokens}, B={batch}: {per * 1e3:.0f} ms "
              f"(dense_attention included)")
        t0 = time.perf_counter()
        passthrough = lambda layer, q, k, v: np.repeat(v, m.n_heads // m.n_kv_heads, axis=1)
        for i in range(3):
            m.step(toks, n_tokens, passthrough)
        per = (time.perf_counter() - t0) / 3
        print(f"{name}: step without attention, B={batch}: {per * 1e3:.0f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["smollm2", "gemma3", "all"], default="all")
    ap.add_argument("--path", help="GGUF file to use instead of the model's default")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--logits", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=200, help="prefill chunk (tokens)")
    ap.add_argument("--f32-reference", action="store_true")
    ap.add_argument("--timing", type=int, metavar="T", default=0,
                    help="instead of checking, time prefill of T tokens and single steps")
    args = ap.parse_args()
    names = ["smollm2", "gemma3"] if args.model == "all" else [args.model]
    if args.path and len(names) > 1:
        ap.error("--path needs a single --model")
    if args.timing:
        for name in names:
            timing(name, args.timing, args.path)
        return 0
    ok = True
    for name in names:
        ok &= check(name, args.tokens, args.logits, args.chunk, args.f32_reference, args.path)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
