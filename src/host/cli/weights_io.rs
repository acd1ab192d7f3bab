//! Reading the weights the commands accept: a Params weight file, an Inference weight file
//! (f32 or f16) or a training checkpoint, told apart by their magic bytes. Raw parameters (from
//! a Params file or a checkpoint) must be finite: a NaN or infinity is refused naming the file
//! and the tensor, because training from it (a teacher, a resumed run) cannot succeed and the
//! damage would surface far from its cause.

use std::path::Path;

use anyhow::{bail, Context};

use super::UsageError;
use crate::config::ModelConfig;
use crate::graph::VarKind;
use crate::host::checkpoint::{self, Checkpoint, NamedTensor};
use crate::host::read::read_file;
use crate::params::ParamStore;
use crate::weights::{self, AlignedBuf, FileKind, WeightFile};

/// Weights as read from a file.
pub enum Loaded {
    /// Raw parameters and statistics (from a Params file or a checkpoint).
    Params(ParamStore),
    /// A BN-folded inference file, kept as its aligned bytes (parse with [`WeightFile::parse`]).
    Inference(AlignedBuf),
}

impl Loaded {
    /// The model configuration of the weights.
    pub fn config(&self) -> ModelConfig {
        match self {
            Loaded::Params(p) => *p.config(),
            Loaded::Inference(buf) => WeightFile::parse(buf).expect("validated when loaded").config(),
        }
    }
}

/// What a file written by tinykd is, by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    /// A weight file ([`weights::MAGIC`]).
    Weights,
    /// A checkpoint ([`checkpoint::MAGIC`]).
    Checkpoint,
}

/// The kind of tinykd file `bytes` (its start at least) begin.
pub fn magic_of(bytes: &[u8]) -> Option<Magic> {
    if bytes.starts_with(&checkpoint::MAGIC) {
        Some(Magic::Checkpoint)
    } else if bytes.starts_with(&weights::MAGIC) {
        Some(Magic::Weights)
    } else {
        None
    }
}

/// [`magic_of`] the regular file at `path`, reading only its first bytes.
pub fn file_magic(path: &Path) -> Option<Magic> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    magic_of(&head[..n])
}

/// Reads `path`: a checkpoint (by [`checkpoint::MAGIC`]) or a weight file (by
/// [`weights::MAGIC`]); Params files and checkpoints become a [`ParamStore`] (every parameter
/// and statistic of the model must be present with the model's dims, and finite).
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let bytes = read_file(path).with_context(|| format!("cannot read weights {}", path.display()))?;
    match magic_of(&bytes) {
        Some(Magic::Checkpoint) => {
            let ckpt = Checkpoint::from_bytes(&bytes, path)?;
            return Ok(Loaded::Params(store_from_checkpoint(&ckpt, path)?));
        }
        Some(Magic::Weights) => {}
        None => bail!("{}", unknown_magic(path, &bytes)),
    }
    let buf = AlignedBuf::from_bytes(&bytes);
    let file = WeightFile::parse(&buf).with_context(|| format!("invalid weight file {}", path.display()))?;
    match file.kind() {
        FileKind::Inference => Ok(Loaded::Inference(buf)),
        FileKind::Params => {
            let store = ParamStore::from_weight_file(&file)
                .map_err(|e| anyhow::anyhow!("weight file {}: {e}", path.display()))?;
            Ok(Loaded::Params(store))
        }
    }
}

/// Why `bytes` (read from `path`) start with neither magic: a file shorter than a magic whose
/// bytes begin one (an empty file included) or shorter than every magic is truncated, anything
/// else is not a tinykd file.
fn unknown_magic(path: &Path, bytes: &[u8]) -> String {
    let kinds: Vec<&str> = [(&weights::MAGIC[..], "weight file"), (&checkpoint::MAGIC[..], "checkpoint")]
        .into_iter()
        .filter(|(magic, _)| bytes.len() < magic.len() && magic.starts_with(bytes))
        .map(|(_, kind)| kind)
        .collect();
    let len = bytes.len();
    if len == 0 {
        return format!(
            "{} is empty (0 bytes): truncated, or never written; expected a tinykd weight file or checkpoint",
            path.display()
        );
    }
    if !kinds.is_empty() {
        let what = kinds.join(" or ");
        return format!(
            "{} is truncated: it has only {len} bytes, the start of a tinykd {what}; write or copy it again",
            path.display()
        );
    }
    if len < weights::MAGIC.len().min(checkpoint::MAGIC.len()) {
        return format!(
            "{} has only {len} bytes, too short for a tinykd weight file or checkpoint; it is truncated or not one",
            path.display()
        );
    }
    format!("{} is neither a tinykd weight file nor a checkpoint (unknown magic bytes)", path.display())
}

/// Reads `path` as parameters (a Params file or a checkpoint); an inference file is refused
/// with a [`UsageError`] (batch norm is folded: the raw parameters cannot be recovered).
pub fn load_params(path: &Path) -> anyhow::Result<ParamStore> {
    match load(path)? {
        Loaded::Params(p) => Ok(p),
        Loaded::Inference(_) => Err(UsageError(format!(
            "{} is an inference file (batch norm folded); this needs a params file or a checkpoint",
            path.display()
        ))
        .into()),
    }
}

/// The parameters and statistics of a checkpoint as a [`ParamStore`] of its configuration
/// (every value must be finite).
pub fn store_from_checkpoint(ckpt: &Checkpoint, path: &Path) -> anyhow::Result<ParamStore> {
    let mut store = ParamStore::init(&ckpt.config, 0).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for p in store.params_mut() {
        let section = if p.kind == VarKind::Parameter { &ckpt.params } else { &ckpt.statistics };
        let t = section
            .iter()
            .find(|t| t.name == p.name)
            .with_context(|| format!("checkpoint {} lacks tensor {}", path.display(), p.name))?;
        if t.dims != p.dims {
            bail!(
                "checkpoint {}: tensor {} has dims {:?}, the model needs {:?}",
                path.display(),
                p.name,
                t.dims,
                p.dims
            );
        }
        if let Some(bad) = non_finite(&t.data) {
            bail!("checkpoint {}: tensor {} {bad}; it cannot be used", path.display(), p.name);
        }
        p.data.copy_from_slice(&t.data);
    }
    Ok(store)
}

/// `None` if every value is finite, else what is wrong (the library's wording).
pub use crate::params::non_finite;

/// The tensors of `store` of `kind` as checkpoint tensors, in program order.
pub fn named_tensors(store: &ParamStore, kind: VarKind) -> Vec<NamedTensor> {
    store
        .params()
        .iter()
        .filter(|p| p.kind == kind)
        .map(|p| NamedTensor::new(p.name.clone(), p.dims.clone(), p.data.clone()))
        .collect()
}
