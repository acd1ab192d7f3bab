//! Host-side listings of a model: every named variable with its shape, and a summary of counts.

use std::string::{String, ToString};
use std::vec::Vec;

use super::{program, ModelError};
use crate::config::ModelConfig;
use crate::graph::{Program, TensorId, VarKind};
use crate::plan::{Plan, Schedule};

/// One named variable of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarInfo {
    /// Its name (PaddleSlim naming, see [`crate::graph`]).
    pub name: String,
    /// Its dimensions (activations include the batch).
    pub dims: Vec<usize>,
    /// `"NHWC"` or `"NC"` for activations; `"HWIO"` (conv), `"HWC"` (depthwise), `"IO"` (fc)
    /// or `"C"` (per-channel vectors) for parameters and statistics.
    pub layout: &'static str,
    /// Activation, parameter or statistic.
    pub kind: VarKind,
    /// Bytes as f32.
    pub bytes: usize,
}

/// Counts for one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Trainable parameters (elements).
    pub params: usize,
    /// Batch-norm running statistics (elements).
    pub statistics: usize,
    /// Multiply-accumulates of one forward pass of one sample.
    pub macs: usize,
    /// Arena bytes of batch-1 f32 inference ([`Plan::peak`]; an arena that may start at any
    /// address needs [`crate::plan::ALIGN`] more, see [`crate::plan::arena_bytes`]).
    pub arena_bytes: usize,
    /// The most bytes live at any one inference step ([`Plan::lower_bound`]).
    pub arena_lower_bound: usize,
}

fn activation(prog: &Program, id: TensorId, batch: usize) -> VarInfo {
    let t = prog.tensor(id);
    let dims = t.shape.dims(batch);
    VarInfo {
        name: t.name.to_string(),
        dims: dims.as_slice().to_vec(),
        layout: t.shape.layout.as_str(),
        kind: VarKind::Activation,
        bytes: 4 * dims.numel(),
    }
}

/// Every variable of `cfg` for batch `batch` in forward order: the input `image`, then for each
/// op its parameters, its statistics and its output.
pub fn list_vars(cfg: &ModelConfig, batch: usize) -> Result<Vec<VarInfo>, ModelError> {
    if batch == 0 {
        return Err(ModelError::Batch);
    }
    let prog = program(cfg)?;
    let mut out = vec![activation(&prog, prog.input(), batch)];
    for op in prog.ops() {
        for p in prog.params(op).iter() {
            let layout = match p.dims.as_slice().len() {
                4 => "HWIO",
                3 => "HWC",
                2 => "IO",
                _ => "C",
            };
            out.push(VarInfo {
                name: p.name().to_string(),
                dims: p.dims.as_slice().to_vec(),
                layout,
                kind: p.kind(),
                bytes: 4 * p.dims.numel(),
            });
        }
        out.push(activation(&prog, op.output, batch));
    }
    Ok(out)
}

/// The activation `name` of `cfg` at batch `batch` (aliases such as `depthwise_conv2d_11`
/// resolve, see [`Program::find`]), or `None` if there is no such activation.
pub fn find_var(cfg: &ModelConfig, batch: usize, name: &str) -> Result<Option<VarInfo>, ModelError> {
    if batch == 0 {
        return Err(ModelError::Batch);
    }
    let prog = program(cfg)?;
    Ok(prog.find(name).map(|id| activation(&prog, id, batch)))
}

/// Parameter, statistic and MAC counts of `cfg`, and its batch-1 inference arena.
pub fn summary(cfg: &ModelConfig) -> Result<Summary, ModelError> {
    let prog = program(cfg)?;
    let plan: Plan = Schedule::new(&prog, 1)?.plan()?;
    Ok(Summary {
        params: prog.count(VarKind::Parameter),
        statistics: prog.count(VarKind::Statistic),
        macs: prog.total_macs(),
        arena_bytes: plan.peak,
        arena_lower_bound: plan.lower_bound,
    })
}
