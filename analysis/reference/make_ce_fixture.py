"""Cross-entropy references for the splice tests, computed by transformers itself.

For each tiny checkpoint under activations/tests/fixtures/hf/{llama,gpt2} and the token ids in
its reference.json, writes analysis/tests/fixtures/ce.json with
  ce_clean      transformers' own loss (`labels=ids`: logits at t scored against the token at
                t + 1, averaged over every prediction of the batch)
  ce_ablated    the same with block 0's output (blocks.0.hook_resid_post) set to zero at every
                position, by a forward hook on the decoder layer
so saescope's splice can be held to a computation it shares no code with.

Run from the repository root with the venv scripts/family-fixtures makes:
    $SAESCOPE_CACHE/model-ref-venv/bin/python analysis/reference/make_ce_fixture.py
"""
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

FIXTURES = Path("activations/tests/fixtures/hf")
OUT = Path("analysis/tests/fixtures/ce.json")


def zero_output(module, args, output):
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]),) + tuple(output[1:])
    return torch.zeros_like(output)


def main() -> None:
    torch.set_num_threads(1)
    result = {}
    for name in ["llama", "gpt2"]:
        ckpt = FIXTURES / name
        ids = torch.tensor(json.loads((ckpt / "reference.json").read_text())["ids"])
        model = AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32, attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            clean = model(ids, labels=ids).loss.item()
            layers = model.model.layers if name == "llama" else model.transformer.h
            handle = layers[0].register_forward_hook(zero_output)
            ablated = model(ids, labels=ids).loss.item()
            handle.remove()
        result[name] = {"ids": ids.tolist(), "ce_clean": clean, "ce_ablated": ablated}
        print(f"{name}: clean {clean:.6f}, block 0 zeroed {ablated:.6f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
