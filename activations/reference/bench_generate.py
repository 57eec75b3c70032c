"""The transformers side of saescope's generation benchmark (scripts/bench-generate): Hugging Face
transformers `generate` on the same GGUF (dequantized by the `gguf` package into f32 or bf16), the
same prompt as activations/examples/bench_generate.rs with BOS first, greedy, exactly NEW_TOKENS
new tokens (EOS cannot stop it early), batch 1 and 16 (copies of the prompt, no padding), the same
thread count; one warm-up run then one measured. Decode tokens/s is measured as saescope does:
batch * (NEW_TOKENS - 1) / (total - time to first token), the first token's time taken when
generate first asks for the next-token scores (a LogitsProcessor), i.e. right after the prefill.
Prints one line per setting, then one JSON object per setting (keys as saescope's example).

    python bench_generate.py GGUF_DIR GGUF_FILE [--new-tokens N] [--threads T]
        [--dtypes f32,bf16] [--batches 1,16]
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

# The same text as PROMPT in activations/examples/bench_generate.rs.
PROMPT = (
    "The old lighthouse keeper climbed the stairs every evening, counting the "
    "steps as his father had taught him, and at the top he lit the lamp that"
)

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("file")
p.add_argument("--new-tokens", type=int, default=64)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--dtypes", default="f32,bf16")
p.add_argument("--batches", default="1,16")
a = p.parse_args()
torch.set_num_threads(a.threads)
n = a.new_tokens
assert n >= 2, "NEW_TOKENS must be at least 2 (one prefill token and one decode step)"


class FirstCall(LogitsProcessor):
    """Records when generate first asks for scores: the prefill's logits are ready."""

    def __init__(self):
        self.at = None

    def __call__(self, input_ids, scores):
        if self.at is None:
            self.at = time.perf_counter()
        return scores


tok = AutoTokenizer.from_pretrained(a.dir, gguf_file=a.file)
# The GGUF's tokenizer adds no BOS; saescope puts the GGUF's BOS (id 1 for SmolLM2) first.
bos = tok.bos_token_id if tok.bos_token_id is not None else 1
ids = [bos] + tok(PROMPT, add_special_tokens=False)["input_ids"]
rows = []
for dtype_name in a.dtypes.split(","):
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(a.dir, gguf_file=a.file, dtype=dtype).eval()
    # Tied embedding counted once, as saescope counts the GGUF's tensors.
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    for batch in [int(b) for b in a.batches.split(",")]:
        input_ids = torch.tensor([ids] * batch)
        attention_mask = torch.ones_like(input_ids)
        for measured in (False, True):
            first = FirstCall()
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=False,
                    num_beams=1,
                    min_new_tokens=n,  # EOS is masked until n tokens exist...
                    max_new_tokens=n,  # ...and generation stops at n
                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
                    logits_processor=LogitsProcessorList([first]),
                    use_cache=True,
                )
            total = time.perf_counter() - start
            assert out.shape == (batch, len(ids) + n), out.shape
        prefill = first.at - start
        decode = total - prefill
        tok_s = batch * (n - 1) / decode
        step_ms = 1e3 * decode / (n - 1)
        print(
            f"transformers {dtype_name:<4} batch {batch:>2}: prefill {len(ids)} tokens {1e3 * prefill:.0f} ms; "
            f"decode {tok_s:.1f} tokens/s ({step_ms:.1f} ms a step)",
            flush=True,
        )
        rows.append({
            "dtype": dtype_name,
            "batch": batch,
            "prompt_tokens": len(ids),
            "prefill_s": prefill,
            "decode_tokens_per_s": tok_s,
            "step_ms": step_ms,
            "weight_bytes": weight_bytes,
            "first_tokens": out[0, len(ids):len(ids) + 8].tolist(),
        })
    del model
for r in rows:
    print(json.dumps(r))
