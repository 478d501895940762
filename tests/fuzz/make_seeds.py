#!/usr/bin/env python3
"""Writes the seed inputs of fuzz_abi (tests/fuzz/seeds/*.bin): hand-made call sequences in
fuzz_abi.cpp's input format that get past validation (appends to every sequence, then
decodes, dense steps and plan runs the compiled kernels accept), so that the fuzzer starts
from inputs that reach the kernels and mutates from there. A byte of 0 is each field's usual,
valid choice; the comments name the thresholds of fuzz_abi.cpp's readers.

    python3 tests/fuzz/make_seeds.py [out_dir]     (default: tests/fuzz/seeds)

`make fuzz` runs the seeds first and stops if none of them reaches a successful decode and
run (the format and this file drifted apart)."""
import os
import sys

APPEND, SUMMARIZE, TRUNCATE, DECODE, DENSE, PLAN, EDIT, SHARE_PREFIX, LIST_VARIANTS = range(9)


class Seed:
    def __init__(self, batch, kv_heads, num_pages, max_pages, table, kv="bf16", sketch=False, engine_loops=False,
                 int8_summaries=False, super_pages=False):
        assert len(table) == batch * max_pages
        self.b = bytearray()
        self.batch = batch
        self.max_pages = max_pages
        kv_byte = {"bf16": 0, "f32": 160, "f16": 205}[kv]
        summary_byte = 200 if int8_summaries else 0  # < 200: the KV dtype; 200..229: int8
        # the sketch byte: < 75 nothing, 75..149 super-pages of 2 pages, 150..224 an 8-bit sketch
        self.bytes(batch - 1, kv_heads - 1, 0, 0, num_pages - 1, max_pages - 1, kv_byte, summary_byte, 0,
                   150 if sketch else 75 if super_pages else 0)
        self.bytes(*table)
        self.bytes(0)  # desc: struct_size and pointers as they are
        # cache_create with the desc; bit 6: the kernels' loops on the harness's parallel-for
        self.bytes(0x40 if engine_loops else 0)

    def bytes(self, *values):
        for v in values:
            assert 0 <= v < 256, v
            self.b.append(v)

    def values(self, seed, magnitude=0):
        self.bytes(seed & 0xFF, seed >> 8, magnitude, 0)  # seed, magnitude (< 200: 1), no NaN

    def append(self, seq, count, seed=1):
        self.bytes(APPEND, seq, 0, count - 1)  # start 0: where the sequence ends
        self.values(seed)
        self.bytes(0)  # k and v given

    def summarize(self, seq, count, seed=2):
        self.bytes(SUMMARIZE, seq, 0, count - 1, 0)  # write the tokens into the pages first
        self.values(seed)

    def truncate(self, seq, new_len):
        self.bytes(TRUNCATE, seq, new_len)  # new_len = byte % (appended + 1)

    def share_prefix(self, seq, tokens):
        capacity = self.max_pages * 16
        assert 0 <= tokens <= capacity and 200 + (tokens - 200) % (capacity + 1) < 240
        self.bytes(SHARE_PREFIX, seq, 200 + (tokens - 200) % (capacity + 1))  # 200..239: byte % (capacity + 1)

    # Decode config: top_pages, top_tokens, solver, routing (< 160 bound, 160..214 sketch,
    # 215..229 mean, 230..244 hier_bound), group routing, policy (< 140 dense, 140..189 none, 190..229 widen),
    # tolerance (< 140 1e-3, 140..179 0, 180..204 1e30, 205..229 0.05), scale, solver
    # parameters, sink, local, relative_tolerance (200..239: 1), struct_size.
    def config(self, routing=0, policy=0, tolerance=0, relative=0):
        self.bytes(0, 0, 0, routing, 0, policy, tolerance, 0, 0, 0, 0, relative, 0)

    def seq_lens(self):
        self.bytes(0, *([0] * self.batch))  # not NULL; each sequence's appended tokens

    def decode(self, seed=3, candidates=True, **config):
        self.bytes(DECODE)
        self.config(**config)
        self.bytes(0)  # q_heads = 2 * kv_heads
        self.seq_lens()
        self.values(seed)
        self.bytes(4 if candidates else 0)  # lse and diag given; bit 2: with candidates

    def dense(self, seed=4):
        self.bytes(DENSE, 0)  # q_heads
        self.seq_lens()
        self.bytes(0)  # scale 0: 1/sqrt(head_dim)
        self.values(seed)
        self.bytes(0)  # q, out and lse given

    # q/out dtype bytes: < 170 f32, 170..199 bf16, 200..234 f16. Strides: None for contiguous,
    # else (head byte, seq byte): head 100..219 -> head_dim + b % 16; seq 100..199 ->
    # 2 * kv_heads * head stride + b % 16, 200..229 -> 1 + b % 8 (sequences overlap).
    def plan(self, runs, new=True, q_dtype=0, out_dtype=0, q_strides=None, out_strides=None, **config):
        self.bytes(PLAN, 128 if new else 0)
        if new:
            self.config(**config)
            self.bytes(0, q_dtype, out_dtype)
            for st in (q_strides, out_strides):
                self.bytes(0) if st is None else self.bytes(170, *st)
            self.bytes(0)  # struct_size and pointers as they are
        self.bytes(len(runs) - 1)
        for run in runs:
            # workspace byte (< 215: the size asked for), misalignment, table byte (< 180:
            # the cache's; 180..214 a copy; >= 215 a copy with an entry changed: index, value)
            self.bytes(0, run.get("misalign", 0))
            if "table_edit" in run:
                self.bytes(215, *run["table_edit"])
            else:
                self.bytes(180 if run.get("own_table") else 0)
            self.seq_lens()
            self.values(run.get("seed", 5))
            self.bytes(0)  # lse, diag, candidates, q and out given

    def list_variants(self, capacity_byte=0):  # < 128: room for all; else capacity b % (length + 2)
        self.bytes(LIST_VARIANTS, capacity_byte)

    def edit(self, *edits):  # (index, value < 220: page value % num_pages)
        self.bytes(EDIT, len(edits) - 1)
        for i, v in edits:
            self.bytes(i, v)


def seeds():
    # bf16 HND, two sequences of six pages, two KV heads: appends, every step kind, a cut.
    s = Seed(batch=2, kv_heads=2, num_pages=12, max_pages=6, table=list(range(12)))
    s.append(0, 48)
    s.append(0, 40, seed=7)
    s.append(1, 48, seed=9)
    s.decode()
    s.plan([{}, {"misalign": 3, "own_table": True}])
    s.dense()
    s.truncate(0, 70)
    s.decode(seed=11, candidates=False, policy=140)
    yield "bf16_hnd_steps", s

    # The token sketch: sketch routing under widen (no wider variant: dense), bf16 q and out
    # with padded strides, a remapped page (stale), the plan run again.
    s = Seed(batch=1, kv_heads=1, num_pages=9, max_pages=8, table=list(range(8)), sketch=True)
    s.append(0, 48)
    s.append(0, 48, seed=5)
    s.decode(routing=160, policy=190)
    s.plan([{}, {"table_edit": (2, 8)}], q_dtype=170, out_dtype=170, q_strides=(110, 120), out_strides=(105, 0),
           routing=160)
    s.edit((3, 8))
    s.decode(seed=6, routing=160)
    s.plan([{"seed": 8}], new=False)
    yield "sketch_strided", s

    # Hierarchical bounds (super-pages of 2 pages): hier_bound steps and a plan, a cut, a
    # prefix shared from the other sequence, then a remapped page (its box is stale).
    s = Seed(batch=2, kv_heads=1, num_pages=12, max_pages=6, table=list(range(12)), super_pages=True)
    s.append(0, 80)
    s.append(1, 60, seed=4)
    s.decode(routing=230, policy=140)
    s.plan([{}, {"own_table": True}], routing=230, policy=140)
    s.truncate(0, 50)
    s.decode(seed=7, routing=230)
    s.edit((6, 0), (7, 1))  # sequence 1's first two pages become sequence 0's
    s.share_prefix(1, 32)
    s.decode(seed=8, routing=230, policy=140)
    s.edit((2, 9))
    s.decode(seed=9, routing=230, policy=140)
    yield "hier_bound", s

    # The engine's own KV: written into the pages, then summarized; f16 out, policy none.
    s = Seed(batch=1, kv_heads=2, num_pages=6, max_pages=6, table=[5, 4, 3, 2, 1, 0])
    s.summarize(0, 48)
    s.summarize(0, 30, seed=12)
    s.decode(policy=140)
    s.plan([{"misalign": 63}], out_dtype=200, policy=140)
    s.truncate(0, 0)
    s.summarize(0, 20)
    s.decode()
    yield "engine_summarize", s

    # Three sequences sharing a prefix page (sequence 1 through share_prefix), one KV head, the kernels' loops on an engine's
    # parallel-for: tolerance 0 (every head dense), then 1e30 relative (every head sparse),
    # overlapping out rows between sequences, the variants listed into a short buffer.
    s = Seed(batch=3, kv_heads=1, num_pages=12, max_pages=4,
             table=[0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9], engine_loops=True)
    s.append(0, 48)
    s.share_prefix(1, 16)  # sequence 1 takes page 0 as sequence 0 summarized it
    s.append(1, 24, seed=3)
    s.append(2, 33, seed=4)
    s.decode(tolerance=140)
    s.decode(tolerance=180, relative=200)
    s.plan([{}], out_strides=(0, 202), tolerance=205)
    s.dense(seed=10)
    s.list_variants(140)
    yield "shared_prefix", s

    # Compact (int8) summaries: appends across pages shuffled in physical order, a decode in
    # every policy, a plan run with a remapped entry, a cut and a decode after it.
    s = Seed(batch=2, kv_heads=2, num_pages=12, max_pages=6, table=[7, 2, 9, 0, 11, 4, 1, 8, 3, 10, 5, 6],
             int8_summaries=True)
    s.append(0, 70)
    s.append(1, 90, seed=13)
    s.decode()
    s.decode(seed=14, policy=140)
    s.plan([{}, {"table_edit": (1, 6)}])
    s.truncate(1, 33)
    s.decode(seed=15, policy=190)
    yield "int8_summaries", s

    # f32 NHD: appends, engine writes and cuts run; decode has no kernel for it (NO_VARIANT).
    s = Seed(batch=3, kv_heads=3, num_pages=12, max_pages=4, table=list(range(12)), kv="f32")
    s.append(0, 40)
    s.append(1, 17)
    s.summarize(2, 33)
    s.truncate(1, 5)
    s.append(1, 20)
    s.decode()
    s.dense()
    yield "f32_nhd", s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
    os.makedirs(out, exist_ok=True)
    for name, s in seeds():
        with open(os.path.join(out, name + ".bin"), "wb") as f:
            f.write(bytes(s.b))
        print(f"{name}.bin: {len(s.b)} bytes")


if __name__ == "__main__":
    main()
