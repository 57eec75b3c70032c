//! safetensors files of CPU tensors: writing (f32, i64) and reading (f32, f16 and bf16 become
//! f32; i64 stays), with the file's string metadata, which checkpoints use.

use crate::error::{Result, SaeError};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// safetensors bytes of tensors (moved to the CPU; f32, or i64 kept), with optional metadata.
pub fn serialize(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let (dtype, bytes) = match t.kind() {
            Kind::Int64 => {
                let v = Vec::<i64>::try_from(t.reshape([-1]))?;
                (
                    StDtype::I64,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                )
            }
            _ => {
                let v = Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1]))?;
                (
                    StDtype::F32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                )
            }
        };
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<std::result::Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}

/// Reads every tensor of a safetensors file onto the CPU (f32, f16, bf16 become f32; i64 stays).
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let (tensors, _) = read_safetensors_with_metadata(path)?;
    Ok(tensors)
}

/// Reads every tensor of a safetensors file, and its metadata.
pub fn read_safetensors_with_metadata(
    path: &Path,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| SaeError::io(path, e))?;
    let bad = |m: String| SaeError::Format {
        path: path.to_owned(),
        message: m,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let kind = match view.dtype() {
            StDtype::F32 => Kind::Float,
            StDtype::F16 => Kind::Half,
            StDtype::BF16 => Kind::BFloat16,
            StDtype::I64 => Kind::Int64,
            other => {
                return Err(bad(format!(
                    "tensor `{name}` has unsupported dtype {other:?}"
                )));
            }
        };
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        let t = if kind == Kind::Int64 {
            t
        } else {
            t.to_kind(Kind::Float)
        };
        out.insert(name, t);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
