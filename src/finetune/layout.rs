//! The fine-tuning arena, planned at compile time: the frozen prefix's inference buffers (from
//! [`Schedule`]) followed by the tail's forward activations, loss gradient, backward
//! activations and parameter gradients, all placed by one [`Plan`].
//!
//! Timeline (plan steps): steps `0..cut` are the prefix's inference steps; the tail's stages
//! get the following step numbers, one per kernel call, in the order they run (see
//! [`TailBufs`]). The cut tensor (the tail's input) stays live until its last reader.

use crate::config::ModelConfig;
use crate::graph::Name;
use crate::models;
use crate::plan::{Buf, BufferReq, Plan, Schedule, StepKind, ALIGN, MAX_BUFFERS};

use super::{FinetuneError, Tail};

/// Arena buffers of the tail (indices into [`Layout::buffers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailBufs {
    /// The cut tensor: the tail's input (the pooled features for [`Tail::Fc`], the last
    /// depthwise block's output otherwise).
    pub cut: u16,
    /// Pre-affine output of the frozen last pointwise conv ([`Tail::FcAffine`] only).
    pub z: Option<u16>,
    /// Post-ReLU output of the last pointwise conv (not for [`Tail::Fc`]).
    pub a: Option<u16>,
    /// Pooled features (`cut` for [`Tail::Fc`]).
    pub p: u16,
    /// Logits `[batch][classes]`.
    pub logits: u16,
    /// `∂L/∂logits`.
    pub dlogits: u16,
    /// `∂L/∂pooled` (not for [`Tail::Fc`]).
    pub dp: Option<u16>,
    /// `∂L/∂a`, turned into `∂L/∂z` in place by the ReLU backward (not for [`Tail::Fc`]).
    pub da: Option<u16>,
    /// The gradients of every trainable parameter, in the state's order.
    pub grads: u16,
}

/// Sizes of the tail's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailDims {
    /// Batch.
    pub batch: usize,
    /// Spatial positions (`h·w`) of the last pointwise conv's output.
    pub hw: usize,
    /// Its height.
    pub h: usize,
    /// Its width.
    pub w: usize,
    /// Input channels of the last pointwise conv.
    pub c_sep_in: usize,
    /// Features entering the fc (output channels of the last pointwise conv).
    pub c: usize,
    /// Classes.
    pub classes: usize,
}

impl TailDims {
    /// fc weights `[c][classes]`.
    pub const fn fc_w(&self) -> usize {
        self.c * self.classes
    }
    /// Trainable parameters of `tail` (in the state's order: fc weights, fc offset, then the
    /// affine's `γ`, `β` or the pointwise conv's weights, bias).
    pub const fn trainable(&self, tail: Tail) -> usize {
        let fc = self.fc_w() + self.classes;
        match tail {
            Tail::Fc => fc,
            Tail::FcAffine => fc + 2 * self.c,
            Tail::FcSep => fc + self.c_sep_in * self.c + self.c,
        }
    }
}

/// The planned fine-tuning arena of a model, tail and batch.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// The model's inference schedule (its first [`Self::cut_step`] steps are the prefix).
    pub schedule: Schedule,
    /// The placement of [`Self::buffers`].
    pub plan: Plan,
    /// The trained tail.
    pub tail: Tail,
    /// Number of prefix steps.
    pub cut_step: usize,
    /// The tail's buffers.
    pub bufs: TailBufs,
    /// The tail's sizes.
    pub dims: TailDims,
    /// The last pointwise conv (`conv6_sep` in MobileNetV1), trained or frozen in the tail
    /// (`Name::EMPTY` for [`Tail::Fc`]).
    pub sep: Name,
    /// The fc (`fc7`).
    pub fc: Name,
    reqs: [BufferReq; MAX_BUFFERS],
    n_reqs: u16,
}

/// Appends a buffer of `floats` f32 live over steps `first..=last`.
const fn push(
    mut reqs: [BufferReq; MAX_BUFFERS],
    n: usize,
    floats: usize,
    first: usize,
    last: usize,
) -> Result<([BufferReq; MAX_BUFFERS], usize), FinetuneError> {
    if n == MAX_BUFFERS {
        return Err(FinetuneError::Model(models::ModelError::Capacity { what: "plan buffers", cap: MAX_BUFFERS }));
    }
    reqs[n] = BufferReq { bytes: 4 * floats, first: first as u16, last: last as u16 };
    Ok((reqs, n + 1))
}

/// `push`, propagating errors and binding the new index.
macro_rules! buf {
    ($reqs:ident, $n:ident, $floats:expr, $first:expr, $last:expr) => {{
        match push($reqs, $n, $floats, $first, $last) {
            Ok((r, m)) => {
                $reqs = r;
                $n = m;
                (m - 1) as u16
            }
            Err(e) => return Err(e),
        }
    }};
}

impl Layout {
    /// Plans fine-tuning of `tail` of `cfg` at batch `batch` (`const`, so the arena size is a
    /// compile-time constant).
    ///
    /// Errors: [`FinetuneError::Model`] for an invalid config or batch;
    /// [`FinetuneError::TailUnsupported`] if the model does not end in global average pool +
    /// fc, or (for [`Tail::FcAffine`], [`Tail::FcSep`]) the pool's input is not a pointwise
    /// (1x1, stride 1, unpadded) conv with ReLU — i.e. those two tails need MobileNetV1.
    pub const fn new(cfg: &ModelConfig, tail: Tail, batch: usize) -> Result<Layout, FinetuneError> {
        let prog = match models::program(cfg) {
            Ok(p) => p,
            Err(e) => return Err(FinetuneError::Model(e)),
        };
        let schedule = match Schedule::new(&prog, batch) {
            Ok(s) => s,
            Err(e) => return Err(FinetuneError::Model(e)),
        };
        let steps = schedule.steps();
        let ns = steps.len();
        if ns < 3
            || !matches!(steps[ns - 1].kind, StepKind::Fc)
            || !matches!(steps[ns - 2].kind, StepKind::GlobalAvgPool)
        {
            return Err(FinetuneError::TailUnsupported { tail });
        }
        let fc_step = steps[ns - 1];
        let pool_step = steps[ns - 2];
        let sep_step = steps[ns - 3];
        let sep_ok = matches!(sep_step.kind, StepKind::Conv { relu: true })
            && sep_step.k == 1
            && sep_step.stride == 1
            && sep_step.pad == 0;
        if !matches!(tail, Tail::Fc) && !sep_ok {
            return Err(FinetuneError::TailUnsupported { tail });
        }
        let dims = TailDims {
            batch,
            hw: pool_step.x_shape.h as usize * pool_step.x_shape.w as usize,
            h: pool_step.x_shape.h as usize,
            w: pool_step.x_shape.w as usize,
            c_sep_in: sep_step.x_shape.c as usize,
            c: fc_step.x_shape.c as usize,
            classes: fc_step.y_shape.c as usize,
        };
        let cut_step = match tail {
            Tail::Fc => ns - 1,
            Tail::FcAffine | Tail::FcSep => ns - 3,
        };
        let cut_buf = match tail {
            Tail::Fc => pool_step.y,
            Tail::FcAffine | Tail::FcSep => sep_step.x,
        };
        let cut = match cut_buf {
            Buf::Arena(i) => i,
            // The cut is an intermediate activation of a model with at least three steps.
            _ => return Err(FinetuneError::TailUnsupported { tail }),
        };

        // The prefix's buffers keep their schedule indices; none outlives the prefix except
        // the cut, whose lifetime is set below.
        let mut reqs = [BufferReq { bytes: 0, first: 0, last: 0 }; MAX_BUFFERS];
        let sched_bufs = schedule.buffers();
        let mut n = 0;
        while n < sched_bufs.len() && (sched_bufs[n].first as usize) < cut_step {
            reqs[n] = sched_bufs[n];
            if reqs[n].last as usize >= cut_step {
                reqs[n].last = (cut_step - 1) as u16;
            }
            n += 1;
        }
        let (b, hw, c, k) = (batch, dims.hw, dims.c, dims.classes);
        let t = cut_step;
        let grads_len = dims.trainable(tail);
        let bufs = match tail {
            Tail::Fc => {
                // t: fc fwd; t+1: loss; t+2: fc bwd weight; t+3: sgd.
                reqs[cut as usize].last = (t + 2) as u16;
                let logits = buf!(reqs, n, b * k, t, t + 1);
                let dlogits = buf!(reqs, n, b * k, t + 1, t + 2);
                let grads = buf!(reqs, n, grads_len, t + 2, t + 3);
                TailBufs { cut, z: None, a: None, p: cut, logits, dlogits, dp: None, da: None, grads }
            }
            Tail::FcSep => {
                // t: sep fwd; +1 pool; +2 fc fwd; +3 loss; +4 fc bwd weight; +5 fc bwd input;
                // +6 pool bwd; +7 relu bwd; +8 sep bwd weight; +9 sgd.
                reqs[cut as usize].last = (t + 8) as u16;
                let a = buf!(reqs, n, b * hw * c, t, t + 7);
                let p = buf!(reqs, n, b * c, t + 1, t + 4);
                let logits = buf!(reqs, n, b * k, t + 2, t + 3);
                let dlogits = buf!(reqs, n, b * k, t + 3, t + 5);
                let grads = buf!(reqs, n, grads_len, t + 4, t + 9);
                let dp = buf!(reqs, n, b * c, t + 5, t + 6);
                let da = buf!(reqs, n, b * hw * c, t + 6, t + 8);
                TailBufs { cut, z: None, a: Some(a), p, logits, dlogits, dp: Some(dp), da: Some(da), grads }
            }
            Tail::FcAffine => {
                // t: frozen sep fwd; +1 affine + ReLU; +2 pool; +3 fc fwd; +4 loss; +5 fc bwd
                // weight; +6 fc bwd input; +7 pool bwd; +8 relu bwd; +9 affine bwd; +10 sgd.
                reqs[cut as usize].last = t as u16;
                let z = buf!(reqs, n, b * hw * c, t, t + 9);
                let a = buf!(reqs, n, b * hw * c, t + 1, t + 8);
                let p = buf!(reqs, n, b * c, t + 2, t + 5);
                let logits = buf!(reqs, n, b * k, t + 3, t + 4);
                let dlogits = buf!(reqs, n, b * k, t + 4, t + 6);
                let grads = buf!(reqs, n, grads_len, t + 5, t + 10);
                let dp = buf!(reqs, n, b * c, t + 6, t + 7);
                let da = buf!(reqs, n, b * hw * c, t + 7, t + 9);
                TailBufs { cut, z: Some(z), a: Some(a), p, logits, dlogits, dp: Some(dp), da: Some(da), grads }
            }
        };
        let plan = match Plan::new(reqs.split_at(n).0) {
            Ok(p) => p,
            Err(e) => return Err(FinetuneError::Model(e)),
        };
        let sep = match tail {
            Tail::Fc => Name::EMPTY,
            Tail::FcAffine | Tail::FcSep => sep_step.layer,
        };
        Ok(Layout { schedule, plan, tail, cut_step, bufs, dims, sep, fc: fc_step.layer, reqs, n_reqs: n as u16 })
    }

    /// Every arena buffer: the prefix's (schedule indices) then the tail's.
    pub const fn buffers(&self) -> &[BufferReq] {
        self.reqs.split_at(self.n_reqs as usize).0
    }

    /// Bytes of an arena that may start at any address: [`Plan::peak`] + [`ALIGN`].
    pub const fn arena_bytes(&self) -> usize {
        self.plan.peak + ALIGN
    }

    /// Number of trainable parameters.
    pub const fn trainable(&self) -> usize {
        self.dims.trainable(self.tail)
    }
}
