//! Training checkpoints: everything needed to resume a run, in one versioned, checksummed file,
//! written atomically.
//!
//! # File format (version 1, all integers little-endian)
//!
//! ```text
//! magic        8 bytes  "TKDCKPT\0"
//! version      u32      1
//! payload_len  u64      bytes of payload
//! payload      payload_len bytes:
//!   config     arch u8 (0 MobileNetV1, 1 ResNet50), stem u8 (0 ImageNet, 1 Cifar),
//!              scale_permille u16, classes u16, in_h u16, in_w u16, in_c u16
//!   state      epoch u64, step u64, rng_state u64, lr_step u64, lr f64,
//!              best_metric: u8 flag (0 none, 1 some) + f64
//!   3 sections (params, statistics, momentum), each:
//!              count u32, then per tensor: name_len u32, name (UTF-8), rank u32,
//!              dims u64 × rank, data f32 × product(dims)
//!   meta       len u32, UTF-8 (a JSON document by convention)
//! crc32        u32      CRC-32 (zlib's) of every byte before it
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::{Arch, ModelConfig, Stem};
use crate::crc32::Crc32;
use crate::host::atomic::write_atomic;
use crate::host::read::read_file;

/// The first 8 bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"TKDCKPT\0";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Bytes before the payload: magic, version, payload length.
const HEADER_LEN: usize = 8 + 4 + 8;

/// A named tensor: its name (the model's stable variable name), its dims (in the layout the
/// model defines) and its values.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Variable name, e.g. `conv1_weights`.
    pub name: String,
    /// Dimensions; `data.len()` is their product.
    pub dims: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// A tensor; `data.len()` should be the product of `dims` (checked on save).
    pub fn new(name: impl Into<String>, dims: Vec<usize>, data: Vec<f32>) -> Self {
        NamedTensor { name: name.into(), dims, data }
    }
}

/// Where the trainer is: enough to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: u64,
    /// Optimizer steps taken.
    pub step: u64,
    /// State of the trainer's RNG ([`crate::host::data::Rng::state`]).
    pub rng_state: u64,
    /// Position in the learning-rate schedule (steps or epochs, as the schedule counts).
    pub lr_step: u64,
    /// The learning rate in force.
    pub lr: f64,
    /// Best validation metric so far, if any was measured.
    pub best_metric: Option<f64>,
}

/// A complete training checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The model's configuration.
    pub config: ModelConfig,
    /// Trainable parameters.
    pub params: Vec<NamedTensor>,
    /// Batch-norm running statistics (means and variances).
    pub statistics: Vec<NamedTensor>,
    /// Optimizer state: one momentum buffer per parameter.
    pub momentum: Vec<NamedTensor>,
    /// Trainer state.
    pub state: TrainState,
    /// Free-form metadata, a JSON document by convention (command line, dataset, ...).
    pub meta: String,
}

/// Why a checkpoint could not be read or written. Every variant names the file.
///
/// The message of [`CkptError::Io`] includes the OS error, so [`std::error::Error::source`] is
/// `None`: a chain printer (anyhow's `{:#}`) would otherwise print that cause twice.
#[derive(Debug)]
pub enum CkptError {
    /// The file does not exist.
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// Reading or writing failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file ends early.
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
        /// The length its contents need.
        expected: u64,
    },
    /// The file does not start with [`MAGIC`] (a file that is a shorter prefix of it is
    /// [`CkptError::Truncated`]).
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// The file's format version is not [`VERSION`].
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// The stored CRC-32 does not match the contents.
    Checksum {
        /// The file.
        path: PathBuf,
        /// The CRC in the file.
        stored: u32,
        /// The CRC of its contents.
        computed: u32,
    },
    /// The contents are inconsistent (or, on save, the checkpoint is).
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is inconsistent.
        what: String,
    },
}

impl fmt::Display for CkptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CkptError::Missing { path } => write!(f, "checkpoint {} does not exist", path.display()),
            CkptError::Io { path, source } => write!(f, "cannot access checkpoint {}: {source}", path.display()),
            CkptError::Truncated { path, len, expected } => {
                write!(f, "checkpoint {} is truncated: it has {len} bytes, its header needs {expected}", path.display())
            }
            CkptError::BadMagic { path } => {
                write!(f, "{} is not a tinykd checkpoint (bad magic bytes)", path.display())
            }
            CkptError::Version { path, found } => write!(
                f,
                "checkpoint {} has format version {found}; this tinykd reads version {VERSION}",
                path.display()
            ),
            CkptError::Checksum { path, stored, computed } => write!(
                f,
                "checkpoint {} is corrupt: stored CRC-32 {stored:08x}, contents give {computed:08x}",
                path.display()
            ),
            CkptError::Malformed { path, what } => write!(f, "checkpoint {} is malformed: {what}", path.display()),
        }
    }
}

impl std::error::Error for CkptError {}

impl Checkpoint {
    /// The tensor named `name` in any section.
    pub fn tensor(&self, name: &str) -> Option<&NamedTensor> {
        self.params.iter().chain(&self.statistics).chain(&self.momentum).find(|t| t.name == name)
    }

    /// Serialises to bytes (see the module docs). Fails if a tensor's data length is not the
    /// product of its dims, or a name or the metadata exceeds 4 GiB.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let floats: usize =
            self.params.iter().chain(&self.statistics).chain(&self.momentum).map(|t| t.data.len()).sum();
        let mut out = Vec::with_capacity(HEADER_LEN + 128 + floats * 4 + self.meta.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // payload length, patched below
        let c = &self.config;
        out.push(match c.arch {
            Arch::MobileNetV1 => 0,
            Arch::ResNet50 => 1,
        });
        out.push(match c.stem {
            Stem::ImageNet => 0,
            Stem::Cifar => 1,
        });
        for v in [c.scale_permille, c.classes, c.in_h, c.in_w, c.in_c] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let s = &self.state;
        for v in [s.epoch, s.step, s.rng_state, s.lr_step] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&s.lr.to_le_bytes());
        out.push(s.best_metric.is_some() as u8);
        out.extend_from_slice(&s.best_metric.unwrap_or(0.0).to_le_bytes());
        for section in [&self.params, &self.statistics, &self.momentum] {
            put_len(&mut out, section.len(), "tensor count")?;
            for t in section {
                let n = t.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                if n != Some(t.data.len()) {
                    return Err(format!("tensor {} has dims {:?} but {} values", t.name, t.dims, t.data.len()));
                }
                put_len(&mut out, t.name.len(), "tensor name")?;
                out.extend_from_slice(t.name.as_bytes());
                put_len(&mut out, t.dims.len(), "tensor rank")?;
                for &d in &t.dims {
                    out.extend_from_slice(&(d as u64).to_le_bytes());
                }
                for &v in &t.data {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        put_len(&mut out, self.meta.len(), "metadata")?;
        out.extend_from_slice(self.meta.as_bytes());
        let payload_len = (out.len() - HEADER_LEN) as u64;
        out[12..20].copy_from_slice(&payload_len.to_le_bytes());
        let crc = Crc32::of(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Parses bytes written by [`Checkpoint::to_bytes`]; `path` only names the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, CkptError> {
        let path_buf = || path.to_path_buf();
        let len = bytes.len() as u64;
        let magic_len = bytes.len().min(MAGIC.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(CkptError::BadMagic { path: path_buf() });
        }
        if bytes.len() < HEADER_LEN {
            return Err(CkptError::Truncated { path: path_buf(), len, expected: HEADER_LEN as u64 + 4 });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(CkptError::Version { path: path_buf(), found: version });
        }
        let payload_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let expected = (HEADER_LEN as u64).saturating_add(payload_len).saturating_add(4);
        if len < expected {
            return Err(CkptError::Truncated { path: path_buf(), len, expected });
        }
        if len > expected {
            return Err(CkptError::Malformed {
                path: path_buf(),
                what: format!("{} bytes after the end of the checkpoint", len - expected),
            });
        }
        let body_end = bytes.len() - 4;
        let stored = u32::from_le_bytes(bytes[body_end..].try_into().expect("4 bytes"));
        let computed = Crc32::of(&bytes[..body_end]);
        if stored != computed {
            return Err(CkptError::Checksum { path: path_buf(), stored, computed });
        }
        let mut r = Reader { bytes: &bytes[HEADER_LEN..body_end] };
        parse_payload(&mut r).map_err(|what| CkptError::Malformed { path: path_buf(), what })
    }

    /// Writes the checkpoint to `path` atomically (a reader sees the old file or the new one).
    pub fn save(&self, path: &Path) -> Result<(), CkptError> {
        let bytes = self.to_bytes().map_err(|what| CkptError::Malformed { path: path.to_path_buf(), what })?;
        write_atomic(path, &bytes).map_err(|source| CkptError::Io { path: path.to_path_buf(), source })
    }

    /// Reads and verifies the checkpoint at `path`.
    pub fn load(path: &Path) -> Result<Self, CkptError> {
        let bytes = read_file(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                CkptError::Missing { path: path.to_path_buf() }
            } else {
                CkptError::Io { path: path.to_path_buf(), source }
            }
        })?;
        Checkpoint::from_bytes(&bytes, path)
    }
}

fn put_len(out: &mut Vec<u8>, n: usize, what: &str) -> Result<(), String> {
    let n = u32::try_from(n).map_err(|_| format!("{what} length {n} does not fit in 32 bits"))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

/// A bounds-checked little-endian cursor; every read fails with a message instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err(format!("{what} needs {n} bytes but only {} remain", self.bytes.len()));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("exact length"))
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn f64(&mut self, what: &str) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }
}

fn parse_payload(r: &mut Reader<'_>) -> Result<Checkpoint, String> {
    let arch = match r.u8("architecture")? {
        0 => Arch::MobileNetV1,
        1 => Arch::ResNet50,
        v => return Err(format!("unknown architecture code {v}")),
    };
    let stem = match r.u8("stem")? {
        0 => Stem::ImageNet,
        1 => Stem::Cifar,
        v => return Err(format!("unknown stem code {v}")),
    };
    let config = ModelConfig {
        arch,
        stem,
        scale_permille: r.u16("scale")?,
        classes: r.u16("classes")?,
        in_h: r.u16("input height")?,
        in_w: r.u16("input width")?,
        in_c: r.u16("input channels")?,
    };
    let (epoch, step, rng_state, lr_step) = (r.u64("epoch")?, r.u64("step")?, r.u64("rng state")?, r.u64("lr step")?);
    let lr = r.f64("learning rate")?;
    let has_best = r.u8("best-metric flag")?;
    let best = r.f64("best metric")?;
    let best_metric = match has_best {
        0 => None,
        1 => Some(best),
        v => return Err(format!("best-metric flag is {v}, not 0 or 1")),
    };
    let state = TrainState { epoch, step, rng_state, lr_step, lr, best_metric };
    let params = parse_section(r, "params")?;
    let statistics = parse_section(r, "statistics")?;
    let momentum = parse_section(r, "momentum")?;
    let meta = r.string("metadata")?;
    if !r.bytes.is_empty() {
        return Err(format!("{} unexplained bytes after the metadata", r.bytes.len()));
    }
    Ok(Checkpoint { config, params, statistics, momentum, state, meta })
}

fn parse_section(r: &mut Reader<'_>, section: &str) -> Result<Vec<NamedTensor>, String> {
    let count = r.u32(&format!("{section} count"))? as usize;
    // Each tensor takes at least 8 bytes; do not trust `count` for the allocation.
    let mut out = Vec::with_capacity(count.min(r.bytes.len() / 8));
    for i in 0..count {
        let name = r.string(&format!("{section} tensor {i} name"))?;
        let rank = r.u32(&format!("rank of {name:?}"))? as usize;
        let mut dims = Vec::with_capacity(rank.min(r.bytes.len() / 8));
        for _ in 0..rank {
            let d = r.u64(&format!("dims of {name:?}"))?;
            dims.push(usize::try_from(d).map_err(|_| format!("dimension {d} of {name:?} is too large"))?);
        }
        let n = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|n| n.checked_mul(4).is_some())
            .ok_or_else(|| format!("dims {dims:?} of {name:?} overflow"))?;
        let raw = r.take(n * 4, &format!("data of {name:?} ({n} values)"))?;
        let data = raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        out.push(NamedTensor { name, dims, data });
    }
    Ok(out)
}
