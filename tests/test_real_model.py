"""A few real decode steps of SmolLM2-135M through the library's C ABI.

The model runs in numpy (quality/vashista_quality/model.py) with every layer's attention
done by the kernel library libvashista_smollm2_test.so: a 1024-token prefix of a real text,
then teacher-forced steps under library dense, sparse with policy none and sparse with
policy dense. Checked against the runner's reference, the same model with float64 numpy
attention over the same bf16 keys and values:
  - library dense gives the reference's logits (|Δ| <= 5e-4 on logits of magnitude ~20;
    3.7e-5 measured, f32 attention against f64) and the same next token;
  - every certified head's sparse output lies within its bound of dense (plus 1e-5 |o|,
    the f32 dense kernel's own error);
  - policy dense answers each head within its tolerance or densely;
  - a layer dump round-trips (the shipped quality/examples/ one was made here) and
    `vashista diagnose` reads it; a truncated dump is refused and writes nothing.
"""
import os
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "quality"))

from vashista_quality import abi, diagnose, dump, model as models  # noqa: E402
from vashista_quality.text import real_text  # noqa: E402
from vashista_quality.runner import Session, Setting  # noqa: E402

LIB = os.environ.get("VASHISTA_TEST_LIB", str(ROOT / "build/lib/libvashista_smollm2_test.so"))
# Where the test leaves its layer dump (quality/examples/ ships one made here).
OUT = Path(os.environ.get("VASHISTA_TEST_OUT", tempfile.gettempdir()))
EXAMPLE = ROOT / "quality/examples/smollm2_layer15.safetensors"
PREFIX, STEPS = 1024, 6
SPARSE = dict(top_pages=16, top_tokens=64, sink_pages=1, local_pages=2)
TOL = 0.5


class RealModel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = models.load("smollm2")
        cls.lib = abi.Library(LIB)
        cls.tokens = cls.model.tokenize(real_text())[:PREFIX + STEPS + 1]
        cls.settings = [Setting("dense", dense=True), Setting("sparse", **SPARSE),
                        Setting("sparse, policy dense", policy="dense", tolerance=TOL, **SPARSE)]
        cls.session = Session(cls.model, cls.lib, cls.settings, cls.tokens[:PREFIX], STEPS, sample_every=1,
                              dump_layer=15, dump_queries=4)
        cls.logits = []
        for i in range(STEPS):
            cls.logits.append(cls.session.step(np.full(3, cls.tokens[PREFIX + i])))

    def test_dense_matches_reference(self):
        m = self.model
        cache = {l: self.session.caches[l][0].keys_values() for l in range(m.n_layers)}

        def attend(layer, q, k, v):  # numpy f64 over what the library stored (bf16)
            pos = self.current
            kk, vv = cache[layer][0][:pos + 1], cache[layer][1][:pos + 1]
            return models.dense_attention(q, kk[None], vv[None], m.attn_scale)

        for i in range(STEPS):
            self.current = PREFIX + i
            ref = m.step(np.array([self.tokens[PREFIX + i]]), PREFIX + i, attend)[0]
            got = self.logits[i][0]
            print(f"  step {i}: library dense against the numpy reference: max |dlogit| {np.abs(got - ref).max():.2e}")
            self.assertLessEqual(np.abs(got - ref).max(), 5e-4, f"step {i}")
            self.assertEqual(int(got.argmax()), int(ref.argmax()), f"step {i}")

    def test_certified_heads_within_bound(self):
        st = self.session.stats[1]
        self.assertEqual(len(st.samples), st.heads.sum(), "every head of every step is sampled")
        t = st.tight()
        self.assertEqual(len(t), st.certified.sum())
        self.assertGreater(len(t), 0, "bound routing with softmax certifies heads")
        bound, err, norm = t[:, 0], t[:, 1], t[:, 2]
        print(f"  {len(t)} certified heads: bound / true error median {np.median(bound / np.maximum(err, 1e-30)):.0f}, "
              f"worst (err - bound) / |o| {np.max((err - bound) / norm):.2e}")
        self.assertTrue(np.all(err <= bound + 1e-5 * norm), f"worst err - bound {np.max(err - bound):.3g}")

    def test_policy_dense_keeps_tolerance(self):
        st = self.session.stats[2]
        self.assertEqual(len(st.samples), st.heads.sum())
        for taken, cert, bound, err, norm, _layer in st.samples:
            if taken == abi.TAKEN_DENSE:  # library dense's output
                self.assertLessEqual(err, 1e-6 * norm)
            else:
                self.assertEqual(cert, abi.CERTIFIED)
                self.assertLessEqual(bound, TOL)
                self.assertLessEqual(err, bound + 1e-5 * norm)

    def test_dump_and_diagnose(self):
        qs, pos, (k, v) = self.session.dumped()
        self.assertEqual(qs.shape, (4, 9, 64))
        OUT.mkdir(parents=True, exist_ok=True)
        made = OUT / EXAMPLE.name
        dump.save(made, qs, k, v, pos, {"model": "smollm2", "layer": 15, "scale": self.model.attn_scale,
                                        "text": "Debian license texts"}, dtype="BF16")
        for path in (made, EXAMPLE):
            q2, k2, v2, p2, meta = dump.load(path)
            self.assertEqual(q2.shape, (4, 9, 64), path)
            self.assertEqual(meta["layer"], "15")
        self.assertTrue(np.array_equal(dump.load(made)[1], k))  # k already bf16: exact
        with tempfile.TemporaryDirectory() as d:
            path = made
            report = Path(d) / "report.json"
            rc = diagnose.main([str(path), "--lib", LIB, "--top-pages", "16", "--top-tokens", "64",
                                "--json", str(report)])
            self.assertEqual(rc, 0)
            import json
            heads = json.loads(report.read_text())["heads"]
            self.assertEqual(len(heads), 9)
            for h in heads:
                self.assertIn(h["recommendation"], ("sparse", "widen", "dense"))
                self.assertLessEqual(h["mass_captured"]["min"], 1.0 + 1e-9)
            # Compact (int8) summaries: a looser box, still a bound on every certified head.
            rc = diagnose.main([str(path), "--lib", LIB, "--top-pages", "16", "--top-tokens", "64",
                                "--summary-dtype", "int8", "--json", str(report)])
            self.assertEqual(rc, 0)
            compact = json.loads(report.read_text())
            self.assertEqual(compact["settings"]["summary_dtype"], "int8")
            for h in compact["heads"]:
                if h["certified_share"] == 1.0:
                    self.assertLessEqual(h["error_rel"]["max"], h["bound_rel"]["max"] + 1e-5, h)
            blob = path.read_bytes()
            bad = Path(d) / "truncated.safetensors"
            bad.write_bytes(blob[: len(blob) // 2])
            with self.assertRaisesRegex(dump.DumpError, "truncated"):
                dump.load(bad)
            out = Path(d) / "bad.json"
            self.assertEqual(diagnose.main([str(bad), "--lib", LIB, "--json", str(out)]), 2)
            self.assertFalse(out.exists())


if __name__ == "__main__":
    unittest.main(verbosity=2)
