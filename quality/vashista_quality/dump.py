"""Layer dumps: one attention layer's queries, keys and values in safetensors format.

Tensors (row-major, dtype F32, F16 or BF16):
  q          [queries, q_heads, head_dim]   post-RoPE queries, not scaled
  k          [tokens, kv_heads, head_dim]   post-RoPE keys of positions 0 .. tokens-1
  v          [tokens, kv_heads, head_dim]
  positions  [queries] I32                  query i attends to tokens 0 .. positions[i]
Metadata (the header's "__metadata__", strings): "scale" (the softmax scale; default
1/sqrt(head_dim)), and free-form "model", "layer", "text".
"""
import json
import math
import struct

import numpy as np

from .abi import from_bf16, to_bf16

_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I32": np.dtype("<i4")}


class DumpError(ValueError):
    pass


def save(path, q, k, v, positions, metadata=None, dtype="F32"):
    """Writes a dump; dtype F32 or BF16 for q, k and v."""
    tensors = {}
    for name, a in (("q", q), ("k", k), ("v", v)):
        a = np.ascontiguousarray(a, dtype=np.float32)
        if dtype == "BF16":
            tensors[name] = ("BF16", a.shape, to_bf16(a).astype("<u2").tobytes())
        else:
            tensors[name] = ("F32", a.shape, a.astype("<f4").tobytes())
    p = np.ascontiguousarray(positions, dtype="<i4")
    tensors["positions"] = ("I32", p.shape, p.tobytes())
    header, offset = {}, 0
    for name, (dt, shape, data) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    header["__metadata__"] = {k: str(v) for k, v in (metadata or {}).items()}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, data in tensors.values():
            f.write(data)


def load(path):
    """Reads and checks a dump. Returns (q, k, v, positions, metadata) with q, k, v float32.
    Raises DumpError saying what is wrong with a malformed or truncated file."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise DumpError(f"{path}: {e.strerror}") from None
    if len(blob) < 8:
        raise DumpError(f"{path}: {len(blob)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise DumpError(f"{path}: header of {n} bytes runs past the end of the file ({len(blob)} bytes): truncated?")
    try:
        header = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DumpError(f"{path}: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise DumpError(f"{path}: header is not a JSON object")
    data = memoryview(blob)[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name in ("q", "k", "v", "positions"):
        if name not in header:
            raise DumpError(f"{path}: no tensor '{name}' (has: {', '.join(sorted(header)) or 'none'})")
        t = header[name]
        try:
            dt, shape, (a, b) = t["dtype"], [int(s) for s in t["shape"]], t["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise DumpError(f"{path}: tensor '{name}' lacks dtype, shape or data_offsets") from None
        want = ("I32",) if name == "positions" else ("F32", "F16", "BF16")
        if dt not in want:
            raise DumpError(f"{path}: tensor '{name}' has dtype {dt}; expected {' or '.join(want)}")
        size = 2 if dt in ("F16", "BF16") else 4
        if any(s < 0 for s in shape) or not (0 <= a <= b) or b - a != size * math.prod(shape):
            raise DumpError(f"{path}: tensor '{name}' of shape {shape} {dt} does not fit its offsets [{a}, {b})")
        if b > len(data):
            raise DumpError(f"{path}: tensor '{name}' ends at byte {b} of a {len(data)}-byte data section: truncated")
        raw = np.frombuffer(data[a:b], dtype=np.dtype("<u2") if dt == "BF16" else _DTYPES[dt]).reshape(shape)
        out[name] = from_bf16(raw) if dt == "BF16" else raw.astype(np.int32 if dt == "I32" else np.float32)
    q, k, v, pos = out["q"], out["k"], out["v"], out["positions"]
    if q.ndim != 3 or k.ndim != 3 or v.shape != k.shape:
        raise DumpError(f"{path}: q must be [queries, q_heads, head_dim] and k, v the same "
                        f"[tokens, kv_heads, head_dim]; got q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if q.shape[2] != k.shape[2] or k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise DumpError(f"{path}: q {list(q.shape)} does not fit k {list(k.shape)}: head_dim must agree and "
                        "q_heads be a multiple of kv_heads")
    if pos.shape != (q.shape[0],):
        raise DumpError(f"{path}: positions has shape {list(pos.shape)}; expected [{q.shape[0]}]")
    if pos.size and (pos.min() < 0 or pos.max() >= k.shape[0]):
        raise DumpError(f"{path}: positions must lie in [0, {k.shape[0]}); got {pos.min()} .. {pos.max()}")
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not np.isfinite(a).all():
            raise DumpError(f"{path}: tensor '{name}' holds NaN or Inf")
    return q, k, v, pos, meta
