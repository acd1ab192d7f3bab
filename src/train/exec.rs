//! The host training executor: runs a [`Program`] forward (train or eval mode) and backward over
//! Vec-backed buffers for a batch, on one or more threads.
//!
//! # Buffers
//!
//! Every tensor of the program has a whole-batch activation buffer (`max_batch · h·w·c` f32,
//! NHWC, batch outermost) and, once [`Executor::backward`] has run, a gradient buffer of the same
//! size; every trainable parameter has a gradient buffer. Tensor 0 (`image`) keeps a copy of the
//! input after a train-mode forward (the first conv's weight gradient needs it); an eval-mode
//! forward reads the caller's input slice directly and keeps no copy.
//!
//! # Threads and determinism
//!
//! The batch is split into `min(threads, n)` contiguous chunks of samples (sizes differ by at
//! most one, the larger ones first); thread `k` runs every op on chunk `k`. The only couplings
//! between chunks are handled in a fixed order:
//! - a train-mode batch norm: each chunk computes its moments (count, mean, M2), publishes
//!   them, waits at a barrier, then EVERY thread merges all chunks' moments in chunk order 0, 1,
//!   … with [`norm::bn_merge_moments`] — identical inputs in an identical order give every
//!   thread bitwise-identical whole-batch statistics; the running statistics are updated once,
//!   after the pass, from chunk 0's copy;
//! - a train-mode batch-norm backward: the chunks' `Σdy`, `Σdy·x̂` are added in chunk order the
//!   same way (their totals are `dβ`, `dγ`);
//! - conv / depthwise / fc parameter gradients: each thread computes its chunk's gradient; the
//!   results are summed in thread order `((g₀ + g₁) + g₂) + …`, each thread summing a piece of
//!   every gradient once the next batch norm's barrier has passed (the last ones after the
//!   pass). A conv with few rows and many input channels (a late layer: a pointwise conv, or
//!   any conv into a 1x1 map) instead leaves its chunk's `dY` there, and after the barrier each
//!   thread computes its rows of `dW` over the whole batch with one GEMM per tap
//!   (the reduce plan), so no thread writes and re-reads a whole-size partial.
//!
//! So a run is **bitwise reproducible for a given thread count** (and kernel path). A
//! **different thread count changes the bits** (not the math): chunk moments are merged instead
//! of computed in one pass, and sums are grouped differently. Results agree within f32
//! rounding.
//!
//! # Backward
//!
//! [`Executor::backward`] takes gradients seeded at any tensors (the logits for
//! cross-entropy, hint tensors for distillation losses) and propagates them in reverse op
//! order down to the parameters. Ops whose output receives no gradient are skipped (their
//! parameter gradients are zero). The input's gradient is computed only when asked for
//! ([`Executor::set_input_grad`]). ReLU and residual add+ReLU backward use their outputs; batch
//! norm uses the mean and `1/σ` saved by the forward (run with its ReLU,
//! [`Executor::fuse_bn_relu`], it gates by its output recomputed from its input, the same
//! bits); max pool recomputes its argmax from the saved input and output.

use std::ops::Range;
use std::string::{String, ToString};
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::vec::Vec;
use std::{fmt, thread};

use super::lines::LineBuf;
use tinykd_kernels::act::{self, Act};
use tinykd_kernels::gemm::{gemm, GemmShape, Trans};
use tinykd_kernels::linear::panels;
use tinykd_kernels::norm::{self, BnParams};
use tinykd_kernels::shape::{Channels, Conv2d, Linear, Pool, IM2COL_ROWS};
use tinykd_kernels::{conv, dwconv, linear, pool, Isa, IsaKind, KernelError};

use crate::graph::{Dims, Name, OpKind, ParamRole, Program, TensorId, VarKind, BN_EPS};
use crate::params::ParamStore;
use crate::train::spin::SpinBarrier;

/// Batch-norm hyper-parameters of both models (eps [`BN_EPS`], momentum 0.9).
const BN: BnParams = BnParams { eps: BN_EPS, momentum: 0.9 };

/// Forward mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Batch norm normalises with whole-batch statistics and updates its running statistics.
    Train,
    /// Batch norm uses its running statistics and never updates them.
    Eval,
}

/// Why the executor refused to run.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecError {
    /// A parameter or statistic the program needs is not in the store.
    MissingParam {
        /// Its name.
        name: String,
    },
    /// A parameter in the store has other dims than the program needs.
    ParamDims {
        /// Its name.
        name: String,
        /// The dims the program needs.
        expected: Dims,
        /// The dims in the store.
        got: Vec<usize>,
    },
    /// A parameter in the store has the dims the program needs but not as many values.
    ParamLen {
        /// Its name.
        name: String,
        /// Its dims.
        dims: Dims,
        /// Values the dims need.
        expected: usize,
        /// Values in the store.
        got: usize,
    },
    /// The input length is not a positive multiple (up to `max_batch`) of one sample's size.
    InputLen {
        /// Values in one sample (`h·w·c`).
        per_sample: usize,
        /// The largest batch the executor holds.
        max_batch: usize,
        /// Values given.
        got: usize,
    },
    /// An input value is NaN or infinite (a ReLU would silently turn NaN into 0 and the
    /// logits would look valid).
    NonFiniteInput {
        /// Index of the first such value in the input slice.
        index: usize,
        /// Values per image (`h·w·c`), to name the image.
        per_sample: usize,
    },
    /// A tensor id is not one of the program's (`0..tensors`).
    UnknownTensor {
        /// The id.
        id: TensorId,
        /// The program's number of tensors.
        tensors: usize,
    },
    /// The buffers for a batch of `max_batch` samples would not fit in the address space.
    BatchTooLarge {
        /// The batch size asked for.
        max_batch: usize,
    },
    /// [`Executor::backward`] was called without a train-mode forward before it.
    NoTrainForward,
    /// A seeded gradient has the wrong length for its tensor.
    SeedLen {
        /// The tensor.
        tensor: Name,
        /// Values needed (`batch · h·w·c`).
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A gradient was seeded at the output of a batch norm run with its ReLU
    /// ([`Executor::fuse_bn_relu`]), which the forward never wrote.
    NotKept {
        /// The tensor.
        tensor: Name,
    },
    /// A kernel refused its arguments (a bug: the executor sizes every argument).
    Kernel {
        /// The layer.
        layer: Name,
        /// The kernel's error.
        err: KernelError,
    },
    /// Another thread failed at a batch-norm synchronisation point (its error is reported too).
    PeerFailed {
        /// The layer.
        layer: Name,
    },
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::MissingParam { name } => write!(f, "parameter `{name}` is missing from the parameter store"),
            ExecError::ParamDims { name, expected, got } => {
                write!(f, "parameter `{name}` has dims {got:?} in the store, the program needs {expected}")
            }
            ExecError::ParamLen { name, dims, expected, got } => {
                write!(f, "parameter `{name}` has {got} values in the store where its dims {dims} need {expected}")
            }
            ExecError::InputLen { per_sample, max_batch, got } => write!(
                f,
                "input has {got} values: it must be n·{per_sample} values (NHWC) for a batch n in 1..={max_batch}"
            ),
            ExecError::NonFiniteInput { index, per_sample } => write!(
                f,
                "input value {index} (image {}, value {} of it) is NaN or infinite: the model needs finite inputs",
                index / (*per_sample).max(1),
                index % (*per_sample).max(1)
            ),
            ExecError::UnknownTensor { id, tensors } => write!(
                f,
                "tensor id {} is not a tensor of this program (it has {tensors}, ids 0..{tensors})",
                id.index()
            ),
            ExecError::BatchTooLarge { max_batch } => write!(
                f,
                "batch size {max_batch} is too large: the executor's buffers for it would not fit in the address space"
            ),
            ExecError::NoTrainForward => f.write_str("backward needs a train-mode forward of the same batch first"),
            ExecError::SeedLen { tensor, expected, got } => {
                write!(f, "gradient seeded at `{tensor}` has {got} values, the tensor has {expected}")
            }
            ExecError::NotKept { tensor } => write!(
                f,
                "gradient seeded at `{tensor}`, a batch norm's output the forward ran together with its \
                 ReLU and never wrote; list it in Executor::fuse_bn_relu's `keep`"
            ),
            ExecError::Kernel { layer, err } => write!(f, "layer `{layer}`: {err}"),
            ExecError::PeerFailed { layer } => write!(f, "layer `{layer}`: another thread failed"),
        }
    }
}

impl std::error::Error for ExecError {}

/// A trainable parameter's gradient.
#[derive(Clone, Debug)]
struct GradSlot {
    name: String,
    /// Index of the op it belongs to.
    op: usize,
    /// Whether it is a batch-norm γ/β (a whole-batch quantity computed identically by every
    /// thread, taken from thread 0) rather than a per-chunk sum.
    bn: bool,
    grad: LineBuf,
    /// Whether every value of `grad` is finite after the last backward ([`Executor::non_finite_grad`]).
    finite: bool,
}

/// Whole-batch statistics of one train-mode batch norm, as merged by one thread.
#[derive(Clone, Debug, Default)]
struct BnSaved {
    /// Rows (`n·h·w`) of the whole batch.
    count: usize,
    mean: Vec<f32>,
    m2: Vec<f32>,
    invstd: Vec<f32>,
}

/// One thread's private state.
#[derive(Debug, Default)]
struct Worker {
    /// Conv scratch (im2col), sized for the largest chunk.
    scratch: LineBuf,
    /// Chunk-sized buffers for gradients that are accumulated rather than overwritten.
    tmp: LineBuf,
    /// The whole batch's `dY` of a [`Whole`] weight gradient, gathered at reduce time.
    stage: LineBuf,
    /// Per batch norm (by ordinal): the statistics of the last train-mode forward.
    bn: Vec<BnSaved>,
    /// Per batch-norm gradient slot (γ, β): this chunk's value (empty for other slots, whose
    /// chunk gradients go to the thread's [`GradArena`]).
    pgrads: Vec<LineBuf>,
    /// Per gradient slot: whether the piece of it this thread summed in the last backward is
    /// finite (checked while the piece is still in cache).
    piece_finite: Vec<bool>,
    /// Two channel-sized buffers: throw-away running statistics for `bn_finish_moments`.
    dummy: [Vec<f32>; 2],
    /// Per op, seconds spent in its forward and backward since the last reset, while
    /// profiling ([`Executor::set_profiling`]); empty otherwise.
    times: Vec<[f64; 2]>,
    /// Seconds spent at reduce time summing weight gradients and computing [`Whole`] ones, while
    /// profiling.
    reduce_s: [f64; 2],
}

/// One chunk's published batch-norm values: (rows, mean, M2) forward, (unused, `Σdy`,
/// `Σdy·x̂`) backward.
type Chunk = (usize, Vec<f32>, Vec<f32>);

/// A published [`Chunk`], `None` if the thread failed.
type Moments = Option<Chunk>;

/// The parameter slices of one op (empty when the op has no such parameter).
#[derive(Clone, Copy, Debug, Default)]
struct OpParams<'a> {
    weights: &'a [f32],
    scale: &'a [f32],
    offset: &'a [f32],
    mean: &'a [f32],
    var: &'a [f32],
    /// Gradient slots of (weights or scale, offset).
    slots: [Option<usize>; 2],
}

/// How a backward op delivers the gradient of one of its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deliver {
    /// The input needs no gradient.
    Skip,
    /// First contribution: overwrite the input's gradient buffer.
    Overwrite,
    /// Later contribution: compute into scratch, then add.
    Accumulate,
}

/// Which ops run backward and how each delivers its input gradients.
#[derive(Clone, Debug)]
struct BackwardPlan {
    active: Vec<bool>,
    deliver: Vec<[Deliver; 2]>,
}

/// A thread's two buffers for its chunk's weight gradients, one per segment parity
/// ([`ReducePlan`]): the thread writes one while every thread reads the other's, so they are
/// locks (never contended: the batch-norm barriers order the phases).
type GradArena = [RwLock<LineBuf>; 2];

/// A thread's pieces of the weight gradients it sums ([`reduce_segment`]), indexed by slot:
/// the piece's offset in the slot's gradient and the piece.
type Pieces<'a> = Vec<Option<(usize, &'a mut [f32])>>;

/// How a backward's weight gradients are summed over the chunks while still in cache: the
/// active ops, in backward order, fall into segments cut by the batch norms (whose backward
/// waits for every thread, [`Ctx::exchange`]). A segment's conv, depthwise and fc gradients
/// are written by each thread into its arena of the segment's parity, at `place[slot]`; after
/// the batch norm that ends the segment, each thread sums its share of every slot of it over
/// the threads' arenas, in thread order, into the slot's gradient ([`reduce_segment`]). A
/// segment's arenas are written again two segments later, after a barrier every thread
/// reaches only once its sums are done. The last segment is summed after the pass.
///
/// A conv whose weight gradient is much larger than its output gradient (a late layer: few
/// rows, many channels; a pointwise conv or a conv into a 1x1 map) is a [`Whole`] slot
/// instead: each thread leaves its chunk's `dY` in the arena, and at reduce time computes its
/// rows of `dW` over the whole batch, one GEMM per in-bounds tap. Summing per-thread partials
/// would write the whole `dW` once per thread and read it back to add: up to 9.4 MB per
/// thread and op at ResNet50's res5.
#[derive(Debug)]
struct ReducePlan {
    /// Per segment, its slots.
    segments: Vec<Vec<usize>>,
    /// Per slot: its segment and its range in the arena (`None` for batch-norm slots and the
    /// slots of inactive ops).
    place: Vec<Option<(usize, Range<usize>)>>,
    /// Per op: the segment it ends (an active batch norm), summed after it.
    ends: Vec<Option<usize>>,
    /// f32 of the largest segment.
    arena_len: usize,
    /// Per slot, its op.
    op: Vec<usize>,
    /// Per slot: computed whole-batch at reduce time ([`Whole`]), or summed from partials.
    whole: Vec<Option<Whole>>,
}

/// A conv weight gradient computed at reduce time over every row of the batch, in row pieces,
/// from the threads' `dY` chunks left in their arenas ([`ReducePlan`]): a stride-1 pointwise
/// conv (`dW = Xᵀ·dY`, one row per output pixel), or a conv to a 1x1 map, whose every
/// in-bounds tap `t` reads one input pixel (`dW[t] = X_pixelᵀ·dY`, one row per sample; the
/// other taps read padding and get zeros). Taken when the batch's rows are at most
/// `c_in / WHOLE_RATIO`, so each thread's `dY` chunk fits the slot.
#[derive(Clone, Debug)]
struct Whole {
    /// The conv's input tensor.
    x: TensorId,
    c_in: usize,
    c_out: usize,
    /// Rows per sample (output pixels).
    pixels: usize,
    /// Stride between X rows (`c_in`, or a whole sample for a 1x1 output map).
    lda: usize,
    /// X values per sample (`h·w·c_in`).
    sample: usize,
    /// Per kernel tap: the offset in a sample of the input pixel its rows read, `None` for
    /// a tap that reads only padding.
    taps: Vec<Option<usize>>,
}

impl Whole {
    /// The whole-batch form of conv `c`'s weight gradient over input `x`, if it has one.
    fn of(c: &Conv2d, x: TensorId) -> Option<Whole> {
        let (oh, ow) = (c.out_h(), c.out_w());
        if c.n * oh * ow * WHOLE_RATIO > c.c_in {
            return None;
        }
        let (c_in, c_out, sample) = (c.c_in, c.c_out, c.h * c.w * c.c_in);
        if c.is_pointwise() {
            return Some(Whole { x, c_in, c_out, pixels: oh * ow, lda: c_in, sample, taps: vec![Some(0)] });
        }
        if oh != 1 || ow != 1 {
            return None;
        }
        let taps = (0..c.kh * c.kw).map(|t| c.tap_source(0, 0, t).map(|px| px * c_in)).collect();
        Some(Whole { x, c_in, c_out, pixels: 1, lda: sample, sample, taps })
    }
}

/// A conv's batch rows at most `c_in` over this make it a [`Whole`] slot: its `dY` (gathered
/// by every thread) is then at most a quarter of one tap's `dW`.
const WHOLE_RATIO: usize = 4;

/// Rows `start / c_out ..` of a [`Whole`] slot's `dW` into `piece` (whole rows of `dW`): the
/// threads' `dY` chunks (in `arenas` at `at`, chunk order) are gathered into `stage`, then each
/// in-bounds tap's rows in the piece are one GEMM over every row of the batch (X from the
/// whole batch's activations `acts`); a padding tap's rows are zero.
#[allow(clippy::too_many_arguments)]
fn whole_piece(
    isa: Isa,
    wh: &Whole,
    chunks: &[Range<usize>],
    acts: &[LineBuf],
    arenas: &[RwLockReadGuard<'_, LineBuf>],
    at: usize,
    start: usize,
    piece: &mut [f32],
    stage: &mut LineBuf,
) -> Result<(), KernelError> {
    let n = chunks.last().map_or(0, |c| c.end);
    let x = &acts[wh.x.index()][..n * wh.sample];
    let rows = n * wh.pixels;
    let need = rows * wh.c_out;
    if stage.len() < need {
        *stage = LineBuf::zeros(need);
    }
    let mut to = 0;
    for (c, a) in chunks.iter().zip(arenas) {
        let len = c.len() * wh.pixels * wh.c_out;
        stage[to..to + len].copy_from_slice(&a[at..at + len]);
        to += len;
    }
    let (r0, r1) = (start / wh.c_out, (start + piece.len()) / wh.c_out);
    for (t, off) in wh.taps.iter().enumerate() {
        // This tap's dW rows within the piece.
        let (lo, hi) = (r0.max(t * wh.c_in), r1.min((t + 1) * wh.c_in));
        if lo >= hi {
            continue;
        }
        let out = &mut piece[(lo - r0) * wh.c_out..(hi - r0) * wh.c_out];
        let Some(off) = off else {
            out.fill(0.0);
            continue;
        };
        let s = GemmShape {
            m: hi - lo,
            n: wh.c_out,
            k: rows,
            ta: Trans::T,
            tb: Trans::N,
            lda: wh.lda,
            ldb: wh.c_out,
            ldc: wh.c_out,
        };
        gemm(isa, &s, 1.0, &x[off + lo - t * wh.c_in..], &stage[..need], 0.0, out)?;
    }
    Ok(())
}

/// Slot `s`'s `piece` (at `start` in the slot) at reduce time, from the threads' `arenas`: the
/// sum of their partials in thread order, or for a [`Whole`] slot its rows of `dW` over the
/// whole batch ([`whole_piece`]). Returns whether every value of the piece is finite (read
/// back while it is in cache). While profiling, the seconds it took go to `clock[0]` (sums)
/// or `clock[1]` (whole-batch).
#[allow(clippy::too_many_arguments)]
fn reduce_slot(
    isa: Isa,
    rp: &ReducePlan,
    s: usize,
    chunks: &[Range<usize>],
    acts: &[LineBuf],
    arenas: &[RwLockReadGuard<'_, LineBuf>],
    start: usize,
    piece: &mut [f32],
    stage: &mut LineBuf,
    clock: Option<&mut [f64; 2]>,
) -> Result<bool, KernelError> {
    let t0 = clock.is_some().then(std::time::Instant::now);
    let at = rp.at(s).1.start;
    if let Some(wh) = &rp.whole[s] {
        whole_piece(isa, wh, chunks, acts, arenas, at, start, piece, stage)?;
    } else {
        let r = at + start..at + start + piece.len();
        // The first two summed as they are stored (one pass instead of a copy and an add: the
        // same bits).
        match arenas {
            [a0] => piece.copy_from_slice(&a0[r.clone()]),
            [a0, a1, ..] => act::add(isa, &a0[r.clone()], &a1[r.clone()], piece)?,
            [] => piece.fill(0.0),
        }
        for a in arenas.iter().skip(2) {
            act::add_inplace(isa, piece, &a[r.clone()])?;
        }
    }
    let finite = crate::engine::all_finite(piece);
    if let (Some(c), Some(t0)) = (clock, t0) {
        c[rp.whole[s].is_some() as usize] += t0.elapsed().as_secs_f64();
    }
    Ok(finite)
}

impl ReducePlan {
    /// Where in the arena slot `s` goes, and its segment's parity.
    fn at(&self, s: usize) -> (usize, Range<usize>) {
        let (seg, range) = self.place[s].clone().expect("an active op's weight slot has a place");
        (seg % 2, range)
    }
}

/// The training executor of one program (see the [module docs](self)).
#[derive(Debug)]
pub struct Executor {
    prog: Program,
    isa: Isa,
    max_batch: usize,
    threads: usize,
    /// Elements per sample of each tensor.
    numel: Vec<usize>,
    /// Batch-norm ordinal of each op (`None` for other kinds).
    bn_ord: Vec<Option<usize>>,
    acts: Vec<LineBuf>,
    grads: Vec<LineBuf>,
    slots: Vec<GradSlot>,
    /// Gradient slots of each op: (weights or scale, offset).
    op_slots: Vec<[Option<usize>; 2]>,
    workers: Vec<Worker>,
    /// Per thread, the two buffers its chunk's weight gradients alternate between
    /// ([`ReducePlan`]).
    arenas: Vec<GradArena>,
    /// Batch of the last forward, and whether it was train mode.
    last: Option<(usize, Mode)>,
    input_grad: bool,
    /// Per op, frozen conv weights packed into panels by [`Executor::pack_frozen_convs`].
    packed: Vec<Option<PackedConv>>,
    /// Whether the threads wait for each other after every op ([`Executor::set_sync_every_op`]).
    sync_every_op: bool,
    /// Per op, a frozen conv with its batch norm (and ReLU) folded in ([`Executor::fold_frozen`]).
    folded: Vec<Option<FoldedConv>>,
    /// Per op, whether a folded conv does its work (the folded batch norms and ReLUs).
    fused_away: Vec<bool>,
    /// Per tensor, whether a folded eval forward leaves it unwritten.
    unwritten: Vec<bool>,
    /// Whether the last forward ran the folded convs.
    last_folded: bool,
    /// Per tensor, whether eval forwards skip the op writing it ([`Executor::set_eval_targets`]).
    eval_unneeded: Vec<bool>,
    /// Per tensor, whether it is one of the eval targets (all false when none are set).
    eval_target: Vec<bool>,
    /// Whether eval targets are set, so a folded eval forward may recycle dead buffers.
    eval_recycles: bool,
    /// Whether the last forward wrote outputs into recycled buffers ([`recycle_output`]): then
    /// only the eval targets (and the input) are readable.
    last_recycled: bool,
    /// Per op, the weights of a few-row pointwise conv packed by the last train forward
    /// ([`TRAIN_PANEL_MAX_PIXELS`]).
    train_panels: Vec<Option<TrainPanels>>,
    /// Per op, an fc's weights packed for the GEMM's narrow path ([`linear::pack_narrow`]) at
    /// the start of every forward, one pack the threads share where each would pack its own.
    fc_packed: Vec<Option<LineBuf>>,
    /// Per batch-norm op, the ReLU op it runs with ([`Executor::fuse_bn_relu`]).
    bn_relu: Vec<Option<usize>>,
    /// Per op, whether it is a ReLU its batch norm runs.
    relu_in_bn: Vec<bool>,
    /// Per tensor, whether it is the never-written output of a batch norm run with its ReLU.
    bn_relu_skipped: Vec<bool>,
    /// Whether the last forward ran batch norms with their ReLUs.
    last_fused: bool,
}

/// Output pixels per sample of the largest map whose convs a train step runs over weights
/// packed once per step (`TrainPanels`): up to 2x2 (at most 128 rows per thread at
/// the tutorial's batch), where the blocked GEMM, repacking the weights on every call for few
/// rows, ran MobileNetV1's late convs at 24–46 GFLOP/s. Per sample, not per chunk, so the
/// path (and the bits) do not depend on the batch or the thread count. On the AVX-512 and
/// AVX2 paths; the portable path (scalar, NEON) is not SIMD. AVX2 lost with them while its
/// panel tiles kept every accumulator in memory (Xeon VM, `TINYKD_ISA=avx2`: 1422–1484 img/s
/// against 1566–1586 without); with the tiles fixed, on the AMD EPYC VM (three alternating
/// rounds): distillation step 594–610 → 604–633 img/s (the student's conv6 forward and
/// backward 3.6 + 8.3 → 1.9 + 4.9 thread-ms), train step 1309–1391 → 1375–1406; up to 4x4
/// (16 pixels) no better (596–626, 1352–1393). Since the eighteenth session also KxK and
/// strided convs (ResNet50's res4 3x3s at 2x2, the stride-2 convs into 2x2 and 1x1 maps):
/// forward and input gradient position by position, skipping the taps that read only padding
/// (5 of 9 per position at 2x2), with no weight packing per call — ResNet50 train step 213–216
/// → 229–230 img/s (two alternating rounds); 16 pixels (res3 at 4x4) no better (229–231).
pub const TRAIN_PANEL_MAX_PIXELS: usize = 4;

/// Rows of the im2col tiles of a KxK conv (a multiple of [`IM2COL_ROWS`]): the executor's
/// scratch holds this many, so the kernels run 4 times fewer, 4 times taller tiles than the
/// minimum scratch (what the no_std planner gives) — the same bits (see the conv kernels'
/// `tiles`; a map of fewer rows gets a scratch 4 times its one tile, which it does not use).
/// ResNet50's train step 306–313 → 326–330 img/s (three alternating rounds: its 3x3
/// convs' forward and input gradient, 576–4608 deep, run fewer GEMM calls over more rows);
/// the distillation step and MobileNetV1's train step unchanged (their only KxK conv is the
/// teacher's few-pixel 3x3s on panels and the students' stem).
const IM2COL_TILE_ROWS: usize = 4 * IM2COL_ROWS;

/// A trainable few-pixel conv's weights packed into panels at the start of a train forward:
/// `w` for the forward, each tap's `w[t]ᵀ` for the input gradient `dX = Σ dY·w[t]ᵀ` (both
/// products over panels, [`panels`]), and the slice (address, length) they were packed from.
#[derive(Clone, Debug)]
struct TrainPanels {
    src: (usize, usize),
    fwd: LineBuf,
    bwd: LineBuf,
}

impl TrainPanels {
    /// Packs `w[tap][c_in][c_out]` both ways into the existing buffers, in one pass over `w`.
    fn pack(&mut self, isa: Isa, s: &Conv2d, w: &[f32]) -> Result<(), KernelError> {
        self.src = (w.as_ptr() as usize, w.len());
        panels::pack_panels_both_ways(isa, s.kh * s.kw, s.c_in, s.c_out, w, &mut self.fwd, &mut self.bwd)
    }
}

/// A frozen conv with the batch norm after it, and the ReLU after that if any, folded in:
/// `out = act(conv(x, w·s) + (β − μ·s))` with `s = γ/√(σ² + ε)`, written straight to the
/// output of the last op folded ([`Executor::fold_frozen`]).
#[derive(Clone, Debug)]
struct FoldedConv {
    /// The batch norm's op index.
    bn: usize,
    /// The parameter slices (address, length) it was made from: the conv's weights, then the
    /// batch norm's scale, offset, mean and variance.
    src: [(usize, usize); 5],
    /// Folded weights, packed into panels when `packed`, else in the stored HWIO layout.
    weights: LineBuf,
    packed: bool,
    bias: Vec<f32>,
    act: Act,
    /// The tensor it writes.
    out: TensorId,
    /// The other input of a residual add + ReLU folded in too (`out` is then the add's
    /// output: `y = relu(conv + bias + residual)`).
    residual: Option<TensorId>,
    /// Whether the output is written over the residual's buffer (a pointwise conv, `packed`,
    /// that is the residual's last reader): the product adds each residual value as it stores
    /// the output there, instead of writing a buffer not in cache (whose every line the core
    /// must first fetch) and adding in a second pass. ResNet50's 16 block ends in the
    /// distillation step: teacher forward 31.5–33.8 → 29.5–31.7 ms, 944–987 → 963–1013 img/s
    /// (alternating runs).
    in_place: bool,
}

/// Output pixels of the largest map whose convs [`Executor::pack_frozen_convs`] packs: up
/// to 4x4 the panel product wins (tap skipping, no weight packing per call); at 8x8 the
/// blocked GEMM is slightly faster.
pub const PACK_MAX_PIXELS: usize = 16;

/// `w` packed into panels if `s` is a conv [`Executor::pack_frozen_convs`] packs: output maps of
/// at most [`PACK_MAX_PIXELS`] pixels (of any size with `any_map`), taps deep enough
/// ([`panels::deep_enough`]).
fn small_map_panels(s: &Conv2d, w: &[f32], any_map: bool) -> Result<Option<LineBuf>, KernelError> {
    let taps = s.kh * s.kw;
    if (!any_map && s.out_h() * s.out_w() > PACK_MAX_PIXELS) || !panels::deep_enough(taps, s.c_in) {
        return Ok(None);
    }
    let mut p = LineBuf::zeros(panels::panels_len(taps, s.c_in, s.c_out));
    panels::pack_panels(taps, s.c_in, s.c_out, w, &mut p)?;
    Ok(Some(p))
}

/// The f32 values of the buffers an executor of `max_batch` samples on `threads` threads sizes
/// by the batch: every tensor's activations and gradients, and each thread's two chunk-sized
/// temporaries, in bytes. `None` if they overflow, or exceed `isize::MAX` (the most one
/// allocation may hold).
fn batch_buffer_bytes(numel: &[usize], max_batch: usize, threads: usize) -> Option<usize> {
    let chunk = max_batch.div_ceil(threads);
    let acts = numel.iter().try_fold(0usize, |sum, &e| sum.checked_add(e.checked_mul(max_batch)?))?;
    let tmp = numel.iter().copied().max().unwrap_or(0).checked_mul(chunk)?.checked_mul(2)?.checked_mul(threads)?;
    let bytes = acts.checked_mul(2)?.checked_add(tmp)?.checked_mul(std::mem::size_of::<f32>())?;
    (bytes <= isize::MAX as usize).then_some(bytes)
}

/// [`ExecError::NonFiniteInput`] naming the first NaN or infinite value of `input`, if any
/// (the `no_std` engine's sufficient test: a finite sum, each value looked at only if not).
fn check_finite(input: &[f32], per_sample: usize) -> Result<(), ExecError> {
    if crate::engine::all_finite(input) {
        return Ok(());
    }
    let index = input.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(ExecError::NonFiniteInput { index, per_sample })
}

/// A frozen conv's weights packed into panels, and which parameter slice (address, length)
/// they were made from (an eval forward uses them only for that same slice).
#[derive(Clone, Debug)]
struct PackedConv {
    src: (usize, usize),
    panels: LineBuf,
}

impl Executor {
    /// An executor for batches of up to `max_batch` samples of `prog` on `threads` threads
    /// (both at least 1; 0 is taken as 1), with the best kernel path of this CPU.
    ///
    /// # Panics
    /// If the buffers of `max_batch` samples would not fit in the address space
    /// ([`ExecError::BatchTooLarge`]); [`Executor::try_new`] returns that error instead.
    pub fn new(prog: &Program, max_batch: usize, threads: usize) -> Executor {
        Executor::with_isa(prog, max_batch, threads, Isa::detect())
    }

    /// Like [`Executor::new`] with an explicit kernel path.
    ///
    /// # Panics
    /// As [`Executor::new`]; [`Executor::try_with_isa`] returns the error instead.
    pub fn with_isa(prog: &Program, max_batch: usize, threads: usize, isa: Isa) -> Executor {
        Executor::try_with_isa(prog, max_batch, threads, isa).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Executor::new`], with [`ExecError::BatchTooLarge`] for a `max_batch` whose
    /// buffers (activations, gradients and the threads' temporaries, sized with checked
    /// arithmetic) would not fit in the address space. The buffers are allocated at once: a
    /// batch that fits the address space but not the memory fails as any allocation does.
    pub fn try_new(prog: &Program, max_batch: usize, threads: usize) -> Result<Executor, ExecError> {
        Executor::try_with_isa(prog, max_batch, threads, Isa::detect())
    }

    /// Bytes of the buffers an executor of `prog` for `max_batch` samples on `threads` threads
    /// sizes by the batch (activations, their gradients, the threads' temporaries), computed
    /// without allocating; `None` where [`Executor::try_new`] gives [`ExecError::BatchTooLarge`].
    pub fn buffer_bytes(prog: &Program, max_batch: usize, threads: usize) -> Option<usize> {
        let max_batch = max_batch.max(1);
        let numel: Vec<usize> = prog.tensors().iter().map(|t| t.shape.numel()).collect();
        batch_buffer_bytes(&numel, max_batch, threads.clamp(1, max_batch))
    }

    /// Like [`Executor::try_new`] with an explicit kernel path.
    pub fn try_with_isa(prog: &Program, max_batch: usize, threads: usize, isa: Isa) -> Result<Executor, ExecError> {
        let max_batch = max_batch.max(1);
        let threads = threads.clamp(1, max_batch);
        let numel: Vec<usize> = prog.tensors().iter().map(|t| t.shape.numel()).collect();
        if batch_buffer_bytes(&numel, max_batch, threads).is_none() {
            return Err(ExecError::BatchTooLarge { max_batch });
        }
        let acts = numel.iter().map(|&e| LineBuf::zeros(e * max_batch)).collect();
        let mut bn_ord = Vec::with_capacity(prog.ops().len());
        let mut bn_channels = Vec::new();
        let mut slots = Vec::new();
        let mut op_slots = Vec::with_capacity(prog.ops().len());
        for (i, op) in prog.ops().iter().enumerate() {
            bn_ord.push(if op.kind == OpKind::BatchNorm {
                bn_channels.push(prog.tensor(op.output).shape.c as usize);
                Some(bn_channels.len() - 1)
            } else {
                None
            });
            let mut pair = [None; 2];
            for spec in prog.params(op).iter().filter(|p| p.kind() == VarKind::Parameter) {
                let k = usize::from(spec.role == ParamRole::Offset);
                pair[k] = Some(slots.len());
                slots.push(GradSlot {
                    name: spec.name().to_string(),
                    op: i,
                    bn: op.kind == OpKind::BatchNorm,
                    grad: LineBuf::zeros(spec.dims.numel()),
                    finite: true,
                });
            }
            op_slots.push(pair);
        }
        let chunk = max_batch.div_ceil(threads);
        let scratch_len = prog
            .ops()
            .iter()
            .filter(|op| matches!(op.kind, OpKind::Conv { .. }))
            // Taller im2col tiles than the kernels' minimum (see IM2COL_TILE_ROWS).
            .map(|op| prog.conv2d(op, chunk).scratch_len() * (IM2COL_TILE_ROWS / IM2COL_ROWS))
            .max()
            .unwrap_or(0);
        // Twice the largest chunk tensor: residual add+ReLU keeps its gradient and an accumulator.
        let tmp_len = 2 * numel.iter().max().copied().unwrap_or(0) * chunk;
        let max_c = bn_channels.iter().copied().max().unwrap_or(0);
        let workers = (0..threads)
            .map(|_| Worker {
                scratch: LineBuf::zeros(scratch_len),
                tmp: LineBuf::zeros(tmp_len),
                stage: LineBuf::default(),
                bn: bn_channels
                    .iter()
                    .map(|&c| BnSaved { count: 0, mean: vec![0.0; c], m2: vec![0.0; c], invstd: vec![0.0; c] })
                    .collect(),
                pgrads: Vec::new(),
                piece_finite: Vec::new(),
                dummy: [vec![0.0; max_c], vec![0.0; max_c]],
                times: Vec::new(),
                reduce_s: [0.0; 2],
            })
            .collect();
        Ok(Executor {
            prog: *prog,
            isa,
            max_batch,
            threads,
            numel,
            bn_ord,
            acts,
            grads: Vec::new(),
            slots,
            op_slots,
            workers,
            arenas: Vec::new(),
            last: None,
            input_grad: false,
            packed: vec![None; prog.ops().len()],
            sync_every_op: false,
            folded: vec![None; prog.ops().len()],
            fused_away: vec![false; prog.ops().len()],
            unwritten: vec![false; prog.tensors().len()],
            last_folded: false,
            eval_unneeded: vec![false; prog.tensors().len()],
            eval_target: vec![false; prog.tensors().len()],
            eval_recycles: false,
            last_recycled: false,
            train_panels: prog
                .ops()
                .iter()
                .map(|op| {
                    let s = prog.conv2d(op, 1);
                    let taps = s.kh * s.kw;
                    let few_rows = s.out_h() * s.out_w() <= TRAIN_PANEL_MAX_PIXELS;
                    let packs = few_rows && panels::deep_enough(taps, s.c_in) && s.only_tap().is_none();
                    // Only on the x86 SIMD paths ([`TRAIN_PANEL_MAX_PIXELS`]).
                    let wins = matches!(isa.kind(), IsaKind::Avx512 | IsaKind::Avx2);
                    (matches!(op.kind, OpKind::Conv { .. }) && packs && wins).then(|| TrainPanels {
                        src: (0, 0),
                        fwd: LineBuf::zeros(panels::panels_len(taps, s.c_in, s.c_out)),
                        bwd: LineBuf::zeros(panels::panels_len(taps, s.c_out, s.c_in)),
                    })
                })
                .collect(),
            fc_packed: prog
                .ops()
                .iter()
                .map(|op| {
                    let len =
                        matches!(op.kind, OpKind::Fc).then(|| linear::narrow_packed_len(isa, &prog.linear(op, 1)));
                    len.flatten().map(LineBuf::zeros)
                })
                .collect(),
            bn_relu: vec![None; prog.ops().len()],
            relu_in_bn: vec![false; prog.ops().len()],
            bn_relu_skipped: vec![false; prog.tensors().len()],
            last_fused: false,
        })
    }

    /// The program.
    pub fn program(&self) -> &Program {
        &self.prog
    }

    /// The kernel path.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The largest batch.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The number of threads (at most [`Executor::max_batch`]).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The batch of the last forward (0 before the first).
    pub fn batch(&self) -> usize {
        self.last.map_or(0, |(n, _)| n)
    }

    /// Whether [`Executor::backward`] also computes the gradient of the input `image`
    /// (off by default: training does not need it).
    pub fn set_input_grad(&mut self, on: bool) {
        self.input_grad = on;
    }

    /// The values of tensor `id` for the last forward's batch (`batch · h·w·c`, NHWC or NC).
    /// For `image` after an eval-mode forward (which keeps no copy of the input) the values are
    /// those of the last train-mode forward.
    ///
    /// # Panics
    /// If the last forward ran convs folded by [`Executor::fold_frozen`] and `id` is one of the
    /// intermediate tensors they skip (keep it in `fold_frozen`'s list to read it), or if the
    /// last forward was an eval one that skipped the op writing `id`
    /// ([`Executor::set_eval_targets`]). Also if `id` is not a tensor of this program (ids come
    /// from [`Executor::program`]); [`Executor::activation`] looks a tensor up by name and
    /// returns `None` instead of panicking.
    pub fn tensor(&self, id: TensorId) -> &[f32] {
        if let Err(e) = self.check_id(id) {
            panic!("{e}");
        }
        assert!(
            !self.is_unwritten(id),
            "tensor {} was skipped by the last forward (folded away or written over by \
             Executor::fold_frozen, or not needed by Executor::set_eval_targets); list it in `keep` \
             or the targets to read it",
            self.prog.tensor(id).name
        );
        &self.acts[id.index()][..self.batch() * self.numel[id.index()]]
    }

    /// [`ExecError::UnknownTensor`] if `id` is not a tensor of this program.
    fn check_id(&self, id: TensorId) -> Result<(), ExecError> {
        let tensors = self.numel.len();
        if id.index() < tensors {
            Ok(())
        } else {
            Err(ExecError::UnknownTensor { id, tensors })
        }
    }

    /// Whether tensor `id` was skipped by the last forward: folded away, or written by an op
    /// [`Executor::set_eval_targets`] skips in an eval forward.
    fn is_unwritten(&self, id: TensorId) -> bool {
        (self.last_folded && self.unwritten[id.index()])
            || (self.last_fused && self.bn_relu_skipped[id.index()])
            || (matches!(self.last, Some((_, Mode::Eval))) && self.eval_unneeded[id.index()])
            || (self.last_recycled && id.index() != 0 && !self.eval_target[id.index()])
    }

    /// The tensor called `name` (aliases resolved by [`Program::find`]) with its dims for the
    /// last batch, or `None` if the program has no such tensor.
    /// `None` too for a tensor the last forward's folded convs skipped ([`Executor::fold_frozen`]).
    pub fn activation(&self, name: &str) -> Option<(&[f32], Dims)> {
        let id = self.prog.find(name)?;
        if self.is_unwritten(id) {
            return None;
        }
        Some((self.tensor(id), self.prog.tensor(id).shape.dims(self.batch())))
    }

    /// The logits of the last forward (`batch · classes`; empty before any forward).
    ///
    /// # Panics
    /// If the last forward was an eval one restricted by [`Executor::set_eval_targets`] to
    /// targets that do not include the logits (as the trainer's teacher executor is, to the
    /// tensors its losses read: [`Trainer::teacher`](super::Trainer::teacher)), so they were
    /// not computed. `activation(<name of the output>)` returns `None` instead.
    pub fn logits(&self) -> &[f32] {
        self.tensor(self.prog.output())
    }

    /// The input (`image`) of the last train-mode forward: `batch()` samples, empty before any
    /// forward. An eval-mode forward reads its input in place and keeps no copy, so after one
    /// this is the start of the last train-mode input (zeros if there was none), not the
    /// eval input. Never panics.
    pub fn input(&self) -> &[f32] {
        self.tensor(self.prog.input())
    }

    /// The gradient of the input (`image`) after the last backward, computed when
    /// [`Executor::set_input_grad`] is on (`None` before any backward, and for every other
    /// tensor: the backward reuses the buffer of each gradient it has consumed for the next
    /// one it writes).
    pub fn tensor_grad(&self, id: TensorId) -> Option<&[f32]> {
        if id != self.prog.input() {
            return None;
        }
        self.grads.get(id.index()).map(|g| &g[..self.batch() * self.numel[id.index()]])
    }

    /// The gradient of the trainable parameter `name` after the last backward.
    pub fn param_grad(&self, name: &str) -> Option<&[f32]> {
        self.slots.iter().find(|s| s.name == name).map(|s| &s.grad[..])
    }

    /// Every trainable parameter's name and gradient, in program order.
    pub fn param_grads(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.grad[..]))
    }

    /// The first trainable parameter (in program order) whose gradient after the last
    /// [`Executor::backward`] holds a NaN or an infinity, with that gradient; `None` when every
    /// gradient is finite. Known without a scan: the backward checks each gradient as it sums
    /// it, while it is in cache.
    pub fn non_finite_grad(&self) -> Option<(&str, &[f32])> {
        self.slots.iter().find(|s| !s.finite).map(|s| (s.name.as_str(), &s.grad[..]))
    }

    /// Runs the forward pass in `mode` on the NHWC batch `input` (`n · h·w·c` normalised
    /// values, `1 ≤ n ≤ max_batch`). Train mode updates the running statistics in `params`.
    pub fn forward(&mut self, params: &mut ParamStore, input: &[f32], mode: Mode) -> Result<(), ExecError> {
        match mode {
            Mode::Train => self.forward_train(params, input),
            Mode::Eval => self.forward_eval(params, input),
        }
    }

    /// Packs the few-pixel convs' weights ([`TrainPanels`]), the layers split over
    /// the threads.
    fn pack_train_panels(&mut self, ops: &[OpParams<'_>]) -> Result<(), ExecError> {
        if self.train_panels.iter().all(Option::is_none) {
            return Ok(());
        }
        let (prog, isa) = (self.prog, self.isa);
        let layers: Vec<(usize, &mut TrainPanels)> =
            self.train_panels.iter_mut().enumerate().filter_map(|(i, tp)| Some((i, tp.as_mut()?))).collect();
        let mine = share_out(layers, self.threads, |(_, tp)| tp.fwd.len());
        let results = run_threads(mine.into_iter().map(|layers| {
            move || {
                for (i, tp) in layers {
                    let op = &prog.ops()[i];
                    tp.pack(isa, &prog.conv2d(op, 1), ops[i].weights)
                        .map_err(|err| ExecError::Kernel { layer: op.name, err })?;
                }
                Ok(())
            }
        }));
        results.into_iter().collect()
    }

    /// Packs the fcs' weights for the GEMM's narrow path ([`Executor::fc_packed`]), on this
    /// thread (10 K values per fc).
    fn pack_fcs(&mut self, ops: &[OpParams<'_>]) -> Result<(), ExecError> {
        for (i, wp) in self.fc_packed.iter_mut().enumerate() {
            let Some(wp) = wp else { continue };
            let op = &self.prog.ops()[i];
            linear::pack_narrow(self.isa, &self.prog.linear(op, 1), ops[i].weights, wp)
                .map_err(|err| ExecError::Kernel { layer: op.name, err })?;
        }
        Ok(())
    }

    /// Train-mode forward: batch statistics, running statistics of `params` updated. An input
    /// with a NaN or infinite value is refused ([`ExecError::NonFiniteInput`]) before anything
    /// is written.
    pub fn forward_train(&mut self, params: &mut ParamStore, input: &[f32]) -> Result<(), ExecError> {
        let n = self.batch_of(input)?;
        check_finite(input, self.numel[0])?;
        self.last = None;
        self.run_forward(params, input, n, Mode::Train)?;
        // Running statistics, once, from thread 0's copy of the merged moments (every thread
        // holds the same bits).
        let mut invstd = Vec::new();
        for (i, op) in self.prog.ops().iter().enumerate() {
            let Some(b) = self.bn_ord[i] else { continue };
            let saved = &self.workers[0].bn[b];
            invstd.resize(saved.mean.len(), 0.0);
            let (rm, rv) = stats_mut(params, op.name)?;
            norm::bn_finish_moments(self.isa, BN, saved.count, &saved.mean, &saved.m2, rm, rv, &mut invstd)
                .map_err(|err| ExecError::Kernel { layer: op.name, err })?;
        }
        self.last = Some((n, Mode::Train));
        Ok(())
    }

    /// Eval-mode forward: batch norm with the running statistics of `params`, which are
    /// never changed. Reads `input` in place (no copy). An input with a NaN or infinite value
    /// is refused ([`ExecError::NonFiniteInput`]).
    pub fn forward_eval(&mut self, params: &ParamStore, input: &[f32]) -> Result<(), ExecError> {
        let n = self.batch_of(input)?;
        check_finite(input, self.numel[0])?;
        self.eval_batch(params, input, n)
    }

    /// [`Executor::forward_eval`] of an input already checked finite (the teacher's forward
    /// on the input the student's train forward checked).
    pub(crate) fn forward_eval_of_finite(&mut self, params: &ParamStore, input: &[f32]) -> Result<(), ExecError> {
        let n = self.batch_of(input)?;
        self.eval_batch(params, input, n)
    }

    /// The eval forward of a batch of `n` checked samples.
    fn eval_batch(&mut self, params: &ParamStore, input: &[f32], n: usize) -> Result<(), ExecError> {
        self.last = None;
        self.run_forward(params, input, n, Mode::Eval)?;
        self.last = Some((n, Mode::Eval));
        Ok(())
    }

    /// Packs the weights of the convs of `params` whose output maps have at most
    /// [`PACK_MAX_PIXELS`] pixels (KxK ones with at least 8 input channels) into panels,
    /// which later **eval** forwards with these same parameter slices use
    /// ([`conv::conv2d_fwd_panels`]): one contiguous weight stream, no per-call weight
    /// packing, and the taps a tile only reads as padding skipped (at a 1x1 map a 3x3 conv
    /// does 1/9 of the work). For a frozen teacher, whose parameters never change; a forward
    /// with other parameter slices runs from those. Measured on ResNet50 at 32x32, 32 images
    /// per thread: 67 → 55 ms for its convs (the 8x8 maps are slightly faster unpacked).
    pub fn pack_frozen_convs(&mut self, params: &ParamStore) -> Result<(), ExecError> {
        let ops = self.resolve(params)?;
        let prog = self.prog;
        for (i, op) in prog.ops().iter().enumerate() {
            self.packed[i] = None;
            if matches!(op.kind, OpKind::Conv { .. }) {
                self.pack_one(i, ops[i].weights)?;
            }
        }
        Ok(())
    }

    /// Packs conv op `i`'s weights `w` into `packed[i]` if its map is small enough.
    fn pack_one(&mut self, i: usize, w: &[f32]) -> Result<(), ExecError> {
        let op = &self.prog.ops()[i];
        let panels = small_map_panels(&self.prog.conv2d(op, 1), w, false)
            .map_err(|err| ExecError::Kernel { layer: op.name, err })?;
        self.packed[i] = panels.map(|panels| PackedConv { src: (w.as_ptr() as usize, w.len()), panels });
        Ok(())
    }

    /// With `on`, every thread waits for the others after each op of a forward or backward,
    /// as op-level ("GEMM-level") parallelism must — each op split over the threads, the next
    /// one starting when all are done — instead of only at the batch norms. The values computed
    /// are the same; only the synchronisation changes. It exists to measure what batch-level
    /// parallelism saves (`tinykd bench distill-step --sync op`); it is an upper bound for
    /// GEMM-level threading, which would also run the ops between GEMMs on one thread.
    pub fn set_sync_every_op(&mut self, on: bool) {
        self.sync_every_op = on;
    }

    /// Folds every conv of the frozen parameters `params` whose output only feeds a batch
    /// norm into it (`w·s`, bias `β − μ·s`, `s = γ/√(σ² + ε)`), and the ReLU after that batch
    /// norm too when the batch norm's output only feeds it. Later **eval** forwards with these
    /// same parameter slices run one conv with bias and activation per such chain and write
    /// its last output directly: the conv's output (and the batch norm's, when a ReLU is
    /// folded) is then not computed. Tensors in `keep` (what the losses read) are never
    /// skipped. Convs on maps of at most [`PACK_MAX_PIXELS`] pixels are packed into panels as
    /// by [`Executor::pack_frozen_convs`]. A pointwise conv whose batch norm feeds a residual
    /// add + ReLU, where it is the last reader of the add's other input, is packed too and
    /// writes its output over that input in place (which is then no longer readable either).
    /// For a frozen teacher: on the tutorial's step it removes the teacher's batch norm and ReLU
    /// passes (6–7 % of the step's thread time). The folded outputs differ from the unfolded
    /// ones by rounding only.
    pub fn fold_frozen(&mut self, params: &ParamStore, keep: &[TensorId]) -> Result<(), ExecError> {
        let ops = self.resolve(params)?;
        let prog = self.prog;
        let all = prog.ops();
        let sole_reader = sole_readers(&prog, keep);
        self.folded.iter_mut().for_each(|f| *f = None);
        self.fused_away.fill(false);
        self.unwritten.fill(false);
        for (i, op) in all.iter().enumerate() {
            self.packed[i] = None;
            if !matches!(op.kind, OpKind::Conv { .. }) {
                continue;
            }
            let Some(j) = sole_reader(op.output, i).filter(|&j| all[j].kind == OpKind::BatchNorm) else {
                // Not folded: packed as stored, as by `pack_frozen_convs`.
                self.pack_one(i, ops[i].weights)?;
                continue;
            };
            let relu = sole_reader(all[j].output, j).filter(|&r| all[r].kind == OpKind::Relu);
            // A residual add + ReLU whose other input exists before this conv runs (at the
            // end of a ResNet block: the block input, or the main branch for the shortcut conv).
            let add = sole_reader(all[j].output, j).filter(|&a| all[a].kind == OpKind::AddRelu).and_then(|a| {
                let other = *all[a].inputs().iter().find(|&&t| t != all[j].output)?;
                (other.index() < op.output.index()).then_some((a, other))
            });
            let s = prog.conv2d(op, 1);
            // The residual overwritten in place: no op after this conv reads it but the add, and
            // neither it nor the add's output is kept, the input image or the program's output.
            let in_place = add.is_some_and(|(a, other)| {
                let (free, y) = (|t: TensorId| !keep.contains(&t) && t != prog.output(), all[a].output);
                s.is_pointwise()
                    && other.index() != 0
                    && free(other)
                    && free(y)
                    && all.iter().enumerate().all(|(r, o)| r < i || r == a || !o.inputs().contains(&other))
            });
            let (w, bn) = (ops[i].weights, &ops[j]);
            let mut wf = LineBuf::zeros(w.len());
            let mut bias = vec![0.0f32; s.c_out];
            let kernel = |err| ExecError::Kernel { layer: op.name, err };
            norm::bn_fold(s.c_out, BN.eps, w, bn.scale, bn.offset, bn.mean, bn.var, &mut wf, &mut bias)
                .map_err(kernel)?;
            // An in-place conv runs over panels whatever its map size.
            let (weights, packed) = match small_map_panels(&s, &wf, in_place).map_err(kernel)? {
                Some(p) => (p, true),
                None => (wf, false),
            };
            let at = |x: &[f32]| (x.as_ptr() as usize, x.len());
            let out = match (relu, add) {
                (Some(r), _) => all[r].output,
                (None, Some((a, _))) => all[a].output,
                (None, None) => all[j].output,
            };
            self.unwritten[op.output.index()] = true;
            self.fused_away[j] = true;
            if let Some(r) = relu.or(add.map(|(a, _)| a)) {
                self.unwritten[all[j].output.index()] = true;
                self.fused_away[r] = true;
            }
            if let Some((_, other)) = add.filter(|_| in_place) {
                // After the forward the output's values are in the residual's buffer.
                self.unwritten[other.index()] = true;
                self.unwritten[out.index()] = true;
            }
            self.folded[i] = Some(FoldedConv {
                bn: j,
                src: [at(w), at(bn.scale), at(bn.offset), at(bn.mean), at(bn.var)],
                weights,
                packed,
                bias,
                act: if relu.is_some() { Act::Relu } else { Act::None },
                out,
                residual: add.map(|(_, other)| other),
                in_place,
            });
        }
        Ok(())
    }

    /// Runs each batch norm whose output only a ReLU reads as one op with that ReLU, in train
    /// and eval forwards (one pass, [`norm::bn_train_apply`] / [`norm::bn_infer_fwd`] with
    /// [`Act::Relu`], writes the ReLU's output) and in the backward (the ReLU's gate applied
    /// inside the batch norm's two passes, [`norm::bn_bwd_partial_sums`]): two fewer passes
    /// over each such activation forward and two backward, bit-identical results. The batch
    /// norm's own output is then never written, so it can be neither read
    /// ([`Executor::activation`] is `None`) nor seeded ([`ExecError::NotKept`]): list in `keep`
    /// the tensors a loss reads. Not applied in forwards running folded convs
    /// ([`Executor::fold_frozen`]). Calling it again replaces the previous choice.
    pub fn fuse_bn_relu(&mut self, keep: &[TensorId]) {
        let prog = self.prog;
        let sole_reader = sole_readers(&prog, keep);
        self.bn_relu.fill(None);
        self.relu_in_bn.fill(false);
        self.bn_relu_skipped.fill(false);
        for (j, op) in prog.ops().iter().enumerate() {
            if op.kind != OpKind::BatchNorm {
                continue;
            }
            if let Some(r) = sole_reader(op.output, j).filter(|&r| prog.ops()[r].kind == OpKind::Relu) {
                self.bn_relu[j] = Some(r);
                self.relu_in_bn[r] = true;
                self.bn_relu_skipped[op.output.index()] = true;
            }
        }
    }

    /// Restricts later **eval** forwards to the ops that some tensor of `targets` depends on
    /// (`None`: every op, the default). A frozen teacher's losses read one or two of its
    /// tensors; on the tutorial's step (hint `bn5c_branch2b`) this skips ResNet50's last
    /// pointwise conv, residual add, pool and fc. The tensors of skipped ops refuse to be read
    /// as the folded-away ones do ([`Executor::tensor`] panics, [`Executor::activation`] is
    /// `None`), the logits included unless listed. Train forwards run every op.
    /// With targets set, a forward running folded convs ([`Executor::fold_frozen`]) also writes
    /// each output into the buffer of a tensor no later op reads, most recently freed first,
    /// instead of its own buffer last touched a forward ago; then only the targets (and the
    /// input) can be read after it. A target that is not a tensor of this program is refused
    /// ([`ExecError::UnknownTensor`]) and the previous choice kept.
    pub fn set_eval_targets(&mut self, targets: Option<&[TensorId]>) -> Result<(), ExecError> {
        targets.unwrap_or_default().iter().try_for_each(|&t| self.check_id(t))?;
        self.eval_unneeded.fill(false);
        self.eval_target.fill(false);
        self.eval_recycles = targets.is_some();
        let Some(targets) = targets else { return Ok(()) };
        let mut needed = vec![false; self.numel.len()];
        for t in targets {
            needed[t.index()] = true;
            self.eval_target[t.index()] = true;
        }
        for op in self.prog.ops().iter().rev() {
            if needed[op.output.index()] {
                for x in op.inputs() {
                    needed[x.index()] = true;
                }
            } else {
                self.eval_unneeded[op.output.index()] = true;
            }
        }
        Ok(())
    }

    /// The [`RecyclePlan`] of a folded eval forward with the current targets.
    fn recycle_plan(&self) -> RecyclePlan {
        let ops = self.prog.ops();
        let mut last_read = vec![None; self.numel.len()];
        let mut writes = vec![None; ops.len()];
        for (i, op) in ops.iter().enumerate() {
            if self.eval_unneeded[op.output.index()] || self.fused_away[i] {
                continue; // skipped, or done by a folded conv
            }
            let (out, residual, in_place) = match &self.folded[i] {
                Some(f) => (f.out, f.residual, f.in_place),
                None => (op.output, None, false),
            };
            for t in op.inputs().iter().chain(residual.as_ref()) {
                last_read[t.index()] = Some(i);
            }
            // An in-place conv's output takes its residual's buffer.
            if !in_place && !self.eval_target[out.index()] {
                writes[i] = Some(out.index());
            }
        }
        let mut dies = vec![Vec::new(); ops.len()];
        for (t, last) in last_read.iter().enumerate() {
            if let Some(i) = *last {
                if t != 0 && !self.eval_target[t] {
                    dies[i].push(t);
                }
            }
        }
        RecyclePlan { writes, dies }
    }

    /// Starts (or stops) timing every op of every thread, from zero. The times include a
    /// thread's wait for the others where they meet (batch norms in training).
    pub fn set_profiling(&mut self, on: bool) {
        let n = if on { self.prog.ops().len() } else { 0 };
        for w in &mut self.workers {
            w.times = vec![[0.0; 2]; n];
            w.reduce_s = [0.0; 2];
        }
    }

    /// While profiling: seconds spent at reduce time since profiling started, summed over the
    /// threads and not part of any op's [`Self::op_times`]: summing per-thread weight
    /// gradients, and computing the late layers' whole-batch ones.
    pub fn reduce_seconds(&self) -> [f64; 2] {
        self.workers.iter().fold([0.0; 2], |[a, b], w| [a + w.reduce_s[0], b + w.reduce_s[1]])
    }

    /// While profiling: per op (in program order), its name, kind and the seconds its
    /// forward and backward took since profiling started, summed over the threads.
    pub fn op_times(&self) -> Vec<(Name, OpKind, [f64; 2])> {
        let ops = self.prog.ops();
        (0..ops.len())
            .filter(|&i| self.workers.iter().any(|w| w.times.len() > i))
            .map(|i| {
                let mut t = [0.0; 2];
                for w in self.workers.iter().filter(|w| w.times.len() > i) {
                    t[0] += w.times[i][0];
                    t[1] += w.times[i][1];
                }
                (ops[i].name, ops[i].kind, t)
            })
            .collect()
    }

    /// The batch size of `input`, checked.
    fn batch_of(&self, input: &[f32]) -> Result<usize, ExecError> {
        let per = self.numel[0];
        let n = input.len().checked_div(per).unwrap_or(0);
        if n == 0 || n > self.max_batch || n * per != input.len() {
            return Err(ExecError::InputLen { per_sample: per, max_batch: self.max_batch, got: input.len() });
        }
        Ok(n)
    }

    /// The sample ranges of the threads for a batch of `n`.
    fn chunks(&self, n: usize) -> Vec<Range<usize>> {
        let t = self.threads.min(n);
        let (q, r) = (n / t, n % t);
        let mut start = 0;
        (0..t)
            .map(|k| {
                let len = q + usize::from(k < r);
                start += len;
                start - len..start
            })
            .collect()
    }

    /// The parameter slices of every op, checked against the program.
    fn resolve<'a>(&self, store: &'a ParamStore) -> Result<Vec<OpParams<'a>>, ExecError> {
        let mut out = Vec::with_capacity(self.prog.ops().len());
        for (i, op) in self.prog.ops().iter().enumerate() {
            let mut p = OpParams { slots: self.op_slots[i], ..OpParams::default() };
            for spec in self.prog.params(op).iter() {
                let name = spec.name();
                let got = store.get(name.as_str()).ok_or_else(|| ExecError::MissingParam { name: name.to_string() })?;
                if got.dims != spec.dims.as_slice() {
                    return Err(ExecError::ParamDims {
                        name: name.to_string(),
                        expected: spec.dims,
                        got: got.dims.clone(),
                    });
                }
                if got.data.len() != spec.dims.numel() {
                    return Err(ExecError::ParamLen {
                        name: name.to_string(),
                        dims: spec.dims,
                        expected: spec.dims.numel(),
                        got: got.data.len(),
                    });
                }
                let data = got.data.as_slice();
                match spec.role {
                    ParamRole::Weights | ParamRole::Bias => p.weights = data,
                    ParamRole::Scale => p.scale = data,
                    ParamRole::Offset => p.offset = data,
                    ParamRole::Mean => p.mean = data,
                    ParamRole::Variance => p.var = data,
                }
            }
            out.push(p);
        }
        Ok(out)
    }

    /// Runs the forward pass of a batch of `n` on the threads.
    fn run_forward(&mut self, params: &ParamStore, input: &[f32], n: usize, mode: Mode) -> Result<(), ExecError> {
        let ops = self.resolve(params)?;
        if mode == Mode::Train {
            self.pack_train_panels(&ops)?;
        }
        self.pack_fcs(&ops)?;
        let at = |x: &[f32]| (x.as_ptr() as usize, x.len());
        // The folded convs apply only to the parameter slices they were made from.
        let use_fold = mode == Mode::Eval
            && self.folded.iter().any(Option::is_some)
            && self.folded.iter().enumerate().all(|(i, f)| {
                f.as_ref().is_none_or(|f| {
                    let b = &ops[f.bn];
                    f.src == [at(ops[i].weights), at(b.scale), at(b.offset), at(b.mean), at(b.var)]
                })
            });
        self.last_folded = use_fold;
        self.last_fused = !use_fold && self.bn_relu.iter().any(Option::is_some);
        let recycle = (use_fold && self.eval_recycles).then(|| self.recycle_plan());
        self.last_recycled = recycle.is_some();
        let chunks = self.chunks(n);
        let t = chunks.len();
        let (first, rest) = self.acts.split_first_mut().expect("a program has an input tensor");
        let image: &[f32] = match mode {
            Mode::Train => {
                first[..input.len()].copy_from_slice(input);
                &first[..input.len()]
            }
            Mode::Eval => input,
        };
        let mut views = split_views(rest, &self.numel[1..], &chunks);
        let n_bn = self.workers[0].bn.len();
        let slots: Vec<OnceLock<Moments>> = (0..n_bn * t).map(|_| OnceLock::new()).collect();
        let barrier = SpinBarrier::new(t);
        let ctx = Ctx {
            prog: &self.prog,
            isa: self.isa,
            ops: &ops,
            packed: &self.packed,
            bn_ord: &self.bn_ord,
            numel: &self.numel,
            chunks: &chunks,
            barrier: &barrier,
            slots: &slots,
            sync_every_op: self.sync_every_op,
            folded: if use_fold { &self.folded } else { &[] },
            fused_away: &self.fused_away,
            skip: if mode == Mode::Eval { &self.eval_unneeded } else { &[] },
            train_panels: if mode == Mode::Train { &self.train_panels } else { &[] },
            fc_packed: &self.fc_packed,
            bn_relu: if use_fold { &[] } else { &self.bn_relu },
            relu_in_bn: if use_fold { &[] } else { &self.relu_in_bn },
            recycle: recycle.as_ref(),
            arenas: &[],
            reduce: None,
        };
        let images: Vec<&[f32]> =
            chunks.iter().map(|r| &image[r.start * self.numel[0]..r.end * self.numel[0]]).collect();
        let jobs = views.drain(..).zip(images).zip(self.workers.iter_mut()).enumerate();
        let results = run_threads(jobs.map(|(k, ((v, img), w))| {
            let ctx = &ctx;
            move || forward_chunk(ctx, k, mode, img, v, w)
        }));
        results.into_iter().collect()
    }

    /// Backpropagates gradients seeded at tensors (`seeds`: tensor and its gradient for the
    /// whole batch; several seeds on one tensor add up) through the last train-mode forward,
    /// down to every trainable parameter (and to the input if [`Executor::set_input_grad`]).
    /// `params` must be the store the forward ran with (its running statistics may have been
    /// updated since; only weights, γ and β are read; the few-pixel convs' input
    /// gradients use the weights that forward packed, [`TRAIN_PANEL_MAX_PIXELS`]). A seed at
    /// an id that is not a tensor of this program is refused ([`ExecError::UnknownTensor`]).
    pub fn backward(&mut self, params: &ParamStore, seeds: &[(TensorId, &[f32])]) -> Result<(), ExecError> {
        let n = match self.last {
            Some((n, Mode::Train)) => n,
            _ => return Err(ExecError::NoTrainForward),
        };
        for &(id, g) in seeds {
            self.check_id(id)?;
            if self.last_fused && self.bn_relu_skipped[id.index()] {
                return Err(ExecError::NotKept { tensor: self.prog.tensor(id).name });
            }
            let expected = n * self.numel[id.index()];
            if g.len() != expected {
                return Err(ExecError::SeedLen { tensor: self.prog.tensor(id).name, expected, got: g.len() });
            }
        }
        let ops = self.resolve(params)?;
        if self.grads.is_empty() {
            self.grads = self.numel.iter().map(|&e| LineBuf::zeros(e * self.max_batch)).collect();
        }
        let plan = self.plan(seeds);
        let mut seeded = vec![false; self.numel.len()];
        for &(id, g) in seeds {
            let dst = &mut self.grads[id.index()][..g.len()];
            if seeded[id.index()] {
                act::add_inplace(self.isa, dst, g)
                    .map_err(|err| ExecError::Kernel { layer: self.prog.tensor(id).name, err })?;
            } else {
                dst.copy_from_slice(g);
                seeded[id.index()] = true;
            }
        }
        let chunks = self.chunks(n);
        let t = chunks.len();
        for w in &mut self.workers[..t] {
            if w.pgrads.is_empty() {
                w.pgrads = self.slots.iter().map(|s| LineBuf::zeros(if s.bn { s.grad.len() } else { 0 })).collect();
            }
            w.piece_finite.clear();
            w.piece_finite.resize(self.slots.len(), true);
        }
        let rp = self.reduce_plan(&plan, n);
        while self.arenas.len() < t {
            self.arenas.push([RwLock::new(LineBuf::default()), RwLock::new(LineBuf::default())]);
        }
        for a in self.arenas[..t].iter_mut().flatten() {
            let a = a.get_mut().unwrap_or_else(PoisonError::into_inner);
            if a.len() < rp.arena_len {
                *a = LineBuf::zeros(rp.arena_len);
            }
        }
        // Each placed slot's gradient cut into one piece per thread (on cache lines), indexed by slot.
        let mut pieces: Vec<Pieces<'_>> = (0..t).map(|_| (0..self.slots.len()).map(|_| None).collect()).collect();
        for (s, slot) in self.slots.iter_mut().enumerate().filter(|(s, _)| rp.place[*s].is_some()) {
            let len = slot.grad.len();
            // A whole-batch slot's pieces are whole rows of dW (one GEMM each).
            let row = rp.whole[s].as_ref().map_or(1, |wh| wh.c_out);
            let mut rest: &mut [f32] = &mut slot.grad;
            let mut start = 0;
            for (k, mine) in pieces.iter_mut().enumerate() {
                let end = if k + 1 == t {
                    len
                } else if row > 1 {
                    len / row * (k + 1) / t * row
                } else {
                    (len * (k + 1) / t).next_multiple_of(16).min(len)
                };
                let (piece, tail) = std::mem::take(&mut rest).split_at_mut(end - start);
                mine[s] = Some((start, piece));
                (rest, start) = (tail, end);
            }
        }
        let views = split_views(&mut self.grads, &self.numel, &chunks);
        let n_bn = self.workers[0].bn.len();
        let slots: Vec<OnceLock<Moments>> = (0..n_bn * t).map(|_| OnceLock::new()).collect();
        let barrier = SpinBarrier::new(t);
        let ctx = Ctx {
            prog: &self.prog,
            isa: self.isa,
            ops: &ops,
            packed: &self.packed,
            bn_ord: &self.bn_ord,
            numel: &self.numel,
            chunks: &chunks,
            barrier: &barrier,
            slots: &slots,
            sync_every_op: self.sync_every_op,
            folded: &[],
            fused_away: &self.fused_away,
            skip: &[],
            train_panels: &self.train_panels,
            fc_packed: &[],
            bn_relu: &self.bn_relu,
            relu_in_bn: &self.relu_in_bn,
            recycle: None,
            arenas: &self.arenas,
            reduce: Some(&rp),
        };
        let acts = &self.acts;
        let plan = &plan;
        let jobs = views.into_iter().zip(pieces).zip(self.workers.iter_mut()).enumerate();
        let results = run_threads(jobs.map(|(k, ((v, mut mine), w))| {
            let ctx = &ctx;
            move || backward_chunk(ctx, plan, k, acts, v, &mut mine, w)
        }));
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        // What the pass left: the last segment's sums (no batch norm after it), batch-norm γ/β
        // from thread 0, zeros for the slots of inactive ops.
        let mut clock = (!self.workers[0].times.is_empty()).then_some([0.0; 2]);
        let (isa, prog, workers) = (self.isa, &self.prog, &self.workers[..t]);
        let (acts, mut stage) = (&self.acts, LineBuf::default());
        let last = rp.segments.len() - 1;
        let arenas: Vec<_> =
            self.arenas[..t].iter().map(|a| a[last % 2].read().unwrap_or_else(PoisonError::into_inner)).collect();
        // Every gradient's finiteness, from the pieces' checks (batch-norm γ/β are checked here).
        let done = self.slots.iter_mut().enumerate().try_for_each(|(s, slot)| {
            slot.finite = true;
            if !plan.active[slot.op] {
                slot.grad.fill(0.0);
            } else if slot.bn {
                slot.grad.copy_from_slice(&workers[0].pgrads[s]);
                slot.finite = crate::engine::all_finite(&slot.grad);
            } else if rp.place[s].as_ref().is_some_and(|(seg, _)| *seg == last) {
                slot.finite =
                    reduce_slot(isa, &rp, s, &chunks, acts, &arenas, 0, &mut slot.grad, &mut stage, clock.as_mut())
                        .map_err(|err| ExecError::Kernel { layer: prog.ops()[slot.op].name, err })?;
            } else {
                slot.finite = workers.iter().all(|w| w.piece_finite[s]);
            }
            Ok(())
        });
        drop(arenas);
        if let Some([a, b]) = clock {
            self.workers[0].reduce_s[0] += a;
            self.workers[0].reduce_s[1] += b;
        }
        done
    }

    /// Which ops are reached by the seeded gradients, and how each delivers its input
    /// gradients (the first contribution to a tensor overwrites, later ones add).
    fn plan(&self, seeds: &[(TensorId, &[f32])]) -> BackwardPlan {
        let ops = self.prog.ops();
        let mut has = vec![false; self.numel.len()];
        for &(id, _) in seeds {
            has[id.index()] = true;
        }
        let mut active = vec![false; ops.len()];
        let mut deliver = vec![[Deliver::Skip; 2]; ops.len()];
        for (i, op) in ops.iter().enumerate().rev() {
            if !has[op.output.index()] {
                continue;
            }
            active[i] = true;
            for (j, &x) in op.inputs().iter().enumerate() {
                if x == self.prog.input() && !self.input_grad {
                    continue;
                }
                deliver[i][j] = if has[x.index()] { Deliver::Accumulate } else { Deliver::Overwrite };
                has[x.index()] = true;
            }
        }
        BackwardPlan { active, deliver }
    }

    /// The [`ReducePlan`] of a backward running `plan` over a batch of `n`.
    fn reduce_plan(&self, plan: &BackwardPlan, n: usize) -> ReducePlan {
        let ops = self.prog.ops();
        let mut segments = vec![Vec::new()];
        let mut place = vec![None; self.slots.len()];
        let mut ends = vec![None; ops.len()];
        let (mut used, mut arena_len) = (0, 0);
        for i in (0..ops.len()).rev().filter(|&i| plan.active[i]) {
            if self.bn_ord[i].is_some() {
                ends[i] = Some(segments.len() - 1);
                segments.push(Vec::new());
                used = 0;
                continue;
            }
            for &s in self.op_slots[i].iter().flatten() {
                let len = self.slots[s].grad.len();
                place[s] = Some((segments.len() - 1, used..used + len));
                // Each slot on its own cache lines.
                used += len.next_multiple_of(16);
                segments.last_mut().expect("one segment at least").push(s);
            }
            arena_len = arena_len.max(used);
        }
        let whole = self
            .slots
            .iter()
            .enumerate()
            .map(|(s, slot)| {
                let op = &ops[slot.op];
                let conv = matches!(op.kind, OpKind::Conv { .. }) && place[s].is_some() && !slot.bn;
                conv.then(|| Whole::of(&self.prog.conv2d(op, n), op.input())).flatten()
            })
            .collect();
        ReducePlan { segments, place, ends, arena_len, op: self.slots.iter().map(|s| s.op).collect(), whole }
    }
}

/// Thread `k`'s share of segment `seg`'s slots (`mine[slot]`: the offset of its piece in the
/// slot and the piece of the slot's gradient) summed over the threads' arenas in thread order.
/// A [`Whole`] slot's piece is computed instead ([`reduce_slot`], with the whole batch's
/// activations `acts` and the thread's `stage`). `finite[slot]` records whether the piece is.
#[allow(clippy::too_many_arguments)]
fn reduce_segment(
    ctx: &Ctx<'_>,
    rp: &ReducePlan,
    seg: usize,
    mine: &mut Pieces<'_>,
    acts: &[LineBuf],
    stage: &mut LineBuf,
    finite: &mut [bool],
    mut clock: Option<&mut [f64; 2]>,
) -> Result<(), ExecError> {
    let t = ctx.chunks.len();
    let parity = seg % 2;
    let arenas: Vec<_> =
        ctx.arenas[..t].iter().map(|a| a[parity].read().unwrap_or_else(PoisonError::into_inner)).collect();
    for &s in &rp.segments[seg] {
        let Some((start, piece)) = mine[s].as_mut() else { continue };
        finite[s] = reduce_slot(ctx.isa, rp, s, ctx.chunks, acts, &arenas, *start, piece, stage, clock.as_deref_mut())
            .map_err(|err| ExecError::Kernel { layer: ctx.prog.ops()[rp.op[s]].name, err })?;
    }
    Ok(())
}

/// The running mean and variance of batch norm `layer` in `params`, mutably.
fn stats_mut(params: &mut ParamStore, layer: Name) -> Result<(&mut [f32], &mut [f32]), ExecError> {
    let [mean, var] = [ParamRole::Mean, ParamRole::Variance].map(|r| crate::graph::param_name(layer, r));
    let all = params.params_mut();
    let find = |name: Name| {
        all.iter()
            .position(|p| p.name == name.as_str())
            .ok_or_else(|| ExecError::MissingParam { name: name.to_string() })
    };
    let (im, iv) = (find(mean)?, find(var)?);
    if im < iv {
        let (lo, hi) = all.split_at_mut(iv);
        Ok((&mut lo[im].data, &mut hi[0].data))
    } else {
        let (lo, hi) = all.split_at_mut(im);
        Ok((&mut hi[0].data, &mut lo[iv].data))
    }
}

/// For `prog`: a function giving the op that reads tensor `t` (written by op `from`) when it is
/// the only reader and `t` is neither in `keep` nor the program's output (so it may go
/// unwritten).
fn sole_readers<'p>(prog: &'p Program, keep: &[TensorId]) -> impl Fn(TensorId, usize) -> Option<usize> + 'p {
    let all = prog.ops();
    let mut readers = vec![0usize; prog.tensors().len()];
    for op in all {
        for &x in op.inputs() {
            readers[x.index()] += 1;
        }
    }
    let keep = keep.to_vec();
    let out = prog.output();
    move |t: TensorId, from: usize| {
        if readers[t.index()] != 1 || keep.contains(&t) || t == out {
            return None;
        }
        (from + 1..all.len()).find(|&j| all[j].inputs().contains(&t))
    }
}

/// Splits each whole-batch buffer (with `numel[t]` values per sample) into the threads'
/// chunks: `out[k][t]` is thread `k`'s part of tensor `t`.
fn split_views<'a>(bufs: &'a mut [LineBuf], numel: &[usize], chunks: &[Range<usize>]) -> Vec<Vec<&'a mut [f32]>> {
    let mut out: Vec<Vec<&'a mut [f32]>> = chunks.iter().map(|_| Vec::with_capacity(bufs.len())).collect();
    for (buf, &per) in bufs.iter_mut().zip(numel) {
        let mut rest: &'a mut [f32] = &mut buf[..];
        for (k, r) in chunks.iter().enumerate() {
            let (part, tail) = rest.split_at_mut(r.len() * per);
            out[k].push(part);
            rest = tail;
        }
    }
    out
}

/// Splits `items` into `t` runs, in order, of about equal total `size` (for sharing work out
/// over threads).
pub(crate) fn share_out<T>(items: Vec<T>, t: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let t = t.max(1);
    let total: usize = items.iter().map(&size).sum();
    let mut shares: Vec<Vec<T>> = (0..t).map(|_| Vec::new()).collect();
    let mut done = 0;
    for item in items {
        // The share that holds the item's middle.
        let len = size(&item);
        let k = ((done + len / 2) * t / total.max(1)).min(t - 1);
        done += len;
        shares[k].push(item);
    }
    shares
}

/// Runs each job on its own thread (the first on the calling thread) and returns their results
/// in job order.
pub(crate) fn run_threads<T, E, F>(jobs: impl Iterator<Item = F>) -> Vec<Result<T, E>>
where
    T: Send,
    E: Send,
    F: FnOnce() -> Result<T, E> + Send,
{
    let mut jobs = jobs;
    let Some(first) = jobs.next() else { return Vec::new() };
    thread::scope(|s| {
        let handles: Vec<_> = jobs.map(|job| s.spawn(job)).collect();
        let mut out = vec![first()];
        for h in handles {
            out.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        out
    })
}

/// What every thread of one pass shares.
struct Ctx<'a> {
    prog: &'a Program,
    isa: Isa,
    ops: &'a [OpParams<'a>],
    /// Per op, packed frozen conv weights ([`Executor::pack_frozen_convs`]).
    packed: &'a [Option<PackedConv>],
    bn_ord: &'a [Option<usize>],
    numel: &'a [usize],
    chunks: &'a [Range<usize>],
    barrier: &'a SpinBarrier,
    /// Published per-chunk batch-norm values, index `bn · threads + k`.
    slots: &'a [OnceLock<Moments>],
    /// Wait at `barrier` after every op ([`Executor::set_sync_every_op`]).
    sync_every_op: bool,
    /// Per op, the folded convs to run (empty when this forward does not use them).
    folded: &'a [Option<FoldedConv>],
    /// Per op, whether a folded conv does its work (read only when `folded` is not empty).
    fused_away: &'a [bool],
    /// Per tensor, whether this forward skips the op writing it (empty: none;
    /// [`Executor::set_eval_targets`]).
    skip: &'a [bool],
    /// Per op, packed weights of a few-pixel conv (train forward and backward only).
    train_panels: &'a [Option<TrainPanels>],
    /// Per op, an fc's weights packed for this forward (empty: none; forward only).
    fc_packed: &'a [Option<LineBuf>],
    /// Per batch-norm op, the ReLU op it runs with (empty: none; [`Executor::fuse_bn_relu`]).
    bn_relu: &'a [Option<usize>],
    /// Per op, whether it is a ReLU its batch norm runs (empty: none).
    relu_in_bn: &'a [bool],
    /// Which outputs a folded eval forward writes into recycled buffers ([`recycle_output`]).
    recycle: Option<&'a RecyclePlan>,
    /// Per thread, its weight-gradient arenas (backward only).
    arenas: &'a [GradArena],
    /// Where the backward's weight gradients go and when they are summed.
    reduce: Option<&'a ReducePlan>,
}

/// Where a folded eval forward with targets may reuse buffers: per op, the tensor it writes
/// when that may go into a recycled buffer (not a target, not written over a residual), and
/// the tensors it reads last (not targets), whose buffers are free after it.
#[derive(Debug)]
struct RecyclePlan {
    writes: Vec<Option<usize>>,
    dies: Vec<Vec<usize>>,
}

impl Ctx<'_> {
    /// The ReLU op that batch norm `i` runs with, if any.
    fn fused_relu(&self, i: usize) -> Option<usize> {
        self.bn_relu.get(i).copied().flatten()
    }

    /// Whether op `i` is a ReLU its batch norm runs.
    fn relu_done(&self, i: usize) -> bool {
        self.relu_in_bn.get(i).copied().unwrap_or(false)
    }
}

impl Ctx<'_> {
    /// Thread `k`'s arena holding the chunk gradient of weight slot `s`, locked for writing,
    /// and the slot's range in it ([`ReducePlan`]).
    fn grad_arena(&self, k: usize, s: usize) -> (RwLockWriteGuard<'_, LineBuf>, Range<usize>) {
        let (parity, range) = self.reduce.expect("a backward has a reduce plan").at(s);
        (self.arenas[k][parity].write().unwrap_or_else(PoisonError::into_inner), range)
    }

    /// Op `i`'s packed few-row weights, if packed from `weights` (the slice this pass uses).
    fn train_panel(&self, i: usize, weights: &[f32]) -> Option<&TrainPanels> {
        self.train_panels.get(i)?.as_ref().filter(|tp| tp.src == (weights.as_ptr() as usize, weights.len()))
    }
    fn slot(&self, bn: usize, k: usize) -> &OnceLock<Moments> {
        &self.slots[bn * self.chunks.len() + k]
    }

    /// Publishes `m` as chunk `k`'s value for batch norm `bn`, waits for every chunk, and
    /// returns all chunks' values in chunk order (`None` if any thread failed).
    fn exchange(&self, bn: usize, k: usize, m: Moments) -> Option<Vec<&Chunk>> {
        // Each slot is set exactly once per pass, by its own thread.
        let _ = self.slot(bn, k).set(m);
        self.barrier.wait();
        (0..self.chunks.len()).map(|u| self.slot(bn, u).get().and_then(|m| m.as_ref())).collect()
    }
}

/// Runs `f` on `w`, adding its duration to `w.times[op][pass]` (0 forward, 1 backward) while
/// profiling ([`Executor::set_profiling`]).
fn timed<R>(w: &mut Worker, op: usize, pass: usize, f: impl FnOnce(&mut Worker) -> R) -> R {
    if w.times.is_empty() {
        return f(w);
    }
    let start = std::time::Instant::now();
    let r = f(w);
    w.times[op][pass] += start.elapsed().as_secs_f64();
    r
}

/// Thread `k`'s forward over its chunk. On an error it keeps taking part in the batch-norm
/// synchronisations (publishing a failure) so that no other thread waits forever.
fn forward_chunk(
    ctx: &Ctx<'_>,
    k: usize,
    mode: Mode,
    image: &[f32],
    mut views: Vec<&mut [f32]>,
    w: &mut Worker,
) -> Result<(), ExecError> {
    let mut failed = None;
    let mut free = Vec::new();
    for i in 0..ctx.prog.ops().len() {
        let sync = if mode == Mode::Train { ctx.bn_ord[i] } else { None };
        if failed.is_some() {
            if let Some(b) = sync {
                ctx.exchange(b, k, None);
            }
        } else if ctx.skip.get(ctx.prog.ops()[i].output.index()).copied().unwrap_or(false) {
            // Not needed by the eval targets (an eval forward has no batch-norm exchange).
        } else {
            if let Some(plan) = ctx.recycle {
                recycle_output(ctx, plan, k, i, &mut views, &mut free);
            }
            if let Err(e) = timed(w, i, 0, |w| forward_op(ctx, k, mode, i, image, &mut views, w)) {
                failed = Some(e);
            }
            if let Some(plan) = ctx.recycle {
                free.extend_from_slice(&plan.dies[i]);
            }
        }
        if ctx.sync_every_op {
            ctx.barrier.wait();
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Buffers reused within a thread's folded eval forward (a frozen teacher's, with targets):
/// before op `i` writes a tensor that may be recycled ([`RecyclePlan`]), its view is swapped
/// with the view of the tensor freed most recently (its last reader has run) that is long
/// enough, and the swapped-out view, the output's own buffer, joins `free`. An output is then
/// written into memory read a few ops before, still in cache, not into a buffer last touched
/// a forward ago, whose every line a core fetches before writing it (as the backward does
/// with gradients, [`recycle_grads`]). Views may be longer than a recycled tensor, so
/// `forward_op` cuts each to its tensor's length.
fn recycle_output(
    ctx: &Ctx<'_>,
    plan: &RecyclePlan,
    k: usize,
    i: usize,
    views: &mut [&mut [f32]],
    free: &mut Vec<usize>,
) {
    let Some(out) = plan.writes[i] else { return };
    let need = ctx.numel[out] * ctx.chunks[k].len();
    if let Some(at) = free.iter().rposition(|&d| views[d - 1].len() >= need) {
        let d = free.remove(at);
        views.swap(out - 1, d - 1);
        free.insert(0, d);
    }
}

/// One op of thread `k`'s forward.
fn forward_op(
    ctx: &Ctx<'_>,
    k: usize,
    mode: Mode,
    i: usize,
    image: &[f32],
    views: &mut [&mut [f32]],
    w: &mut Worker,
) -> Result<(), ExecError> {
    let prog = ctx.prog;
    let op = &prog.ops()[i];
    let p = &ctx.ops[i];
    let nc = ctx.chunks[k].len();
    let isa = ctx.isa;
    let kernel = |err| ExecError::Kernel { layer: op.name, err };
    // A folded conv that writes over its residual: from here on (this forward, this thread)
    // its output's view is the residual's buffer, which no later op reads.
    if let Some(Some(FoldedConv { in_place: true, residual: Some(r), out, .. })) = ctx.folded.get(i) {
        views.swap(r.index() - 1, out.index() - 1);
    }
    // Tensor t ≥ 1 is views[t − 1]; every input precedes the output. Views may be longer
    // than their tensor (`recycle_output`).
    let (before, after) = views.split_at_mut(op.output.index() - 1);
    let before: &[&mut [f32]] = before;
    let len = |t: TensorId| ctx.numel[t.index()] * nc;
    let read = |t: TensorId| -> &[f32] {
        if t.index() == 0 {
            image
        } else {
            &before[t.index() - 1][..len(t)]
        }
    };
    let x = read(op.input());
    let shape = prog.tensor(op.output).shape;
    if !ctx.folded.is_empty() {
        if ctx.fused_away[i] {
            return Ok(());
        }
        if let Some(f) = &ctx.folded[i] {
            // Tensor t ≥ op.output is after[t − op.output]; the folded output comes later.
            let y: &mut [f32] = &mut after[f.out.index() - op.output.index()][..len(f.out)];
            let s = prog.conv2d(op, nc);
            if f.in_place {
                // `y` holds the residual (views swapped above).
                let lin = Linear::new(s.n * s.h * s.w, s.c_in, s.c_out);
                return linear::linear_fwd_panels_residual(isa, &lin, x, &f.weights, Some(&f.bias), Act::Relu, y)
                    .map_err(kernel);
            }
            if f.packed {
                conv::conv2d_fwd_panels(isa, &s, x, &f.weights, Some(&f.bias), f.act, y, &mut w.scratch)
            } else {
                conv::conv2d_fwd(isa, &s, x, &f.weights, Some(&f.bias), f.act, y, &mut w.scratch)
            }
            .map_err(kernel)?;
            // The residual add + ReLU over the conv's output while it is in cache.
            return match f.residual {
                Some(r) => act::add_relu_inplace(isa, y, read(r)).map_err(kernel),
                None => Ok(()),
            };
        }
    }
    if ctx.relu_done(i) {
        return Ok(()); // its batch norm wrote the output
    }
    let y: &mut [f32] = &mut after[0][..len(op.output)];
    match op.kind {
        OpKind::Conv { .. } => match (&ctx.packed[i], ctx.train_panel(i, p.weights)) {
            (_, Some(tp)) => {
                conv::conv2d_fwd_panels(isa, &prog.conv2d(op, nc), x, &tp.fwd, None, Act::None, y, &mut w.scratch)
                    .map_err(kernel)
            }
            (Some(pk), _) if mode == Mode::Eval && pk.src == (p.weights.as_ptr() as usize, p.weights.len()) => {
                conv::conv2d_fwd_panels(isa, &prog.conv2d(op, nc), x, &pk.panels, None, Act::None, y, &mut w.scratch)
                    .map_err(kernel)
            }
            _ => conv::conv2d_fwd(isa, &prog.conv2d(op, nc), x, p.weights, None, Act::None, y, &mut w.scratch)
                .map_err(kernel),
        },
        OpKind::DwConv { .. } => {
            dwconv::dwconv3x3_fwd(isa, &prog.dwconv(op, nc), x, p.weights, None, Act::None, y).map_err(kernel)
        }
        OpKind::BatchNorm => {
            let c = shape.c as usize;
            let rows = nc * shape.h as usize * shape.w as usize;
            let ch = Channels::new(rows, c);
            // Run with its ReLU, the batch norm writes the ReLU's output (a later tensor).
            let (out, act) = match ctx.fused_relu(i) {
                Some(r) => (prog.ops()[r].output, Act::Relu),
                None => (op.output, Act::None),
            };
            let y: &mut [f32] = &mut after[out.index() - op.output.index()][..len(out)];
            if mode == Mode::Eval {
                return norm::bn_infer_fwd(isa, &ch, BN.eps, x, p.scale, p.offset, p.mean, p.var, act, y)
                    .map_err(kernel);
            }
            let b = ctx.bn_ord[i].expect("batch norms have an ordinal");
            let mut mean = vec![0.0; c];
            let mut m2 = vec![0.0; c];
            let local = norm::bn_partial_moments(isa, &ch, x, &mut mean, &mut m2);
            let all = ctx.exchange(b, k, local.is_ok().then_some((rows, mean, m2)));
            local.map_err(kernel)?;
            let all = all.ok_or(ExecError::PeerFailed { layer: op.name })?;
            let saved = &mut w.bn[b];
            let mut count = 0;
            for (cnt, mean, m2) in all {
                count = norm::bn_merge_moments(isa, count, &mut saved.mean, &mut saved.m2, *cnt, mean, m2)
                    .map_err(kernel)?;
            }
            saved.count = count;
            let [rm, rv] = &mut w.dummy;
            norm::bn_finish_moments(
                isa,
                BN,
                count,
                &saved.mean,
                &saved.m2,
                &mut rm[..c],
                &mut rv[..c],
                &mut saved.invstd,
            )
            .map_err(kernel)?;
            norm::bn_train_apply(isa, &ch, x, p.scale, p.offset, &saved.mean, &saved.invstd, act, y).map_err(kernel)
        }
        OpKind::Relu => act::relu_fwd(isa, x, y).map_err(kernel),
        OpKind::MaxPool => pool::maxpool3x3s2_fwd(isa, &prog.pool(op, nc), x, y).map_err(kernel),
        OpKind::AddRelu => act::add_relu(isa, x, read(op.inputs()[1]), y).map_err(kernel),
        OpKind::GlobalAvgPool => pool::global_avg_fwd(isa, &prog.pool(op, nc), x, y).map_err(kernel),
        OpKind::Fc => {
            let s = prog.linear(op, nc);
            match ctx.fc_packed.get(i).and_then(Option::as_ref) {
                Some(wp) => linear::linear_fwd_narrow(isa, &s, x, p.weights, wp, Some(p.offset), Act::None, y),
                None => linear::linear_fwd(isa, &s, x, p.weights, Some(p.offset), Act::None, y),
            }
            .map_err(kernel)
        }
    }
}

/// Thread `k`'s backward over its chunk (reverse op order), with the same failure protocol as
/// [`forward_chunk`].
fn backward_chunk(
    ctx: &Ctx<'_>,
    plan: &BackwardPlan,
    k: usize,
    acts: &[LineBuf],
    mut grads: Vec<&mut [f32]>,
    mine: &mut Pieces<'_>,
    w: &mut Worker,
) -> Result<(), ExecError> {
    let r = &ctx.chunks[k];
    let act_of = |t: TensorId| -> &[f32] {
        let per = ctx.numel[t.index()];
        &acts[t.index()][r.start * per..r.end * per]
    };
    let mut failed = None;
    let mut free = Vec::new();
    for i in (0..ctx.prog.ops().len()).rev() {
        if !plan.active[i] {
            continue;
        }
        if failed.is_some() {
            if let Some(b) = ctx.bn_ord[i] {
                ctx.exchange(b, k, None);
            }
        } else {
            recycle_grads(ctx, plan, i, &mut grads, &mut free);
            let mut r = timed(w, i, 1, |w| backward_op(ctx, plan, k, i, &act_of, &mut grads, w));
            if let (Ok(()), Some(rp)) = (&r, ctx.reduce) {
                if let Some(seg) = rp.ends[i] {
                    let clock = (!w.times.is_empty()).then_some(&mut w.reduce_s);
                    r = reduce_segment(ctx, rp, seg, mine, acts, &mut w.stage, &mut w.piece_finite, clock);
                }
            }
            if let Err(e) = r {
                failed = Some(e);
            }
        }
        if ctx.sync_every_op {
            ctx.barrier.wait();
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Gradient buffers reused within a thread's backward: a gradient is dead once the op that
/// produced its tensor has run (it was its only reader), so before op `i` writes an input's
/// gradient for the first time (`Deliver::Overwrite`), that input's view is swapped with the
/// view of the gradient freed most recently that is long enough, and after it the op's output
/// (and the output of a ReLU its batch norm ran) joins `free`. The gradient is then written
/// into memory read one or two ops before, still in cache, instead of a buffer last touched a
/// step ago, whose every line a core fetches before writing it (MobileNetV1 1.0's backward
/// 21.2–22.1 → 19.8–20.4 ms per batch of 64, train step 1824–1889 → 1917–1975 img/s,
/// distillation step 933–937 → 954–987, alternating runs; the same bits). The input's
/// gradient (tensor 0) keeps its own buffer. Views may be longer than a recycled tensor's
/// gradient, so `backward_op` cuts each to its tensor's length.
fn recycle_grads(ctx: &Ctx<'_>, plan: &BackwardPlan, i: usize, grads: &mut [&mut [f32]], free: &mut Vec<usize>) {
    let op = &ctx.prog.ops()[i];
    if ctx.relu_done(i) {
        return; // its batch norm reads its output's gradient
    }
    for (j, t) in op.inputs().iter().enumerate() {
        if t.index() == 0 || plan.deliver[i][j] != Deliver::Overwrite {
            continue;
        }
        let need = grads[t.index()].len();
        if let Some(at) = free.iter().rposition(|&d| grads[d].len() >= need) {
            let d = free.remove(at);
            grads.swap(t.index(), d);
            // The swapped-out view (the input's own buffer, not in cache) is free too.
            free.insert(0, d);
        }
    }
    free.push(op.output.index());
    if let Some(r) = ctx.fused_relu(i) {
        free.push(ctx.prog.ops()[r].output.index());
    }
}

/// One op of thread `k`'s backward.
fn backward_op<'a>(
    ctx: &Ctx<'_>,
    plan: &BackwardPlan,
    k: usize,
    i: usize,
    act_of: &dyn Fn(TensorId) -> &'a [f32],
    grads: &mut [&mut [f32]],
    w: &mut Worker,
) -> Result<(), ExecError> {
    let prog = ctx.prog;
    let op = &prog.ops()[i];
    let p = &ctx.ops[i];
    let nc = ctx.chunks[k].len();
    let isa = ctx.isa;
    let kernel = |err| ExecError::Kernel { layer: op.name, err };
    if ctx.relu_done(i) {
        return Ok(()); // its batch norm applies its gate
    }
    let (before, after) = grads.split_at_mut(op.output.index());
    // Views may be longer than their tensor's gradient (`recycle_grads`).
    let len = |t: TensorId| ctx.numel[t.index()] * nc;
    let dy: &[f32] = &after[0][..len(op.output)];
    let x = act_of(op.input());
    let y = act_of(op.output);
    let deliver = plan.deliver[i];
    let Worker { scratch, tmp, bn, pgrads, .. } = w;
    let len_in = |j: usize| len(op.inputs()[j]);
    // Computes input j's gradient with `f` into its buffer (overwrite) or tmp (then adds).
    let mut deliver_to = |j: usize, tmp: &mut [f32], f: &mut dyn FnMut(&mut [f32]) -> Result<(), KernelError>| {
        let t = op.inputs()[j].index();
        match deliver[j] {
            Deliver::Skip => Ok(()),
            Deliver::Overwrite => f(&mut before[t][..len_in(j)]).map_err(kernel),
            Deliver::Accumulate => {
                let buf = &mut tmp[..len_in(j)];
                f(buf).map_err(kernel)?;
                act::add_inplace(isa, &mut before[t][..len_in(j)], buf).map_err(kernel)
            }
        }
    };
    match op.kind {
        OpKind::Conv { .. } => {
            let s = prog.conv2d(op, nc);
            let slot = p.slots[0].expect("conv has weights");
            let (mut arena, r) = ctx.grad_arena(k, slot);
            if ctx.reduce.is_some_and(|rp| rp.whole[slot].is_some()) {
                // Its dW is computed over the whole batch at reduce time, from this dY.
                arena[r.start..r.start + dy.len()].copy_from_slice(dy);
            } else {
                conv::conv2d_bwd_weight(isa, &s, x, dy, &mut arena[r], scratch).map_err(kernel)?;
            }
            drop(arena);
            if let Some(tp) = ctx.train_panel(i, p.weights) {
                // dX = Σ dY·w[t]ᵀ over each tap's transposed panels.
                return deliver_to(0, tmp, &mut |dx| conv::conv2d_bwd_input_panels(isa, &s, dy, &tp.bwd, dx));
            }
            deliver_to(0, tmp, &mut |dx| conv::conv2d_bwd_input(isa, &s, dy, p.weights, dx, scratch))
        }
        OpKind::DwConv { .. } => {
            let s = prog.dwconv(op, nc);
            let (mut arena, r) = ctx.grad_arena(k, p.slots[0].expect("dwconv has weights"));
            dwconv::dwconv3x3_bwd_weight(isa, &s, x, dy, &mut arena[r]).map_err(kernel)?;
            drop(arena);
            deliver_to(0, tmp, &mut |dx| dwconv::dwconv3x3_bwd_input(isa, &s, dy, p.weights, dx))
        }
        OpKind::BatchNorm => {
            let shape = prog.tensor(op.output).shape;
            let c = shape.c as usize;
            let ch = Channels::new(nc * shape.h as usize * shape.w as usize, c);
            let b = ctx.bn_ord[i].expect("batch norms have an ordinal");
            let saved = &bn[b];
            // Run with its ReLU: the ReLU's output gradient, gated by the batch norm's output
            // recomputed from x (the same bits as the ReLU's output > 0).
            let (dy, gate) = match ctx.fused_relu(i) {
                Some(r) => {
                    let out = prog.ops()[r].output;
                    let relu = norm::ReluAfter { gamma: p.scale, beta: p.offset };
                    (&after[out.index() - op.output.index()][..len(out)], Some(relu))
                }
                None => (dy, None),
            };
            let mut sdy = vec![0.0; c];
            let mut sdyx = vec![0.0; c];
            let local =
                norm::bn_bwd_partial_sums(isa, &ch, x, dy, gate, &saved.mean, &saved.invstd, &mut sdy, &mut sdyx);
            let all = ctx.exchange(b, k, local.is_ok().then_some((0, sdy, sdyx)));
            local.map_err(kernel)?;
            let all = all.ok_or(ExecError::PeerFailed { layer: op.name })?;
            let (gs, go) = (p.slots[0].expect("bn has a scale"), p.slots[1].expect("bn has an offset"));
            let (mut dgamma, mut dbeta) = (std::mem::take(&mut pgrads[gs]), std::mem::take(&mut pgrads[go]));
            dbeta.copy_from_slice(&all[0].1);
            dgamma.copy_from_slice(&all[0].2);
            for (_, sdy, sdyx) in &all[1..] {
                act::add_inplace(isa, &mut dbeta, sdy).map_err(kernel)?;
                act::add_inplace(isa, &mut dgamma, sdyx).map_err(kernel)?;
            }
            let r = deliver_to(0, tmp, &mut |dx| {
                norm::bn_bwd_apply(
                    isa,
                    &ch,
                    saved.count,
                    x,
                    dy,
                    gate,
                    p.scale,
                    &saved.mean,
                    &saved.invstd,
                    &dbeta,
                    &dgamma,
                    dx,
                )
            });
            pgrads[gs] = dgamma;
            pgrads[go] = dbeta;
            r
        }
        OpKind::Relu => deliver_to(0, tmp, &mut |dx| act::relu_bwd(isa, y, dy, dx)),
        OpKind::MaxPool => {
            let s: Pool = prog.pool(op, nc);
            deliver_to(0, tmp, &mut |dx| pool::maxpool3x3s2_bwd(isa, &s, x, y, dy, dx))
        }
        OpKind::AddRelu => {
            // d(a+b) = dy·[y > 0] for both inputs; computed once, delivered twice. When the
            // first input's buffer is overwritten, the gradient is computed there and the second
            // input copies it from there: a pass over a scratch buffer less, the same values
            // (ResNet50's train step: 6.7–7.9 → 5.4–7.0 thread-ms over its 16 AddRelus).
            let (t0, t1) = (op.inputs()[0].index(), op.inputs()[1].index());
            if deliver[0] == Deliver::Overwrite && deliver[1] != Deliver::Accumulate && t0 != t1 {
                let [g, other] = before.get_disjoint_mut([t0, t1]).expect("distinct tensors");
                let g = &mut g[..len_in(0)];
                act::relu_bwd(isa, y, dy, g).map_err(kernel)?;
                if deliver[1] == Deliver::Overwrite {
                    other[..len_in(1)].copy_from_slice(g);
                }
                return Ok(());
            }
            let len = dy.len();
            let (g, rest) = tmp.split_at_mut(len);
            act::relu_bwd(isa, y, dy, g).map_err(kernel)?;
            let g: &[f32] = g;
            deliver_to(0, rest, &mut |dx| {
                dx.copy_from_slice(g);
                Ok(())
            })?;
            deliver_to(1, rest, &mut |dx| {
                dx.copy_from_slice(g);
                Ok(())
            })
        }
        OpKind::GlobalAvgPool => {
            let s = prog.pool(op, nc);
            deliver_to(0, tmp, &mut |dx| pool::global_avg_bwd(isa, &s, dy, dx))
        }
        OpKind::Fc => {
            let s = prog.linear(op, nc);
            let (ws, bs) = (p.slots[0].expect("fc has weights"), p.slots[1].expect("fc has an offset"));
            let (mut arena, rw) = ctx.grad_arena(k, ws);
            let (_, rb) = ctx.reduce.expect("a backward has a reduce plan").at(bs);
            // The offset's slot comes after the weights' in the op's segment.
            let (lo, hi) = arena.split_at_mut(rb.start);
            linear::linear_bwd_weight(isa, &s, x, dy, &mut lo[rw], Some(&mut hi[..rb.len()])).map_err(kernel)?;
            drop(arena);
            deliver_to(0, tmp, &mut |dx| linear::linear_bwd_input(isa, &s, dy, p.weights, dx))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{share_out, Whole};
    use crate::graph::TensorId;
    use tinykd_kernels::shape::Conv2d;

    #[test]
    fn whole_batch_weight_gradients_are_taken_for_few_rows_and_map_their_taps() {
        let x = TensorId(3);
        let taps = |c: Conv2d| Whole::of(&c, x).map(|w| (w.pixels, w.lda, w.taps));
        // Pointwise, stride 1: one row per output pixel (16 rows · 4 ≤ 64 channels).
        assert_eq!(taps(Conv2d::new(4, 2, 2, 64, 8, 1, 1, 0)), Some((4, 64, vec![Some(0)])));
        // Too many rows for the channels: summed from per-thread partials.
        assert_eq!(taps(Conv2d::new(5, 2, 2, 64, 8, 1, 1, 0)), None);
        // 1x1 stride 2 from 2x2 to 1x1 (res5a_branch1): pixel (0, 0) of each sample.
        assert_eq!(taps(Conv2d::new(4, 2, 2, 64, 8, 1, 2, 0)), Some((1, 4 * 64, vec![Some(0)])));
        // 3x3 pad 1 on a 1x1 map (res5b_branch2b): only the centre tap reads the input.
        let centre = [None, None, None, None, Some(0), None, None, None, None];
        assert_eq!(taps(Conv2d::new(4, 1, 1, 64, 8, 3, 1, 1)), Some((1, 64, centre.to_vec())));
        // 3x3 stride 2 pad 1 from 2x2 to 1x1 (res5a_branch2b): taps (1,1) (1,2) (2,1) (2,2)
        // read pixels 0, 1, 2, 3.
        let four = [None, None, None, None, Some(0), Some(64), None, Some(128), Some(192)];
        assert_eq!(taps(Conv2d::new(4, 2, 2, 64, 8, 3, 2, 1)), Some((1, 4 * 64, four.to_vec())));
        // A 3x3 conv with a 2x2 output keeps the per-thread path.
        assert_eq!(taps(Conv2d::new(1, 2, 2, 64, 8, 3, 1, 1)), None);
    }

    #[test]
    fn share_out_keeps_order_and_balances_sizes() {
        let sizes = vec![5usize, 1, 1, 1, 8, 2, 2];
        let shares = share_out(sizes.clone(), 2, |&s| s);
        assert_eq!(shares.concat(), sizes, "every item once, in order");
        assert_eq!(shares, vec![vec![5, 1, 1, 1], vec![8, 2, 2]]);
        assert_eq!(share_out(vec![3usize], 4, |&s| s).concat(), vec![3]);
        assert_eq!(share_out(Vec::<usize>::new(), 0, |&s| s), vec![Vec::<usize>::new()]);
    }
}
