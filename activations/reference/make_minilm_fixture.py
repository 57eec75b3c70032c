"""Reference sentence embeddings of the bundled all-MiniLM-L6-v2, computed by sentence-transformers
itself, for testing saescope's own BERT encoder (tokenization, forward pass, mean pooling over the
attention mask, L2 normalisation). Writes tests/fixtures/minilm/reference.json: the texts, their
token ids as the model's tokenizer gives them, and their 384-wide unit embeddings. Run from the
activations/ directory with the model directory as the argument (PyPI's torch imports only with
its NVIDIA dependencies, about 4 GB, even on a CPU):

    python3 -m venv /tmp/st && /tmp/st/bin/pip install torch==2.11.0 sentence-transformers
    /tmp/st/bin/python reference/make_minilm_fixture.py ~/.cache/saescope/assets/all-minilm-l6-v2
"""
import json
import os
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

model_dir = sys.argv[1]
TEXTS = [
    "Instruct: Retrieve sentences that could be related to the explanation.\nQuery: plural nouns",
    "The cats sat on the mats, and the dogs ran after them.",
    "Mr. Smith's committee met on Tuesday; it voted 7-2 against the $3.5 million plan.",
    "A",
    "UNDERSTANDING transformers' attention—naïve résumé, café, 東京!",
    " the word \"library\" and other places to read books, like the public library downtown",
    "He said that he would go to the store tomorrow morning before work, if the weather held up, "
    "and buy bread, milk, eggs, and a newspaper for his grandmother, who lived alone on the hill.",
]

model = SentenceTransformer(model_dir, device="cpu")
with torch.no_grad():
    vectors = model.encode(TEXTS, batch_size=3, convert_to_numpy=True)
ids = [model.tokenizer(t)["input_ids"] for t in TEXTS]
out = {
    "source": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
    "max_seq_length": model.max_seq_length,
    "texts": TEXTS,
    "token_ids": ids,
    "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
}
path = os.path.join("tests", "fixtures", "minilm", "reference.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {path}: {len(TEXTS)} texts, {len(out['embeddings'][0])} wide")
