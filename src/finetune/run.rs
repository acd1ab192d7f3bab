//! [`FineTuner`]: the frozen prefix (the engine's inference steps over the file's weights), the
//! tail's forward and backward passes, and the Momentum SGD update, over a [`Layout`] arena.

use core::ops::Range;

use tinykd_kernels::act::{self, Act};
use tinykd_kernels::optim::{self, Momentum};
use tinykd_kernels::shape::{Linear, Logits, Pool};
use tinykd_kernels::{linear, loss, pool, Isa, KernelError};

use crate::arena::split;
use crate::config::ModelConfig;
use crate::engine::{check_input, forward_step, step_input, step_weights, EngineError, StepWeights};
use crate::graph::Name;
use crate::plan::{Buf, Step, ALIGN, MAX_STEPS};
use crate::weights::{FileKind, WeightFile};

use super::layout::Layout;
use super::{FinetuneError, Tail};

impl StepWeights<'_> {
    /// Copies weights and bias (widened to f32) into `w_out`, `b_out`.
    fn copy_to(&self, w_out: &mut [f32], b_out: &mut [f32]) {
        match self {
            StepWeights::None => {}
            StepWeights::F32 { w, b } => {
                w_out.copy_from_slice(w);
                b_out.copy_from_slice(b);
            }
            StepWeights::F16 { w, b } => {
                w_out.iter_mut().zip(w.iter()).for_each(|(o, v)| *o = v.to_f32());
                b_out.iter_mut().zip(b.iter()).for_each(|(o, v)| *o = v.to_f32());
            }
        }
    }
}

/// The trainable parameters, split by tensor.
#[derive(Clone, Copy)]
struct Parts<'a> {
    fc_w: &'a [f32],
    fc_b: &'a [f32],
    /// Affine `γ'` or pointwise weights (empty for [`Tail::Fc`]).
    t_w: &'a [f32],
    /// Affine `β'` or pointwise bias (empty for [`Tail::Fc`]).
    t_b: &'a [f32],
}

/// A student ready to be fine-tuned: its [`Layout`] and the file's weights (frozen prefix, and
/// the initial values of the trained tail).
#[derive(Clone, Debug)]
pub struct FineTuner<'w> {
    layout: Layout,
    weights: [StepWeights<'w>; MAX_STEPS],
}

impl<'w> FineTuner<'w> {
    /// Prepares fine-tuning of `tail` of `cfg` at batch `batch` over the inference weights in
    /// `file`, checking the file's kind and config and every tensor's presence and dims.
    pub fn new(cfg: &ModelConfig, tail: Tail, batch: usize, file: &WeightFile<'w>) -> Result<Self, FinetuneError> {
        if file.kind() != FileKind::Inference {
            return Err(EngineError::NotInference.into());
        }
        if file.config() != *cfg {
            return Err(EngineError::ConfigMismatch { file: file.config(), model: *cfg }.into());
        }
        let layout = Layout::new(cfg, tail, batch)?;
        let mut weights = [StepWeights::None; MAX_STEPS];
        for (slot, step) in weights.iter_mut().zip(layout.schedule.steps()) {
            *slot = step_weights(file, step)?;
        }
        Ok(FineTuner { layout, weights })
    }

    /// The arena plan and tail sizes.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Bytes of an arena that may start at any address (the same as
    /// [`finetune_arena_bytes`](super::finetune_arena_bytes)).
    pub fn arena_bytes(&self) -> usize {
        self.layout.arena_bytes()
    }

    /// Length of the state slice (`[params..., momentum...]`).
    pub fn state_len(&self) -> usize {
        2 * self.layout.trainable()
    }

    /// The trainable parameters: the first half of `state`.
    pub fn params<'s>(&self, state: &'s [f32]) -> &'s [f32] {
        &state[..self.layout.trainable().min(state.len())]
    }

    /// Fills `state` with the deployed student's values: fc (and, for [`Tail::FcSep`], the
    /// pointwise conv) from the file widened to f32, the affine at identity (`γ' = 1`,
    /// `β' = 0`), momentum 0.
    pub fn init_state(&self, state: &mut [f32]) -> Result<(), FinetuneError> {
        self.check_state(state)?;
        let (params, momentum) = state.split_at_mut(self.layout.trainable());
        momentum.fill(0.0);
        let d = self.layout.dims;
        let (fc, rest) = params.split_at_mut(d.fc_w() + d.classes);
        let (fc_w, fc_b) = fc.split_at_mut(d.fc_w());
        self.weights[self.fc_step()].copy_to(fc_w, fc_b);
        let (t_w, t_b) = rest.split_at_mut(rest.len() - if self.layout.tail == Tail::Fc { 0 } else { d.c });
        match self.layout.tail {
            Tail::Fc => {}
            Tail::FcAffine => {
                t_w.fill(1.0);
                t_b.fill(0.0);
            }
            Tail::FcSep => self.weights[self.sep_step()].copy_to(t_w, t_b),
        }
        Ok(())
    }

    /// Forward pass with the current tail: `input` is the NHWC batch, `logits` receives
    /// `batch·classes` values.
    pub fn logits(
        &self,
        isa: Isa,
        state: &[f32],
        input: &[f32],
        arena: &mut [u8],
        logits: &mut [f32],
    ) -> Result<(), FinetuneError> {
        let d = self.layout.dims;
        let want = d.batch * d.classes;
        if logits.len() != want {
            return Err(EngineError::LogitsLen { expected: want, got: logits.len() }.into());
        }
        self.check_state(state)?;
        let ar = self.floats(arena)?;
        self.forward(isa, self.parts(state), input, ar)?;
        logits.copy_from_slice(&ar[self.range(self.layout.bufs.logits)]);
        Ok(())
    }

    /// Number of samples of the batch whose top-1 prediction is their label.
    pub fn correct(
        &self,
        isa: Isa,
        state: &[f32],
        input: &[f32],
        labels: &[u32],
        arena: &mut [u8],
    ) -> Result<usize, FinetuneError> {
        self.check_labels(labels)?;
        self.check_state(state)?;
        let ar = self.floats(arena)?;
        self.forward(isa, self.parts(state), input, ar)?;
        let d = self.layout.dims;
        loss::topk_correct(&Logits::new(d.batch, d.classes), &ar[self.range(self.layout.bufs.logits)], labels, 1)
            .map_err(|err| self.kernel(self.layout.fc, err))
    }

    /// The batch-mean softmax cross-entropy of `labels` and its gradient with respect to every
    /// trainable parameter (in the state's order), which lives in the arena.
    pub fn grads<'a>(
        &self,
        isa: Isa,
        state: &[f32],
        input: &[f32],
        labels: &[u32],
        arena: &'a mut [u8],
    ) -> Result<(f32, &'a [f32]), FinetuneError> {
        self.check_labels(labels)?;
        self.check_state(state)?;
        let ar = self.floats(arena)?;
        let loss = self.forward_backward(isa, self.parts(state), input, labels, ar)?;
        Ok((loss, &ar[self.range(self.layout.bufs.grads)]))
    }

    /// One Momentum SGD step on the batch (`v = μ·v + g + wd·p; p −= lr·v` over every
    /// trainable parameter); returns the loss before the update.
    ///
    /// A step whose loss, a gradient, or an updated parameter or momentum would not be finite
    /// is refused with [`FinetuneError::NonFinite`] and leaves `state` as it was: the device
    /// has no earlier copy to fall back to (the check reads the state once more, a small
    /// fraction of the step's forward pass through the frozen prefix).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        isa: Isa,
        hp: Momentum,
        state: &mut [f32],
        input: &[f32],
        labels: &[u32],
        arena: &mut [u8],
    ) -> Result<f32, FinetuneError> {
        self.check_labels(labels)?;
        self.check_state(state)?;
        let ar = self.floats(arena)?;
        let loss = self.forward_backward(isa, self.parts(state), input, labels, ar)?;
        let grads = &ar[self.range(self.layout.bufs.grads)];
        let (p, v) = state.split_at_mut(self.layout.trainable());
        let kernel = |err| self.kernel(self.layout.fc, err);
        if !loss.is_finite() || !optim::sgd_momentum_stays_finite(hp, p, grads, v).map_err(kernel)? {
            return Err(FinetuneError::NonFinite { loss });
        }
        let finite = optim::sgd_momentum(isa, hp, p, grads, v).map_err(kernel)?;
        debug_assert!(finite, "the check runs the update's arithmetic");
        Ok(loss)
    }

    fn fc_step(&self) -> usize {
        self.layout.schedule.steps().len() - 1
    }

    fn sep_step(&self) -> usize {
        self.layout.schedule.steps().len() - 3
    }

    fn check_state(&self, state: &[f32]) -> Result<(), FinetuneError> {
        let expected = self.state_len();
        if state.len() != expected {
            return Err(FinetuneError::StateLen { expected, got: state.len() });
        }
        Ok(())
    }

    fn check_labels(&self, labels: &[u32]) -> Result<(), FinetuneError> {
        let d = self.layout.dims;
        if labels.len() != d.batch || labels.iter().any(|&l| l as usize >= d.classes) {
            return Err(FinetuneError::Labels { batch: d.batch, classes: d.classes });
        }
        Ok(())
    }

    fn kernel(&self, layer: Name, err: KernelError) -> FinetuneError {
        EngineError::Kernel { layer, err }.into()
    }

    /// Splits the parameter half of `state` (or a gradient block) by tensor.
    fn parts<'a>(&self, flat: &'a [f32]) -> Parts<'a> {
        let d = self.layout.dims;
        let (fc_w, rest) = flat.split_at(d.fc_w());
        let (fc_b, rest) = rest.split_at(d.classes);
        let (t_w, t_b) = match self.layout.tail {
            Tail::Fc => (&rest[..0], &rest[..0]),
            Tail::FcAffine => (&rest[..d.c], &rest[d.c..2 * d.c]),
            Tail::FcSep => rest[..d.c_sep_in * d.c + d.c].split_at(d.c_sep_in * d.c),
        };
        Parts { fc_w, fc_b, t_w, t_b }
    }

    /// The arena as f32, from its first [`ALIGN`]-aligned byte, [`Plan::peak`] bytes long.
    ///
    /// [`Plan::peak`]: crate::plan::Plan::peak
    fn floats<'a>(&self, arena: &'a mut [u8]) -> Result<&'a mut [f32], FinetuneError> {
        let peak = self.layout.plan.peak;
        let (skip, got) = (arena.as_ptr().align_offset(ALIGN), arena.len());
        let needed = skip.saturating_add(peak);
        if got < needed {
            return Err(EngineError::ArenaTooSmall { needed, got }.into());
        }
        // SAFETY: every bit pattern is a valid `f32` (and a valid `u8`), and `align_to_mut`
        // only reinterprets the correctly aligned middle part.
        let (pre, floats, post) = unsafe { arena[skip..needed].align_to_mut::<f32>() };
        if !pre.is_empty() || !post.is_empty() {
            return Err(EngineError::ArenaTooSmall { needed: needed + ALIGN, got }.into());
        }
        Ok(floats)
    }

    /// The f32 range of arena buffer `i`.
    fn range(&self, i: u16) -> Range<usize> {
        let start = self.layout.plan.offsets()[i as usize] / 4;
        start..start + self.layout.buffers()[i as usize].bytes / 4
    }

    /// The f32 range of `b` if it is an arena buffer, else empty.
    fn region(&self, b: Buf) -> Range<usize> {
        match b {
            Buf::Arena(i) => self.range(i),
            Buf::None | Buf::Input | Buf::Output => 0..0,
        }
    }

    /// Prefix and tail forward, leaving every tail activation and the logits in the arena.
    fn forward(&self, isa: Isa, p: Parts<'_>, input: &[f32], ar: &mut [f32]) -> Result<(), FinetuneError> {
        let cfg = &self.layout.schedule.config;
        let d = self.layout.dims;
        check_input(cfg, d.batch, input)?;
        let steps = self.layout.schedule.steps();
        for (step, w) in steps[..self.layout.cut_step].iter().zip(&self.weights) {
            self.prefix_step(isa, step, *w, input, ar)?;
        }
        let b = self.layout.bufs;
        let rows = d.batch * d.hw;
        let pool_shape = Pool::new(d.batch, d.h, d.w, d.c);
        let sep = self.layout.sep;
        match self.layout.tail {
            Tail::Fc => {}
            Tail::FcSep => {
                let a = b.a.unwrap_or(b.p);
                let [x, a] = split(ar, [self.range(b.cut), self.range(a)]).ok_or(self.overlap(sep))?;
                let s = Linear::new(rows, d.c_sep_in, d.c);
                linear::linear_fwd(isa, &s, x, p.t_w, Some(p.t_b), Act::Relu, a).map_err(|e| self.kernel(sep, e))?;
            }
            Tail::FcAffine => {
                let (z, a) = (b.z.unwrap_or(b.p), b.a.unwrap_or(b.p));
                let [x, zs] = split(ar, [self.range(b.cut), self.range(z)]).ok_or(self.overlap(sep))?;
                let s = Linear::new(rows, d.c_sep_in, d.c);
                match self.weights[self.sep_step()] {
                    StepWeights::F32 { w, b } => linear::linear_fwd(isa, &s, x, w, Some(b), Act::None, zs),
                    StepWeights::F16 { w, b } => linear::linear_fwd(isa, &s, x, w, Some(b), Act::None, zs),
                    StepWeights::None => Err(KernelError::Shape("layer without weights")),
                }
                .map_err(|e| self.kernel(sep, e))?;
                let [zs, a] = split(ar, [self.range(z), self.range(a)]).ok_or(self.overlap(sep))?;
                affine_relu_fwd(d.c, zs, p.t_w, p.t_b, a);
            }
        }
        if let Some(a) = b.a {
            let [a, pooled] = split(ar, [self.range(a), self.range(b.p)]).ok_or(self.overlap(sep))?;
            pool::global_avg_fwd(isa, &pool_shape, a, pooled).map_err(|e| self.kernel(sep, e))?;
        }
        let fc = self.layout.fc;
        let [pooled, logits] = split(ar, [self.range(b.p), self.range(b.logits)]).ok_or(self.overlap(fc))?;
        linear::linear_fwd(isa, &Linear::new(d.batch, d.c, d.classes), pooled, p.fc_w, Some(p.fc_b), Act::None, logits)
            .map_err(|e| self.kernel(fc, e))
    }

    /// [`Self::forward`], the loss and the backward pass into the gradient buffer.
    fn forward_backward(
        &self,
        isa: Isa,
        p: Parts<'_>,
        input: &[f32],
        labels: &[u32],
        ar: &mut [f32],
    ) -> Result<f32, FinetuneError> {
        self.forward(isa, p, input, ar)?;
        let d = self.layout.dims;
        let b = self.layout.bufs;
        let (fc, sep) = (self.layout.fc, self.layout.sep);
        let [logits, dlogits] = split(ar, [self.range(b.logits), self.range(b.dlogits)]).ok_or(self.overlap(fc))?;
        let loss = loss::softmax_ce(isa, &Logits::new(d.batch, d.classes), logits, labels, Some(dlogits))
            .map_err(|e| self.kernel(fc, e))?;
        let fc_shape = Linear::new(d.batch, d.c, d.classes);
        {
            let [pooled, dlogits, g] =
                split(ar, [self.range(b.p), self.range(b.dlogits), self.range(b.grads)]).ok_or(self.overlap(fc))?;
            let (g_w, rest) = g.split_at_mut(d.fc_w());
            linear::linear_bwd_weight(isa, &fc_shape, pooled, dlogits, g_w, Some(&mut rest[..d.classes]))
                .map_err(|e| self.kernel(fc, e))?;
        }
        let (Some(a), Some(dp), Some(da)) = (b.a, b.dp, b.da) else {
            return Ok(loss);
        };
        {
            let [dlogits, dps] = split(ar, [self.range(b.dlogits), self.range(dp)]).ok_or(self.overlap(fc))?;
            linear::linear_bwd_input(isa, &fc_shape, dlogits, p.fc_w, dps).map_err(|e| self.kernel(fc, e))?;
        }
        {
            let [dps, das, a] = split(ar, [self.range(dp), self.range(da), self.range(a)]).ok_or(self.overlap(sep))?;
            pool::global_avg_bwd(isa, &Pool::new(d.batch, d.h, d.w, d.c), dps, das).map_err(|e| self.kernel(sep, e))?;
            act::relu_bwd_inplace(isa, a, das).map_err(|e| self.kernel(sep, e))?;
        }
        let input_buf = match self.layout.tail {
            Tail::FcAffine => b.z.unwrap_or(b.cut),
            Tail::Fc | Tail::FcSep => b.cut,
        };
        let [x, dz, g] =
            split(ar, [self.range(input_buf), self.range(da), self.range(b.grads)]).ok_or(self.overlap(sep))?;
        let (g_w, g_b) = g[d.fc_w() + d.classes..].split_at_mut(p.t_w.len());
        match self.layout.tail {
            Tail::Fc => {}
            Tail::FcAffine => affine_bwd(d.c, x, dz, g_w, g_b),
            Tail::FcSep => {
                let s = Linear::new(d.batch * d.hw, d.c_sep_in, d.c);
                linear::linear_bwd_weight(isa, &s, x, dz, g_w, Some(g_b)).map_err(|e| self.kernel(sep, e))?;
            }
        }
        Ok(loss)
    }

    fn overlap(&self, layer: Name) -> FinetuneError {
        EngineError::OverlappingOperands { layer }.into()
    }

    /// One frozen inference step, as the engine runs it.
    fn prefix_step(
        &self,
        isa: Isa,
        step: &Step,
        w: StepWeights<'_>,
        input: &[f32],
        ar: &mut [f32],
    ) -> Result<(), FinetuneError> {
        let read = step_input(step);
        let [ro, y, scratch] = split(ar, [self.region(read), self.region(step.y), self.region(step.scratch)])
            .ok_or(self.overlap(step.layer))?;
        let x: &[f32] = if read == Buf::Input { input } else { ro };
        forward_step(isa, step, self.layout.dims.batch, w, x, y, scratch).map_err(|e| self.kernel(step.layer, e))
    }
}

/// `a[r][c] = max(γ[c]·z[r][c] + β[c], 0)` over rows of `c` channels.
fn affine_relu_fwd(c: usize, z: &[f32], gamma: &[f32], beta: &[f32], a: &mut [f32]) {
    for (zr, ar) in z.chunks_exact(c).zip(a.chunks_exact_mut(c)) {
        for (((o, &v), &g), &b) in ar.iter_mut().zip(zr).zip(gamma).zip(beta) {
            *o = Act::Relu.apply(g * v + b);
        }
    }
}

/// Affine gradients `dγ[c] = Σ_r dz[r][c]·z[r][c]`, `dβ[c] = Σ_r dz[r][c]` (overwritten),
/// where `dz` is the gradient of the affine's output (after the ReLU backward).
fn affine_bwd(c: usize, z: &[f32], dz: &[f32], dgamma: &mut [f32], dbeta: &mut [f32]) {
    dgamma.fill(0.0);
    dbeta.fill(0.0);
    for (zr, dr) in z.chunks_exact(c).zip(dz.chunks_exact(c)) {
        for (((g, b), &v), &dv) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(zr).zip(dr) {
            *g += dv * v;
            *b += dv;
        }
    }
}
