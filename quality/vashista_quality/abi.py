"""The library's C ABI (runtime/include/vashista.h) from Python, through ctypes.

A kernel library built with `vashista_add_kernel_library(... SHARED)` is a shared object
exporting that ABI; `Library(path)` opens one. `LayerCache` is one attention layer's paged
KV cache as an engine would hold it: the caller owns the pages and the block table, the
library owns the summaries.
"""
import ctypes as C
import math

import numpy as np

F32, F16, BF16, I8 = 0, 1, 2, 3  # I8: summaries only
HND, NHD = 0, 1
SOLVERS = {"softmax": 0, "eg": 1, "fw": 2, "sparsemax": 3}
ROUTINGS = {"mean": 0, "bound": 1, "sketch": 2, "hier_bound": 3}
GROUP_ROUTINGS = {"per_head": 0, "shared": 1}
POLICIES = {"none": 0, "dense": 1, "widen": 2}
TAKEN = ("sparse", "reported", "widened", "dense")
TAKEN_DENSE = TAKEN.index("dense")
CERTIFICATES = ("certified", "mean_routing", "solver", "stale", "overflow")
CERTIFIED = CERTIFICATES.index("certified")
PAGE_SIZE = 16  # the page size of the kernel libraries these caches use


# Every struct starts with struct_size (vashista.h, ABI version 5).
ABI_VERSION = 5


class CacheDesc(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("batch", C.c_int32), ("kv_heads", C.c_int32), ("head_dim", C.c_int32),
                ("page_size", C.c_int32), ("num_pages", C.c_int32), ("max_pages", C.c_int32),
                ("kv_dtype", C.c_int), ("summary_dtype", C.c_int), ("layout", C.c_int),
                ("k_pages", C.c_void_p), ("v_pages", C.c_void_p), ("page_table", C.c_void_p),
                ("sketch_bits", C.c_int32), ("sketch_group", C.c_int32), ("super_pages", C.c_int32)]


class DecodeConfig(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("top_pages", C.c_int32), ("top_tokens", C.c_int32), ("solver", C.c_int),
                ("routing", C.c_int), ("group_routing", C.c_int), ("policy", C.c_int),
                ("tolerance", C.c_float), ("scale", C.c_float), ("solver_steps", C.c_int32),
                ("solver_eta", C.c_float), ("solver_tau", C.c_float), ("sink_pages", C.c_int32),
                ("local_pages", C.c_int32), ("relative_tolerance", C.c_int32), ("super_expand", C.c_int32)]


class HeadDiag(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("support_gap", C.c_float), ("leakage", C.c_float),
                ("error_bound", C.c_float), ("candidates", C.c_int32), ("policy_taken", C.c_int32), ("fw_gap", C.c_float),
                ("certificate", C.c_int32)]


HEAD_DIAG_DTYPE = np.dtype([("struct_size", np.uint64), ("support_gap", np.float32), ("leakage", np.float32),
                            ("error_bound", np.float32), ("candidates", np.int32),
                            ("policy_taken", np.int32), ("fw_gap", np.float32),
                            ("certificate", np.int32)], align=True)
assert HEAD_DIAG_DTYPE.itemsize == C.sizeof(HeadDiag)


class VashistaError(RuntimeError):
    pass


def _ptr(a):
    return a.ctypes.data_as(C.c_void_p) if a is not None else None


class Library:
    """An opened kernel library."""

    def __init__(self, path):
        self.path = str(path)
        self.lib = C.CDLL(self.path)
        L = self.lib
        L.vashista_cache_create.argtypes = [C.POINTER(CacheDesc), C.POINTER(C.c_void_p)]
        L.vashista_cache_destroy.argtypes = [C.c_void_p]
        L.vashista_append.argtypes = [C.c_void_p, C.c_int32, C.c_int32, C.c_int32, C.c_void_p, C.c_void_p]
        L.vashista_decode_config_default.argtypes = [C.POINTER(DecodeConfig)]
        L.vashista_decode_with_candidates.argtypes = [C.c_void_p, C.POINTER(DecodeConfig), C.c_void_p, C.c_int32,
                                                      C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p]
        L.vashista_dense.argtypes = [C.c_void_p, C.c_void_p, C.c_int32, C.c_void_p, C.c_float, C.c_void_p, C.c_void_p]
        L.vashista_abi_version.restype = C.c_uint32
        if L.vashista_abi_version() != ABI_VERSION:
            raise VashistaError(f"{self.path} has ABI version {L.vashista_abi_version()}, these bindings {ABI_VERSION}")
        L.vashista_last_error.restype = C.c_char_p
        L.vashista_status_name.restype = C.c_char_p
        L.vashista_status_name.argtypes = [C.c_int]
        L.vashista_list_variants.restype = C.c_size_t
        L.vashista_list_variants.argtypes = [C.c_char_p, C.c_size_t]

    def check(self, status, what):
        if status != 0:
            name = self.lib.vashista_status_name(status).decode()
            raise VashistaError(f"{what}: {name}: {self.lib.vashista_last_error().decode()}")

    def variants(self):
        n = self.lib.vashista_list_variants(None, 0)
        buf = C.create_string_buffer(n + 1)
        self.lib.vashista_list_variants(buf, n + 1)
        return buf.value.decode().splitlines()

    def decode_config(self, **settings):
        """vashista_decode_config_default with `settings` (fields of vashista_decode_config;
        solver, routing, group_routing and policy by name) changed."""
        c = DecodeConfig()
        self.lib.vashista_decode_config_default(C.byref(c))
        names = {"solver": SOLVERS, "routing": ROUTINGS, "group_routing": GROUP_ROUTINGS, "policy": POLICIES}
        fields = {f for f, _ in DecodeConfig._fields_}
        for k, v in settings.items():
            if k not in fields:
                raise ValueError(f"decode config has no field '{k}' (fields: {', '.join(sorted(fields))})")
            if k in names:
                if v not in names[k]:
                    raise ValueError(f"{k} '{v}' is not one of {', '.join(names[k])}")
                v = names[k][v]
            setattr(c, k, v)
        return c


def to_bf16(x):
    """float32 -> bfloat16 bits (uint16), rounding to nearest even."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


class PagePool:
    """K and V pages in bf16, HND ([page][kv_heads][page_size][head_dim]), which several
    caches may share: pages a caller gives identical contents (a common prefix) serve them
    all. Callers hand out page ids."""

    def __init__(self, num_pages, kv_heads, head_dim, page_size=PAGE_SIZE):
        shape = (num_pages, kv_heads, page_size, head_dim)
        self.k = np.zeros(shape, np.uint16)
        self.v = np.zeros(shape, np.uint16)
        self.num_pages, self.kv_heads, self.head_dim, self.page_size = num_pages, kv_heads, head_dim, page_size


class LayerCache:
    """One sequence's cache for one layer: a block table over a PagePool, and the
    library's summaries of it in summary_dtype (BF16, or I8 for compact summaries), and a
    token sketch of sketch_bits, 0 for none, in groups of sketch_group channels, for sketch
    routing."""

    def __init__(self, lib, pool, pages, sketch_bits=0, sketch_group=16, summary_dtype=BF16):
        self.lib, self.pool = lib, pool
        self.page_table = np.ascontiguousarray(pages, dtype=np.int32).reshape(1, -1)
        d = CacheDesc(struct_size=C.sizeof(CacheDesc), batch=1, kv_heads=pool.kv_heads, head_dim=pool.head_dim,
                      page_size=pool.page_size,
                      num_pages=pool.num_pages, max_pages=self.page_table.shape[1], kv_dtype=BF16,
                      summary_dtype=summary_dtype, layout=HND, k_pages=_ptr(pool.k), v_pages=_ptr(pool.v),
                      page_table=_ptr(self.page_table), sketch_bits=sketch_bits,
                      sketch_group=sketch_group if sketch_bits else 0)
        self.handle = C.c_void_p()
        lib.check(lib.lib.vashista_cache_create(C.byref(d), C.byref(self.handle)), "vashista_cache_create")
        self.tokens = 0

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.lib.vashista_cache_destroy(self.handle)
            self.handle = None

    def append(self, k, v, start=None):
        """k, v: float32 [count, kv_heads, head_dim], written at token `start` (default: after
        the tokens so far; an earlier start rewrites from there, and the cache then ends at
        start + count)."""
        start = self.tokens if start is None else start
        kb, vb = to_bf16(k), to_bf16(v)
        self.lib.check(self.lib.lib.vashista_append(self.handle, 0, start, kb.shape[0], _ptr(kb), _ptr(vb)),
                       "vashista_append")
        self.tokens = start + kb.shape[0]

    def keys_values(self):
        """The stored (bf16-rounded) keys and values as float32 [tokens, kv_heads, head_dim]."""
        p, s = self.page_table[0], self.pool.page_size
        n = self.tokens
        pages = p[: (n + s - 1) // s]
        k = from_bf16(self.pool.k[pages]).transpose(0, 2, 1, 3).reshape(-1, self.pool.kv_heads, self.pool.head_dim)
        v = from_bf16(self.pool.v[pages]).transpose(0, 2, 1, 3).reshape(-1, self.pool.kv_heads, self.pool.head_dim)
        return k[:n], v[:n]

    def decode(self, config, q, seq_len=None):
        """q: float32 [q_heads, head_dim], attending to the first seq_len tokens (default
        all appended). Returns (out [q_heads, head_dim], lse [q_heads],
        diag [q_heads] of HEAD_DIAG_DTYPE, candidates [q_heads, top_tokens])."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        h = q.shape[0]
        out = np.empty_like(q)
        lse = np.empty(h, np.float32)
        diag = np.empty(h, HEAD_DIAG_DTYPE)
        cand = np.empty((h, config.top_tokens), np.int32)
        seq = np.array([self.tokens if seq_len is None else seq_len], np.int32)
        self.lib.check(self.lib.lib.vashista_decode_with_candidates(
            self.handle, C.byref(config), _ptr(q), h, _ptr(seq), _ptr(out), _ptr(lse), _ptr(diag), _ptr(cand)),
            "vashista_decode")
        return out, lse, diag, cand

    def dense(self, q, scale=0.0, seq_len=None):
        q = np.ascontiguousarray(q, dtype=np.float32)
        out = np.empty_like(q)
        lse = np.empty(q.shape[0], np.float32)
        seq = np.array([self.tokens if seq_len is None else seq_len], np.int32)
        self.lib.check(self.lib.lib.vashista_dense(self.handle, _ptr(q), q.shape[0], _ptr(seq), scale, _ptr(out),
                                                   _ptr(lse)), "vashista_dense")
        return out, lse


def pages_for(tokens, page_size=PAGE_SIZE):
    return math.ceil(tokens / page_size)
