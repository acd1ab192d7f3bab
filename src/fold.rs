//! Batch-norm folding (`std`): raw parameters ([`ParamStore`]) → the tensors of an inference
//! weight file ([`FileKind::Inference`]), which the `no_std` [`crate::engine`] runs.
//!
//! For each conv (or depthwise conv) followed by batch norm `bn`, with `s = γ/√(σ² + ε)`:
//! `<conv>_weights` ← `w·s` (per output channel) and `<conv>_bias` ← `β − μ·s`; the fc keeps
//! `<fc>_weights` and `<fc>_offset`. Tensors come out in program order.

use std::fmt;
use std::string::{String, ToString};
use std::vec::Vec;

use tinykd_kernels::{norm, DType, KernelError};

use crate::graph::{param_name, Name, OpKind, ParamRole, ParamSpec, BN_EPS};
use crate::models::{self, ModelError};
use crate::params::ParamStore;
use crate::weights::{self, FileKind, TensorOut, WeightError};

/// One tensor of an inference file.
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceTensor {
    /// Its name (`<conv>_weights`, `<conv>_bias`, `<fc>_weights`, `<fc>_offset`).
    pub name: String,
    /// Its dims.
    pub dims: Vec<usize>,
    /// Its elements.
    pub data: Vec<f32>,
}

/// Why folding failed.
#[derive(Clone, Debug, PartialEq)]
pub enum FoldError {
    /// The configuration is invalid.
    Model(ModelError),
    /// A parameter the program needs is not in the store.
    Missing(String),
    /// A parameter has other dims than the program says.
    Dims {
        /// The parameter.
        name: String,
        /// Dims the program needs.
        expected: Vec<usize>,
        /// Dims in the store.
        got: Vec<usize>,
    },
    /// A parameter holds NaN or infinite values (exported, a NaN weight would pass the ReLU
    /// after it as 0 and the logits would look valid).
    NonFinite {
        /// The parameter.
        name: String,
        /// Its non-finite values.
        count: usize,
        /// Index of the first.
        first: usize,
    },
    /// Folding finite parameters gave NaN or infinite values: the batch norm's statistics
    /// cannot be folded (a variance below −ε, or a scale that overflows f32).
    Folded {
        /// The folded tensor (`<conv>_weights` or `<conv>_bias`).
        name: String,
        /// The batch norm folded into it.
        bn: String,
        /// Its non-finite values.
        count: usize,
        /// Index of the first.
        first: usize,
    },
    /// A parameter's data has another length than its dims (a store edited by hand).
    Len {
        /// The parameter.
        name: String,
        /// Values its dims hold.
        expected: usize,
        /// Values it has.
        got: usize,
    },
    /// The fold kernel refused its arguments.
    Kernel(KernelError),
    /// The weight-file writer refused the tensors.
    Weights(WeightError),
}

impl fmt::Display for FoldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FoldError::Model(e) => write!(f, "{e}"),
            FoldError::Missing(name) => write!(f, "parameter `{name}` is missing"),
            FoldError::Dims { name, expected, got } => {
                write!(f, "parameter `{name}` has dims {got:?}, the model needs {expected:?}")
            }
            FoldError::NonFinite { name, count, first } => write!(
                f,
                "parameter `{name}` has {count} NaN or infinite values (the first at index {first}): \
                 finite parameters are needed to export (a diverged run? resume from an earlier checkpoint)"
            ),
            FoldError::Folded { name, bn, count, first } => write!(
                f,
                "folding batch norm `{bn}` gives `{name}` {count} NaN or infinite values (the first at index \
                 {first}): its statistics cannot be folded (a variance below -{BN_EPS}, or a scale that overflows)"
            ),
            FoldError::Len { name, expected, got } => {
                write!(f, "parameter `{name}` has {got} values, its dims hold {expected}")
            }
            FoldError::Kernel(e) => write!(f, "batch-norm fold: {e}"),
            FoldError::Weights(e) => write!(f, "writing the inference file: {e}"),
        }
    }
}

impl std::error::Error for FoldError {}

impl From<ModelError> for FoldError {
    fn from(e: ModelError) -> Self {
        FoldError::Model(e)
    }
}

/// The data of parameter `spec`, checked against its dims and for finite values.
fn fetch<'a>(params: &'a ParamStore, spec: &ParamSpec) -> Result<&'a [f32], FoldError> {
    let name = spec.name();
    let p = params.get(name.as_str()).ok_or_else(|| FoldError::Missing(name.to_string()))?;
    if p.dims != spec.dims.as_slice() {
        return Err(FoldError::Dims {
            name: name.to_string(),
            expected: spec.dims.as_slice().to_vec(),
            got: p.dims.clone(),
        });
    }
    if p.data.len() != spec.dims.numel() {
        return Err(FoldError::Len { name: name.to_string(), expected: spec.dims.numel(), got: p.data.len() });
    }
    if let Some((first, count)) = non_finite(&p.data) {
        return Err(FoldError::NonFinite { name: name.to_string(), count, first });
    }
    Ok(&p.data)
}

/// The index of the first NaN or infinite value of `data` and how many there are, if any.
fn non_finite(data: &[f32]) -> Option<(usize, usize)> {
    let first = data.iter().position(|v| !v.is_finite())?;
    Some((first, data[first..].iter().filter(|v| !v.is_finite()).count()))
}

/// The BN-folded inference tensors of `params` (see the [module docs](self)).
pub fn inference_tensors(params: &ParamStore) -> Result<Vec<InferenceTensor>, FoldError> {
    let cfg = params.config();
    let prog = models::program(cfg)?;
    let ops = prog.ops();
    let mut out = Vec::new();
    let named = |layer: Name, role: ParamRole| param_name(layer, role).to_string();
    for (i, op) in ops.iter().enumerate() {
        match op.kind {
            OpKind::Conv { .. } | OpKind::DwConv { .. } => {
                let bn = ops.get(i + 1).filter(|b| b.kind == OpKind::BatchNorm && b.input() == op.output);
                let bn = bn.ok_or_else(|| FoldError::Missing(format!("batch norm after {}", op.name)))?;
                let wspec = prog
                    .params(op)
                    .iter()
                    .next()
                    .ok_or_else(|| FoldError::Missing(named(op.name, ParamRole::Weights)))?;
                let w = fetch(params, &wspec)?;
                let mut stats = [&[][..]; 4];
                for (slot, spec) in stats.iter_mut().zip(prog.params(bn).iter()) {
                    *slot = fetch(params, &spec)?;
                }
                let [gamma, beta, mean, var] = stats;
                let c_out = prog.tensor(op.output).shape.c as usize;
                let mut wf = vec![0.0; w.len()];
                let mut bf = vec![0.0; c_out];
                norm::bn_fold(c_out, BN_EPS, w, gamma, beta, mean, var, &mut wf, &mut bf).map_err(FoldError::Kernel)?;
                // Finite statistics can still fold to non-finite values (a variance below −ε, an
                // overflowing scale): named here, not by the engine that would refuse the file.
                for (data, role) in [(&wf, ParamRole::Weights), (&bf, ParamRole::Bias)] {
                    if let Some((first, count)) = non_finite(data) {
                        let (name, bn) = (named(op.name, role), bn.name.to_string());
                        return Err(FoldError::Folded { name, bn, count, first });
                    }
                }
                out.push(InferenceTensor {
                    name: named(op.name, ParamRole::Weights),
                    dims: wspec.dims.as_slice().to_vec(),
                    data: wf,
                });
                out.push(InferenceTensor { name: named(op.name, ParamRole::Bias), dims: vec![c_out], data: bf });
            }
            OpKind::Fc => {
                for spec in prog.params(op).iter() {
                    let data = fetch(params, &spec)?.to_vec();
                    out.push(InferenceTensor {
                        name: spec.name().to_string(),
                        dims: spec.dims.as_slice().to_vec(),
                        data,
                    });
                }
            }
            OpKind::BatchNorm | OpKind::Relu | OpKind::MaxPool | OpKind::AddRelu | OpKind::GlobalAvgPool => {}
        }
    }
    Ok(out)
}

/// An inference weight file ([`FileKind::Inference`], `dtype` storage) from `params` (of the
/// model they were made for, [`ParamStore::config`]).
pub fn export_inference(params: &ParamStore, dtype: DType) -> Result<Vec<u8>, FoldError> {
    let cfg = params.config();
    let tensors = inference_tensors(params)?;
    let outs: Vec<TensorOut> =
        tensors.iter().map(|t| TensorOut { name: &t.name, dims: &t.dims, data: &t.data }).collect();
    weights::to_bytes(cfg, FileKind::Inference, dtype, &outs).map_err(FoldError::Weights)
}
