//! A named f32 store of every trainable parameter and batch-norm statistic of a model (`std`).
//!
//! [`ParamStore::init`] creates them in program order with deterministic initial values:
//! conv and fc weights He/Kaiming-uniform `U(−√(6/fan_in), √(6/fan_in))` (fan_in = `k·k·c_in`
//! for a conv, 9 for a depthwise conv, `c_in` for the fc), fc offset 0, BN scale 1, offset 0,
//! mean 0, variance 1. Each tensor draws from its own SplitMix64 stream seeded by the global
//! seed and the tensor's name, so values do not depend on the order tensors are created in.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;

use tinykd_kernels::DType;

use crate::config::ModelConfig;
use crate::graph::{OpKind, ParamRole, VarKind};
use crate::models::{self, ModelError};
use crate::weights::{self, FileKind, TensorOut, WeightFile};

/// Why a weight file could not be read into a [`ParamStore`] ([`ParamStore::from_weight_file`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamsError {
    /// The file holds BN-folded inference weights: the raw parameters cannot be recovered.
    Inference,
    /// The file's configuration is invalid.
    Model(ModelError),
    /// A parameter or statistic of the model is not in the file.
    Missing(String),
    /// A tensor has other dims than the model says.
    Dims {
        /// The tensor.
        name: String,
        /// Dims the model needs.
        expected: Vec<usize>,
        /// Dims in the file.
        got: Vec<usize>,
    },
    /// A tensor holds NaN or infinite values.
    NonFinite {
        /// The tensor.
        name: String,
        /// What is wrong ([`non_finite`]'s description).
        detail: String,
    },
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamsError::Inference => f.write_str(
                "it is an inference file (batch norm folded); the raw parameters need a params file or a checkpoint",
            ),
            ParamsError::Model(e) => write!(f, "{e}"),
            ParamsError::Missing(name) => write!(f, "it lacks tensor {name}"),
            ParamsError::Dims { name, expected, got } => {
                write!(f, "tensor {name} has dims {got:?}, the model needs {expected:?}")
            }
            ParamsError::NonFinite { name, detail } => write!(f, "tensor {name} {detail}; it cannot be used"),
        }
    }
}

impl std::error::Error for ParamsError {}

/// One named tensor of a [`ParamStore`].
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Its name, e.g. `conv1_weights`, `conv1_bn_mean`.
    pub name: String,
    /// Its dims (conv HWIO, depthwise HWC, fc IO, per-channel vectors 1-D).
    pub dims: Vec<usize>,
    /// Parameter or statistic.
    pub kind: VarKind,
    /// Its elements, row-major.
    pub data: Vec<f32>,
}

/// All parameters and statistics of one model, in program order, looked up by name.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamStore {
    config: ModelConfig,
    params: Vec<Param>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    /// Every parameter and statistic of `cfg`, initialised deterministically from `seed` (see
    /// the [module docs](self)).
    pub fn init(cfg: &ModelConfig, seed: u64) -> Result<ParamStore, ModelError> {
        let prog = models::program(cfg)?;
        let mut params = Vec::new();
        for op in prog.ops() {
            for spec in prog.params(op).iter() {
                let name = spec.name().to_string();
                let dims = spec.dims.as_slice().to_vec();
                let numel = spec.dims.numel();
                let data = match (spec.role, op.kind) {
                    (ParamRole::Weights, _) => {
                        let fan_in = match op.kind {
                            OpKind::DwConv { .. } => 9,
                            _ => numel / dims[dims.len() - 1],
                        };
                        let bound = (6.0 / fan_in as f64).sqrt();
                        let mut rng = SplitMix64::new(seed ^ fnv1a(&name));
                        (0..numel).map(|_| ((2.0 * rng.unit() - 1.0) * bound) as f32).collect()
                    }
                    (ParamRole::Scale | ParamRole::Variance, _) => vec![1.0; numel],
                    _ => vec![0.0; numel],
                };
                params.push(Param { name, dims, kind: spec.kind(), data });
            }
        }
        let index = params.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
        Ok(ParamStore { config: *cfg, params, index })
    }

    /// The configuration the store was created for.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// All tensors in program order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// All tensors in program order, mutably (names and dims should not be changed).
    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    /// The tensor `name`.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.index.get(name).map(|&i| &self.params[i])
    }

    /// The tensor `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Param> {
        self.index.get(name).map(|&i| &mut self.params[i])
    }

    /// Total elements of the tensors of `kind`.
    pub fn count(&self, kind: VarKind) -> usize {
        self.params.iter().filter(|p| p.kind == kind).map(|p| p.data.len()).sum()
    }

    /// Every tensor as a [`TensorOut`] for [`crate::weights::to_bytes`] (a
    /// [`FileKind::Params`] file).
    pub fn to_tensors(&self) -> Vec<TensorOut<'_>> {
        self.params.iter().map(|p| TensorOut { name: &p.name, dims: &p.dims, data: &p.data }).collect()
    }

    /// The store of a params file ([`FileKind::Params`], e.g. written by [`ParamStore::save`]),
    /// for the configuration the file records: every parameter and statistic of the model must
    /// be present with the model's dims (f16 values are widened) and finite. Tensors the model
    /// does not have are ignored.
    pub fn from_weight_file(file: &WeightFile<'_>) -> Result<ParamStore, ParamsError> {
        if file.kind() != FileKind::Params {
            return Err(ParamsError::Inference);
        }
        let mut store = ParamStore::init(&file.config(), 0).map_err(ParamsError::Model)?;
        for p in store.params_mut() {
            let t = file.get(&p.name).ok_or_else(|| ParamsError::Missing(p.name.clone()))?;
            let dims: Vec<usize> = t.dims.as_slice().iter().map(|&d| d as usize).collect();
            if dims != p.dims {
                return Err(ParamsError::Dims { name: p.name.clone(), expected: p.dims.clone(), got: dims });
            }
            for (i, v) in p.data.iter_mut().enumerate() {
                // The dims match, so the file holds as many values as `data`.
                *v = t.data.get(i).unwrap_or(f32::NAN);
            }
            if let Some(detail) = non_finite(&p.data) {
                return Err(ParamsError::NonFinite { name: p.name.clone(), detail });
            }
        }
        Ok(store)
    }

    /// Writes every tensor to `path` as a params file in `dtype` ([`weights::write_file`]:
    /// `path` ends up holding its old contents or the whole new file). Errors name `path`; a
    /// store with a NaN or infinite value is refused ([`io::ErrorKind::InvalidInput`], naming
    /// the tensor), as [`ParamStore::from_weight_file`] would refuse the file.
    pub fn save(&self, path: &Path, dtype: DType) -> io::Result<()> {
        if let Some((name, bad)) = self.first_non_finite() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not writing {}: tensor {name} {bad}", path.display()),
            ));
        }
        weights::write_file(path, &self.config, FileKind::Params, dtype, &self.to_tensors())
            .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
    }

    /// The first tensor with a NaN or infinite value: its name and [`non_finite`]'s
    /// description.
    pub fn first_non_finite(&self) -> Option<(&str, String)> {
        self.params.iter().find_map(|p| non_finite(&p.data).map(|bad| (p.name.as_str(), bad)))
    }
}

/// `None` if every value is finite, else what is wrong, e.g. `has 3 of 216 values not finite
/// (2 NaN, 1 +Inf; the first at index 7)`.
pub fn non_finite(data: &[f32]) -> Option<String> {
    // The engine's sufficient test first: one vectorised pass (a ResNet50 store is 25 M values).
    if crate::engine::all_finite(data) {
        return None;
    }
    let first = data.iter().position(|v| !v.is_finite())?;
    let nan = data.iter().filter(|v| v.is_nan()).count();
    let pos = data.iter().filter(|&&v| v == f32::INFINITY).count();
    let neg = data.iter().filter(|&&v| v == f32::NEG_INFINITY).count();
    let kinds: Vec<String> = [(nan, "NaN"), (pos, "+Inf"), (neg, "-Inf")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, k)| format!("{n} {k}"))
        .collect();
    Some(format!(
        "has {} of {} values not finite ({}; the first at index {first})",
        nan + pos + neg,
        data.len(),
        kinds.join(", ")
    ))
}

/// FNV-1a hash of a name (seeds each tensor's stream).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// SplitMix64: a small, fast, well-mixed deterministic generator for initial values.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
