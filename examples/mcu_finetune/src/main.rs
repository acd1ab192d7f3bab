//! tinykd's on-device fine-tuning on a Cortex-M4F, no heap: the deployed MobileNetV1 student is
//! an f16 inference file in flash (the frozen prefix runs from it); the trainable tail and its
//! momentum live in a static `[f32]`; activations, gradients and scratch in one static arena
//! planned at compile time (`finetune_arena_bytes`).
//!
//! It prints (defmt over semihosting) the held-out accuracy on the user's shifted task, the
//! loss of every Momentum SGD step with its SysTick ticks (= instructions under QEMU's
//! `-icount shift=0`, calibrated against a loop of known length), the held-out accuracy after
//! fine-tuning and a checksum of the updated parameters. `check.sh` compares those lines with
//! the host's (`cargo run --example finetune_assets`). Exits 0 if held-out accuracy rose by at
//! least [`MIN_RISE`] samples, 1 otherwise; a panic exits with 101.
#![no_std]
#![no_main]

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use cortex_m_rt::entry;
use defmt_semihosting as _;
use semihosting as _;
use tinykd::finetune::{finetune_arena_bytes, state_len, FineTuner, Tail};
use tinykd::kernels::optim::Momentum;
use tinykd::kernels::Isa;
use tinykd::weights::{Aligned, WeightFile};

/// `CFG`, `BATCH`, `N_TRAIN`, `N_HELDOUT`, `EPOCHS`, `HP`, written by `finetune_assets`.
/// SysTick instruction counting, shared with the inference firmware.
#[path = "../../mcu/src/ticks.rs"]
mod ticks;
use ticks::Ticks;

mod assets {
    use tinykd::kernels::optim::Momentum;
    use tinykd::ModelConfig;
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/model.rs"));
}
use assets::{BATCH, CFG, EPOCHS, HP, N_HELDOUT, N_TRAIN};

/// The trained tail of this build.
#[cfg(feature = "tail-fc")]
const TAIL: Tail = Tail::Fc;
#[cfg(all(feature = "tail-sep", not(feature = "tail-fc")))]
const TAIL: Tail = Tail::FcSep;
#[cfg(not(any(feature = "tail-fc", feature = "tail-sep")))]
const TAIL: Tail = Tail::FcAffine;

/// Held-out samples the fine-tuning must gain (of [`N_HELDOUT`]) for the firmware to pass:
/// 6 of 64, i.e. +9.4 points (docs/FINETUNE.md).
const MIN_RISE: usize = 6;

/// The f16 inference weight file in flash, 16-aligned so it is parsed and read in place.
static WEIGHTS: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/student_f16.tkd"));
/// Training images `[N_TRAIN][32][32][3]` f32 LE and their labels (u32 LE).
static TRAIN: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/train.bin"));
static TRAIN_LABELS: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/train_labels.bin"));
/// Held-out images and labels.
static HELDOUT: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/heldout.bin"));
static HELDOUT_LABELS: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/heldout_labels.bin"));

/// Arena bytes (any alignment) and state values of [`TAIL`], compile-time constants.
const ARENA_BYTES: usize = finetune_arena_bytes(&CFG, TAIL, BATCH);
const STATE_LEN: usize = state_len(&CFG, TAIL);
/// Values of one input image.
const IMAGE_LEN: usize = CFG.in_h as usize * CFG.in_w as usize * CFG.in_c as usize;

/// Static RAM handed out once as `&'static mut`.
#[repr(C, align(16))]
struct Once<T> {
    value: UnsafeCell<T>,
    taken: AtomicBool,
}

// SAFETY: the value is only reachable through `Once::take`, which hands out the one `&mut` at
// most once (guarded by the atomic flag).
unsafe impl<T> Sync for Once<T> {}

impl<T> Once<T> {
    /// The value, the first time; `None` afterwards.
    fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the flag was false, so no other reference to the value exists or ever will.
        Some(unsafe { &mut *self.value.get() })
    }
}

/// The fine-tuning arena (activations for the backward pass, gradients, scratch).
static ARENA: Once<[u8; ARENA_BYTES]> = Once { value: UnsafeCell::new([0; ARENA_BYTES]), taken: AtomicBool::new(false) };
/// Trainable parameters and their momentum (f32).
static STATE: Once<[f32; STATE_LEN]> = Once { value: UnsafeCell::new([0.0; STATE_LEN]), taken: AtomicBool::new(false) };

/// The bytes of a little-endian 4-byte-element blob as `&[T]` (16-aligned by [`Aligned`]).
fn as_words<T: Copy>(bytes: &'static [u8]) -> &'static [T] {
    // SAFETY: only used with `f32` and `u32`, for which every bit pattern is valid; `align_to`
    // only reinterprets the aligned middle.
    let (pre, words, post) = unsafe { bytes.align_to::<T>() };
    assert!(pre.is_empty() && post.is_empty(), "blob misaligned or not a multiple of 4 bytes");
    words
}

#[entry]
fn main() -> ! {
    let status = run();
    semihosting::process::exit(status)
}

/// Everything the firmware does; returns the exit status.
fn run() -> i32 {
    let cp = cortex_m::Peripherals::take().expect("core peripherals taken once");
    let ticks = Ticks::start(cp.SYST);
    ticks::calibrate(&ticks);
    let file = match WeightFile::parse(&WEIGHTS.0) {
        Ok(file) => file,
        Err(e) => {
            defmt::error!("weights: {}", defmt::Display2Format(&e));
            return 1;
        }
    };
    match finetune(&ticks, &file) {
        Ok(rise) if rise >= MIN_RISE as i32 => {
            defmt::info!("result PASS rise={=i32} min={=usize}", rise, MIN_RISE);
            0
        }
        Ok(rise) => {
            defmt::error!("result FAIL rise={=i32} min={=usize}", rise, MIN_RISE);
            1
        }
        Err(e) => {
            defmt::error!("finetune: {}", defmt::Display2Format(&e));
            1
        }
    }
}

/// Held-out top-1 count.
fn correct(ft: &FineTuner, state: &[f32], arena: &mut [u8]) -> Result<usize, tinykd::finetune::FinetuneError> {
    let (x, y) = (as_words::<f32>(&HELDOUT.0), as_words::<u32>(&HELDOUT_LABELS.0));
    let mut ok = 0;
    for (xs, ys) in x.chunks_exact(IMAGE_LEN * BATCH).zip(y.chunks_exact(BATCH)) {
        ok += ft.correct(Isa::scalar(), state, xs, ys, arena)?;
    }
    Ok(ok)
}

/// Fine-tunes [`TAIL`] of the student in `file` and prints the lines `check.sh` compares;
/// returns the held-out gain.
#[inline(never)]
fn finetune(ticks: &Ticks, file: &WeightFile) -> Result<i32, tinykd::finetune::FinetuneError> {
    let ft = FineTuner::new(&CFG, TAIL, BATCH, file)?;
    let arena = ARENA.take().expect("arena taken once");
    let state = STATE.take().expect("state taken once");
    let hp: Momentum = HP;
    assert!(as_words::<f32>(&TRAIN.0).len() == N_TRAIN * IMAGE_LEN, "train.bin size");
    assert!(as_words::<f32>(&HELDOUT.0).len() == N_HELDOUT * IMAGE_LEN, "heldout.bin size");
    defmt::info!(
        "tail {=str} trainable={=usize} state_bytes={=usize} arena_bytes={=usize}",
        TAIL.as_str(),
        ft.layout().trainable(),
        4 * STATE_LEN,
        ARENA_BYTES
    );
    ft.init_state(state)?;
    let t0 = ticks.now();
    let before = correct(&ft, state, arena)?;
    let eval_ticks = ticks.now() - t0;
    defmt::info!("before correct={=usize} of {=usize}", before, N_HELDOUT);
    defmt::info!("eval ticks={=u64} samples={=usize}", eval_ticks, N_HELDOUT);
    let (x, y) = (as_words::<f32>(&TRAIN.0), as_words::<u32>(&TRAIN_LABELS.0));
    let mut step = 0usize;
    for _ in 0..EPOCHS {
        for (xs, ys) in x.chunks_exact(IMAGE_LEN * BATCH).zip(y.chunks_exact(BATCH)) {
            let t = ticks.now();
            let loss = ft.step(Isa::scalar(), hp, state, xs, ys, arena)?;
            let dt = ticks.now() - t;
            defmt::info!("step {=usize} loss={=f32} ticks={=u64}", step, loss, dt);
            step += 1;
        }
    }
    let after = correct(&ft, state, arena)?;
    defmt::info!("after correct={=usize} of {=usize}", after, N_HELDOUT);
    let p = ft.params(state);
    let sum: f32 = p.iter().sum();
    let abs: f32 = p.iter().map(|v| v.abs()).sum();
    defmt::info!("params sum={=f32} abs={=f32} first={=f32} last={=f32}", sum, abs, p[0], p[p.len() - 1]);
    Ok(after as i32 - before as i32)
}
