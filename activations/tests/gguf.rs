//! The GGUF reader: values against an independent dequantizer, round trips through files the
//! test writes, damaged and hostile files, and the bundled model.

use proptest::prelude::*;

mod common;
use common::{Writer, f32s, string};
use saescope_activations::GgufError;
use saescope_activations::gguf::{GgmlType, Gguf, Value, dequantize};

fn sample() -> Vec<u8> {
    let mut arr = 8u32.to_le_bytes().to_vec(); // array of strings
    arr.extend(2u64.to_le_bytes());
    arr.extend(string("hello"));
    arr.extend(string("wörld"));
    Writer::new()
        .kv("general.architecture", 8, string("llama"))
        .kv("llama.block_count", 4, 30u32.to_le_bytes().to_vec())
        .kv("llama.rope.freq_base", 6, 100000f32.to_le_bytes().to_vec())
        .kv("tokenizer.ggml.tokens", 9, arr)
        .tensor("a.weight", &[3, 2], 0, f32s(&[1., 2., 3., 4., 5., 6.]))
        .tensor("b.weight", &[32], 8, {
            let mut b = half::f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
            b.extend((0..32).map(|i| (i as i8 - 16) as u8));
            b
        })
        .bytes()
}

#[test]
fn round_trip_of_a_small_file() {
    let bytes = sample();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(
        g.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_f64("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(
        g.get("tokenizer.ggml.tokens"),
        Some(&Value::Array(vec![
            Value::String("hello".into()),
            Value::String("wörld".into())
        ]))
    );
    let a = g.tensor("a.weight").unwrap();
    assert_eq!(
        a.shape,
        [2, 3],
        "row-major shape is GGUF's dimensions reversed"
    );
    assert_eq!(a.ty, GgmlType::F32);
    assert_eq!(g.dequantize("a.weight").unwrap(), [1., 2., 3., 4., 5., 6.]);
    let b = g.dequantize("b.weight").unwrap();
    assert_eq!(
        b,
        (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect::<Vec<_>>()
    );
    assert_eq!(
        g.dequantize("c.weight"),
        Err(GgufError::MissingTensor("c.weight".into()))
    );
    assert!(matches!(
        g.get_u64("general.architecture"),
        Err(GgufError::Metadata { .. })
    ));
}

#[test]
fn dequantization_matches_the_independent_reference() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/dequant.json")).unwrap();
    let types = [
        ("Q4_0", GgmlType::Q4_0),
        ("Q4_1", GgmlType::Q4_1),
        ("Q5_0", GgmlType::Q5_0),
        ("Q5_1", GgmlType::Q5_1),
        ("Q8_0", GgmlType::Q8_0),
        ("Q4_K", GgmlType::Q4K),
        ("Q6_K", GgmlType::Q6K),
        ("F16", GgmlType::F16),
        ("F32", GgmlType::F32),
        ("BF16", GgmlType::Bf16),
    ];
    for (name, ty) in types {
        let case = &fixture[name];
        let bytes = hex::decode(case["bytes"].as_str().unwrap()).unwrap();
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = dequantize(ty, &bytes, want.len()).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{name}[{i}]: {g} vs {w}"
            );
        }
    }
    assert_eq!(GgmlType::Q4K.name(), "Q4_K");
    assert!(dequantize(GgmlType::Other(10), &[0; 84], 256).is_none());
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    for n in 0..bytes.len() {
        let r = Gguf::parse(&bytes[..n]);
        assert!(
            r.is_err(),
            "a file cut at byte {n} of {} parsed",
            bytes.len()
        );
    }
}

#[test]
fn hostile_headers_are_refused() {
    let good = sample();
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(Gguf::parse(&b), Err(GgufError::BadMagic(_))));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(
        Gguf::parse(&b).unwrap_err(),
        GgufError::UnsupportedVersion(1)
    );
    // Forged counts: a billion tensors, or an array longer than the file.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(Gguf::parse(&b), Err(GgufError::Invalid { .. })));
    let huge = Writer::new().kv("x", 9, {
        let mut v = 0u32.to_le_bytes().to_vec();
        v.extend(u64::MAX.to_le_bytes());
        v
    });
    assert!(matches!(
        Gguf::parse(&huge.bytes()),
        Err(GgufError::Truncated { .. })
    ));
    // A tensor whose data would run past the end, or whose dimensions overflow.
    let past = Writer::new().tensor("t", &[64], 0, vec![0; 16]).bytes();
    let e = Gguf::parse(&past).unwrap_err();
    assert!(
        e.to_string().contains("runs past the end of the file"),
        "{e}"
    );
    let overflow = Writer::new().tensor("t", &[u64::MAX, 4], 0, vec![]).bytes();
    assert!(
        Gguf::parse(&overflow)
            .unwrap_err()
            .to_string()
            .contains("overflow")
    );
    let ragged = Writer::new().tensor("q", &[33], 8, vec![0; 34]).bytes();
    assert!(
        Gguf::parse(&ragged)
            .unwrap_err()
            .to_string()
            .contains("block size 32")
    );
    // Unknown types parse (their tensors are listed) but cannot be read.
    let other = Writer::new().tensor("x", &[256], 10, vec![0; 84]).bytes();
    let g = Gguf::parse(&other).unwrap();
    let e = g.dequantize("x").unwrap_err();
    assert!(matches!(e, GgufError::UnsupportedType { .. }), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    /// Random damage to a valid file: parsing and reading every tensor returns, never panics.
    #[test]
    fn mutated_files_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = sample();
        for (i, v) in edits {
            let at = i.index(bytes.len());
            bytes[at] = v;
        }
        if let Ok(g) = Gguf::parse(&bytes) {
            for t in &g.tensors {
                let _ = g.dequantize(&t.name);
            }
        }
    }
}

/// The bundled SmolLM2-135M file, against numbers computed by the `gguf` Python package.
#[test]
fn the_bundled_model_reads_like_the_reference_says() {
    let bytes = common::smollm2_gguf();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.tensors.len(), 272);
    assert_eq!(g.metadata.len(), 33, "the header's kv_count");
    assert_eq!(
        g.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    for (key, want) in [
        ("llama.block_count", 30),
        ("llama.embedding_length", 576),
        ("llama.feed_forward_length", 1536),
        ("llama.attention.head_count", 9),
        ("llama.attention.head_count_kv", 3),
        ("llama.context_length", 8192),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
    ] {
        assert_eq!(g.get_u64(key).unwrap(), want, "{key}");
    }
    assert_eq!(g.get_f64("llama.rope.freq_base").unwrap(), 100000.0);
    let count = |ty| g.tensors.iter().filter(|t| t.ty == ty).count();
    assert_eq!(
        (
            count(GgmlType::Q4_1),
            count(GgmlType::F32),
            count(GgmlType::Q8_0)
        ),
        (210, 61, 1)
    );
    assert_eq!(g.tensor("token_embd.weight").unwrap().shape, [49152, 576]);
    assert!(
        g.tensor("output.weight").is_none(),
        "the unembedding is tied"
    );

    for (name, sum, sumsq, first) in [
        (
            "token_embd.weight",
            -15353.04449415207,
            520415.71544763993,
            -0.10654449,
        ),
        (
            "blk.0.attn_q.weight",
            59.22322082519531,
            26749.573275085306,
            -0.09631348,
        ),
        (
            "blk.0.attn_norm.weight",
            0.6129436492919922,
            0.9180835409024439,
            0.01397705,
        ),
    ] {
        let x = g.dequantize(name).unwrap();
        let s: f64 = x.iter().map(|&v| v as f64).sum();
        let s2: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        assert!((s - sum).abs() <= 1e-6 * sumsq, "{name}: sum {s} vs {sum}");
        assert!(
            (s2 - sumsq).abs() <= 1e-6 * sumsq,
            "{name}: sum of squares {s2} vs {sumsq}"
        );
        assert!(
            (x[0] - first).abs() < 1e-6,
            "{name}[0]: {} vs {first}",
            x[0]
        );
    }
}
