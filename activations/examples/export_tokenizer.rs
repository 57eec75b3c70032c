//! Writes a model's tokenizer as a Hugging Face `tokenizer.json`: for a GGUF file, the tokenizer
//! saescope rebuilds from the vocabulary and merges inside it (the same ids for any text). The
//! file holds no BOS or EOS ids: read back, they are found by name (for SmolLM2, `<|endoftext|>`
//! rather than the GGUF's `<|im_start|>` and `<|im_end|>`). `scripts/gpu-check` uses it to give a
//! safetensors checkpoint with SmolLM2-135M's shapes (made on the GPU machine by
//! `activations/reference/make_random_llama.py`) the bundled model's vocabulary.
//!   cargo run -p saescope-activations --example export_tokenizer -- MODEL.gguf OUT.json

use saescope_activations::gguf::Gguf;
use saescope_activations::tokenizer::TextTokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, out] = args.as_slice() else {
        return Err("usage: export_tokenizer MODEL.gguf OUT.json".into());
    };
    let bytes = std::fs::read(model).map_err(|e| format!("{model}: {e}"))?;
    let g = Gguf::parse(&bytes)?;
    let json = TextTokenizer::from_gguf(&g)?.to_json()?;
    let tmp = format!("{out}.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}
