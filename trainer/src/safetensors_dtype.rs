//! Element types between tch and safetensors, shared by the checkpoint
//! files elfin writes and the converted OFA checkpoints it reads.

use anyhow::{bail, Result};
use safetensors::Dtype;
use tch::Kind;

pub fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        other => bail!("unsupported tensor dtype {other:?}"),
    })
}

pub fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        other => bail!("cannot store tensors of kind {other:?} in safetensors"),
    })
}
