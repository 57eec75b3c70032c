"""Writes tests/fixtures/dequant.json: random blocks of each GGUF tensor type that saescope reads,
with their values as dequantized by the `gguf` Python package (an implementation independent of
saescope's). Run from the activations/ directory:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install gguf numpy
    /tmp/ref/bin/python reference/make_dequant_fixture.py
"""
import json

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

rng = np.random.default_rng(20261121)


def f16_bytes(x):
    return np.array(x, dtype=np.float16).tobytes()


def blocks(ty, n):
    """n blocks of random bytes with finite, moderate scale fields."""
    size = {T.Q4_0: 18, T.Q4_1: 20, T.Q8_0: 34, T.Q4_K: 144, T.Q6_K: 210}[ty]
    out = bytearray()
    for _ in range(n):
        b = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        if ty in (T.Q4_0, T.Q8_0):
            b[0:2] = f16_bytes(rng.uniform(-0.1, 0.1))
        elif ty == T.Q4_1:
            b[0:2] = f16_bytes(rng.uniform(0.001, 0.1))
            b[2:4] = f16_bytes(rng.uniform(-1, 1))
        elif ty == T.Q4_K:
            b[0:2] = f16_bytes(rng.uniform(0.001, 0.05))
            b[2:4] = f16_bytes(rng.uniform(0.001, 0.05))
        elif ty == T.Q6_K:
            b[208:210] = f16_bytes(rng.uniform(-0.01, 0.01))
        out += b
    return bytes(out)


cases = {}
for ty, per_block in [(T.Q4_0, 32), (T.Q4_1, 32), (T.Q8_0, 32), (T.Q4_K, 256), (T.Q6_K, 256)]:
    raw = blocks(ty, 3)
    values = dequantize(np.frombuffer(raw, dtype=np.uint8), ty).astype(np.float32).ravel()
    assert values.size == 3 * per_block and np.isfinite(values).all()
    cases[ty.name] = {"bytes": raw.hex(), "values": [float(v) for v in values]}
for ty, dtype in [(T.F16, np.float16), (T.F32, np.float32)]:
    x = rng.normal(size=40).astype(dtype)
    cases[ty.name] = {"bytes": x.tobytes().hex(), "values": [float(v) for v in x.astype(np.float32)]}
x = rng.normal(size=40).astype(np.float32)
bits = (x.view(np.uint32) >> 16).astype(np.uint16)  # bf16 by truncation; the value is exact
cases["BF16"] = {"bytes": bits.tobytes().hex(), "values": [float(v) for v in (bits.astype(np.uint32) << 16).view(np.float32)]}

# Added later, from a generator of their own, so the cases above keep their bytes.
rng = np.random.default_rng(20261129)
for ty, size in [(T.Q5_0, 22), (T.Q5_1, 24)]:
    raw = bytearray(rng.integers(0, 256, 3 * size, dtype=np.uint8).tobytes())
    for at in range(0, len(raw), size):
        raw[at : at + 2] = f16_bytes(rng.uniform(0.001, 0.1))
        if ty == T.Q5_1:
            raw[at + 2 : at + 4] = f16_bytes(rng.uniform(-1, 1))
    raw = bytes(raw)
    values = dequantize(np.frombuffer(raw, dtype=np.uint8), ty).astype(np.float32).ravel()
    assert values.size == 3 * 32 and np.isfinite(values).all()
    cases[ty.name] = {"bytes": raw.hex(), "values": [float(v) for v in values]}

with open("tests/fixtures/dequant.json", "w") as f:
    json.dump(cases, f)
print({k: len(v["values"]) for k, v in cases.items()})
