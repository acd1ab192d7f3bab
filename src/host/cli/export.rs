//! `tinykd export`: a Params file or checkpoint → a BN-folded inference file (f32 or f16) for
//! the `no_std` engine, written atomically.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::ValueEnum;
use tinykd_kernels::DType;

use super::emit;
use super::paths::{check_outputs, check_writable};
use super::weights_io;
use crate::fold;
use crate::host::atomic::write_atomic;
use crate::params::ParamStore;
use crate::weights::{self, FileKind, TensorOut};

/// `--dtype`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DTypeArg {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (half the flash; the engine widens them to f32).
    F16,
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> DType {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
        }
    }
}

/// `tinykd export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A params file or a checkpoint.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Storage type of the inference weights.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// The inference file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// What [`export_file`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exported {
    /// File size in bytes.
    pub bytes: usize,
    /// Number of tensors.
    pub tensors: usize,
}

/// Folds `store` and writes the inference file `out` (atomically) with `dtype` storage.
pub fn export_file(store: &ParamStore, dtype: DType, out: &Path) -> anyhow::Result<Exported> {
    let tensors = fold::inference_tensors(store).context("cannot fold batch norm")?;
    let outs: Vec<TensorOut> =
        tensors.iter().map(|t| TensorOut { name: &t.name, dims: &t.dims, data: &t.data }).collect();
    let bytes = weights::to_bytes(store.config(), FileKind::Inference, dtype, &outs).map_err(|e| match e {
        weights::WeightError::F16Overflow { index, at, bits } => {
            let name = outs.get(index as usize).map_or("?", |t| t.name);
            anyhow::anyhow!(
                "cannot write f16 weights: value {at} of the BN-folded `{name}` is {}, beyond f16's range \
                 (±65504); export with --dtype f32",
                f32::from_bits(bits)
            )
        }
        e => e.into(),
    })?;
    write_atomic(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(Exported { bytes: bytes.len(), tensors: tensors.len() })
}

/// Runs `export`.
pub fn run(a: Args) -> anyhow::Result<()> {
    check_outputs("--out", std::slice::from_ref(&a.out), &[("--weights".into(), a.weights.clone())])?;
    let store = weights_io::load_params(&a.weights)?;
    // As the training commands do: the output's directory is made if missing.
    check_writable("--out", &a.out)?;
    let dtype = DType::from(a.dtype);
    let e = export_file(&store, dtype, &a.out)?;
    emit(&format!(
        "wrote {} ({} inference weights, {} tensors, {} bytes = {:.1} KiB)\n",
        a.out.display(),
        dtype.name(),
        e.tensors,
        e.bytes,
        e.bytes as f64 / 1024.0
    ))
}
