"""GGUF test fixtures written by llama.cpp's own converter (convert_hf_to_gguf.py), so that
saescope's GGUF loaders are checked against files llama.cpp itself writes rather than against
files imitating it. Converts the tiny Hugging Face checkpoints of make_family_fixtures.py,
tests/fixtures/hf/{qwen3,qwen2,gemma2,gemma3,neox,mistral}/, with `--outtype f32` into
tests/fixtures/gguf/<name>.gguf, then reads every file back with gguf-py's GGUFReader, prints
its metadata and tensors, and checks each tensor against the safetensors it came from.

Run it with scripts/gguf-fixtures, which fetches the converter (the llama.cpp vendored in a pinned
llama-cpp-python source distribution, with its own gguf-py) into $SAESCOPE_CACHE, passes its
folder as LLAMA_CPP_DIR, and puts the transformers the converter pins (4.57.6) first on
PYTHONPATH; by hand, from activations/ (optionally naming the fixtures to convert):

    PYTHONPATH=~/.cache/saescope/gguf-convert-site LLAMA_CPP_DIR=.../vendor/llama.cpp \\
        ~/.cache/saescope/model-ref-venv/bin/python reference/make_gguf_fixtures.py [name...]

The configuration. The converter reads config.json through the installed transformers' AutoConfig.
config.json is copied as it is, but for one key: the converter's GPT-NeoX reads the rotary
fraction from "rotary_pct", the transformers 4 key every Pythia config on the Hub has, which
transformers 5 (which wrote the fixture) moved to rope_parameters.partial_rotary_factor. The copy
gets "rotary_pct" set from it: without it, transformers 4.57 would fill in its default (0.25, a
rotary width of 2 instead of 4) and transformers 5 drops the key, so the converter stops.

The vocabulary. The checkpoints have no tokenizer files, and the converter needs one. Each one is
converted from a temporary copy of its folder (config.json and model.safetensors) to which this
script adds a made-up 128-token tokenizer of the kind the family ships:
  - gemma2, gemma3, mistral: tokenizer.model, a SentencePiece BPE model trained here on a fixed
    text (ids as the configs have them: Gemma <pad>=0 </s>=1 <s>=2 <unk>=3, Mistral <unk>=0 <s>=1
    </s>=2). The converter reads it through its SentencePiece path; nothing is patched.
  - qwen3, qwen2, neox: tokenizer.json (+ tokenizer_config.json), a byte-level BPE whose merges
    are learnt here on the same text, "<|endoftext|>" as its one special token.
    The converter's GPT-2 path hashes how the tokenizer splits a fixed text and names the
    pre-tokenizer (tokenizer.ggml.pre) only for hashes of tokenizers it knows, raising
    NotImplementedError for any other. A made-up tokenizer cannot match a known hash, so this
    script replaces that one method, conversion.base.TextModel.get_vocab_base_pre, with one
    returning the name the converter writes for the family's real tokenizer: "qwen2" for Qwen2
    and Qwen3, "olmo" for GPT-NeoX (Pythia's GPT-NeoX-20B tokenizer hashes to both "mpt" and
    "olmo" in the converter's table and the later one wins). Only tokenizer.ggml.pre depends on
    the patch; nothing of how tensors or model metadata are written is touched.

Everything is deterministic (fixed text, single-threaded SentencePiece training, folder named as
the fixture, so general.name is the fixture's name): a second run writes the same bytes.
"""
import collections
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

LLAMA_CPP_DIR = Path(os.environ["LLAMA_CPP_DIR"])
sys.path.insert(0, str(LLAMA_CPP_DIR / "gguf-py"))
sys.path.insert(0, str(LLAMA_CPP_DIR))

import gguf  # noqa: E402  (the converter's own gguf-py)
import convert_hf_to_gguf  # noqa: E402
import conversion.base  # noqa: E402

HF = Path("tests/fixtures/hf")
OUT = Path("tests/fixtures/gguf")

# (fixture, tokenizer kind, pre-tokenizer name the converter writes for the family's real tokenizer)
FIXTURES = [
    ("qwen3", "bpe", "qwen2"),
    ("qwen2", "bpe", "qwen2"),
    ("gemma2", "spm-gemma", None),
    ("gemma3", "spm-gemma", None),
    ("neox", "bpe", "olmo"),
    ("mistral", "spm-llama", None),
]

TEXT = """The quick brown fox jumps over the lazy dog. A sparse autoencoder reads the residual
stream of a language model and writes it back as a sum of a few features. Hooks are read where
the model computes them: before and after each block, the attention and the MLP outputs.
Tokens 0 to 127, layers 0 and 1, heads 4, width 32! Is it the same? It is, to the last bit.
"""


# ---------------------------------------------------------------- the made-up tokenizers


def write_sentencepiece(folder, kind):
    import sentencepiece as spm

    ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3) if kind == "spm-gemma" else \
        dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines() * 4), model_writer=model, vocab_size=128,
        model_type="bpe", character_coverage=1.0, byte_fallback=False, num_threads=1,
        hard_vocab_limit=True, minloglevel=2, **ids)
    (folder / "tokenizer.model").write_bytes(model.getvalue())


def bytes_to_unicode():
    """GPT-2's byte-to-printable-character map (what byte-level BPE vocabularies are spelt in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_byte_level_bpe(folder, special_first):
    """127 BPE tokens (the characters of TEXT, then merges learnt greedily on it, ties broken by
    the pair's spelling) and "<|endoftext|>", first (GPT-NeoX) or last (Qwen)."""
    enc = bytes_to_unicode()
    words = collections.Counter(
        "".join(enc[b] for b in w.encode()) for w in re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", TEXT))
    alphabet = sorted({c for w in words for c in w})
    vocab = list(alphabet)
    merges = []
    split = {w: list(w) for w in words}
    while len(vocab) < 127:
        pairs = collections.Counter()
        for w, n in words.items():
            s = split[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append([a, b])
        vocab.append(a + b)
        for w, s in split.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            split[w] = out
    special = "<|endoftext|>"
    tokens = [special] + vocab if special_first else vocab + [special]
    assert len(set(tokens)) == len(tokens) == 128
    ids = {t: i for i, t in enumerate(tokens)}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": ids[special], "content": special, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": ids, "merges": merges},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=1))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": special,
              "bos_token": special if special_first else None, "add_prefix_space": False,
              "model_max_length": 64}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


# ---------------------------------------------------------------- conversion

PRE = {"name": None}


def known_pre_tokenizer(self, tokenizer):
    """Stands in for TextModel.get_vocab_base_pre (see the module docstring)."""
    assert PRE["name"] is not None
    return PRE["name"]


conversion.base.TextModel.get_vocab_base_pre = known_pre_tokenizer


def convert(name, kind, pre, work):
    folder = work / name  # the converter names the model (general.name) after its folder
    folder.mkdir()
    shutil.copyfile(HF / name / "model.safetensors", folder / "model.safetensors")
    config = json.loads((HF / name / "config.json").read_text())
    if config["model_type"] == "gpt_neox" and "rotary_pct" not in config:
        # The converter's GPT-NeoX reads the transformers 4 key (which every Pythia config on
        # the Hub has); transformers 5 writes it as rope_parameters.partial_rotary_factor.
        config["rotary_pct"] = config["rope_parameters"]["partial_rotary_factor"]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if kind.startswith("spm"):
        write_sentencepiece(folder, kind)
    else:
        write_byte_level_bpe(folder, special_first=(name == "neox"))
    PRE["name"] = pre
    out = OUT / f"{name}.gguf"
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(folder), "--outtype", "f32", "--outfile", str(out)]
    try:
        convert_hf_to_gguf.main()
    finally:
        sys.argv = argv
        PRE["name"] = None
    return out


# ---------------------------------------------------------------- reading back and checking


def field_value(field):
    t = field.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        values = [field.contents(i) for i in range(len(field.data))]
        if len(values) > 16:
            return f"[{len(values)} x {field.types[-1].name}] {values[:6]!r}..."
        return values
    return field.contents()


def describe(path):
    reader = gguf.GGUFReader(path)
    print(f"== {path} ({os.path.getsize(path)} bytes, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]})")
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        print(f"  {key} = {field_value(field)!r}")
    for t in reader.tensors:
        print(f"  tensor {t.name:28s} ne={list(map(int, t.shape))} {t.tensor_type.name}")
    return reader


def llama_permute(w, n_head):
    """HF's Q/K rows (per head: the first halves of the rotated pairs, then the second halves)
    to llama.cpp's interleaved pairs: row 2i of a head is HF row i, row 2i+1 is HF row i + d/2."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def neox_qkv_blocks(w, n_head):
    """GPT-NeoX's fused rows, head by head [q0;k0;v0;q1;k1;v1;...], to blocks [Q;K;V]."""
    return w.reshape(n_head, 3, -1, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


def check(name, reader):
    """Finds, for each HF tensor, the GGUF tensor it became and which transform makes them equal
    (exactly: bf16 widened to f32 is exact, and so is adding 1 to a bf16 norm weight in f32)."""
    config = json.loads((HF / name / "config.json").read_text())
    hf = {k: v.float().numpy() for k, v in load_file(HF / name / "model.safetensors").items()}
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items()
                if n == reader.fields["general.architecture"].contents())
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    tensors = {t.name: t for t in reader.tensors}
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    found = collections.Counter()
    used = set()
    for key, w in sorted(hf.items()):
        gname = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gname not in tensors:
            found[f"{key.split('.', 3)[-1] if 'layers' in key else key} -> (not written)"] += 1
            continue
        used.add(gname)
        t = tensors[gname]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, gname
        g = np.asarray(t.data).reshape(w.shape)
        assert list(map(int, t.shape)) == list(reversed(w.shape)), (gname, t.shape, w.shape)
        candidates = {"identity": w, "+1": w + 1}
        if "q_proj" in key:
            candidates["llama permute"] = llama_permute(w, n_head)
        if "k_proj" in key:
            candidates["llama permute"] = llama_permute(w, n_kv)
        if "query_key_value" in key:
            candidates["[Q;K;V] blocks"] = neox_qkv_blocks(w, n_head)
        match = [c for c, v in candidates.items() if np.array_equal(g, v)]
        assert len(match) >= 1, f"{name}: {key} -> {gname} matches no known transform"
        label = re.sub(r"layers\.\d+\.", "layers.N.", key)
        found[f"{label} -> {re.sub(r'blk.[0-9]+.', 'blk.N.', gname)}: {match[0]}"] += 1
    extra = sorted(set(tensors) - used)
    for line, n in found.items():
        print(f"  check {line}" + (f" (x{n})" if n > 1 else ""))
    if extra:
        print(f"  GGUF tensors from no HF tensor: {extra}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as work:
        for name, kind, pre in FIXTURES:
            if only and name not in only:
                continue
            convert(name, kind, pre, Path(work))
    for name, _, _ in FIXTURES:
        if only and name not in only:
            continue
        path = OUT / f"{name}.gguf"
        reader = describe(path)
        check(name, reader)


if __name__ == "__main__":
    main()
