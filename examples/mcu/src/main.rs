//! tinykd's MobileNetV1 student on a Cortex-M4F, no heap: weights in flash (f32, or f16 with the
//! `f16` feature), a static arena sized by the memory planner at compile time, the test images
//! and the host engine's logits embedded by `cargo run --example mcu_assets`.
//!
//! At boot it calibrates SysTick against a loop of known instruction count, then runs the
//! engine's scalar path on every image and logs (defmt over semihosting) the top-1, the logits,
//! their largest difference from the host engine's and the SysTick ticks per inference; finally
//! the stack high-water mark (the stack is painted at reset by cortex-m-rt's `paint-stack`).
//! It exits QEMU with status 0 if every image matches the host (same top-1, logits within
//! [`TOLERANCE`]), 1 otherwise; a panic prints to the host's stderr and exits with 101.
#![no_std]
#![no_main]

mod ticks;

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use cortex_m_rt::entry;
use defmt_semihosting as _;
use semihosting as _;
use ticks::Ticks;
use tinykd::engine::{Engine, EnginePlan, StaticEngine};
use tinykd::kernels::Isa;
use tinykd::models;
use tinykd::plan::{self, Plan};
use tinykd::weights::{Aligned, WeightFile};

/// `CFG` (the student's `ModelConfig`) and `N_IMAGES`, written by `mcu_assets`.
mod assets {
    use tinykd::{Arch, ModelConfig, Stem};
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/model.rs"));
}
use assets::{CFG, N_IMAGES};

/// Storage dtype of the weights this build runs.
#[cfg(not(feature = "f16"))]
const DTYPE: &str = "f32";
#[cfg(feature = "f16")]
const DTYPE: &str = "f16";

/// The inference weight file in flash, 16-aligned so it is parsed and read in place.
#[cfg(not(feature = "f16"))]
static WEIGHTS: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/student_f32.tkd"));
#[cfg(feature = "f16")]
static WEIGHTS: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/student_f16.tkd"));

/// The host engine's logits for the same weight file, `[N_IMAGES][classes]` f32 LE.
#[cfg(not(feature = "f16"))]
static EXPECTED: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/expected_f32.bin"));
#[cfg(feature = "f16")]
static EXPECTED: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/expected_f16.bin"));

/// The test images, `[N_IMAGES][h][w][c]` normalised f32 LE (NHWC).
static IMAGES: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/images.bin"));

/// Largest accepted `|device − host|` per logit (the same as `check.sh`). The device runs the
/// same scalar kernels as the host reference, so both are bit-identical in practice.
#[cfg(not(feature = "f16"))]
const TOLERANCE: f32 = 1e-3;
#[cfg(feature = "f16")]
const TOLERANCE: f32 = 1e-5;

/// The batch-1 schedule and memory plan of [`CFG`], evaluated at compile time into flash: the
/// engine borrows it, so start-up builds no `Program`/`Schedule` on the stack.
static ENGINE_PLAN: EnginePlan = EnginePlan::build(&CFG, 1);
/// The batch-1 memory plan of [`CFG`], evaluated at compile time.
const PLAN: Plan = match plan::plan_for(&CFG, 1) {
    Ok((_, plan)) => plan,
    Err(_) => panic!("invalid model configuration"),
};
/// Multiply-accumulates of one inference.
const MACS: usize = match models::program(&CFG) {
    Ok(prog) => prog.total_macs(),
    Err(_) => panic!("invalid model configuration"),
};
/// Values of one input image.
const IMAGE_LEN: usize = CFG.in_h as usize * CFG.in_w as usize * CFG.in_c as usize;
/// Logits of one image.
const CLASSES: usize = CFG.classes as usize;

/// The activation arena: exactly [`Plan::peak`] bytes, aligned to [`plan::ALIGN`] (64) so the
/// engine needs no slack (an unaligned `[u8; plan::arena_bytes(&CFG, 1)]` works as well).
#[repr(C, align(64))]
struct Arena {
    bytes: UnsafeCell<[u8; PLAN.peak]>,
    taken: AtomicBool,
}

// SAFETY: the bytes are only reachable through `Arena::take`, which hands out the one `&mut`
// at most once (guarded by the atomic flag).
unsafe impl Sync for Arena {}

impl Arena {
    /// The arena's bytes, the first time; `None` afterwards.
    // The `&mut` from `&self` is sound: the flag makes it the only one ever handed out.
    #[allow(clippy::mut_from_ref)]
    fn take(&'static self) -> Option<&'static mut [u8]> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the flag was false, so no other reference to the bytes exists or ever will.
        Some(unsafe { &mut *self.bytes.get() })
    }
}

static ARENA: Arena = Arena { bytes: UnsafeCell::new([0; PLAN.peak]), taken: AtomicBool::new(false) };

/// The bytes of a little-endian f32 blob as `&[f32]` (16-aligned by [`Aligned`]).
fn as_f32s(bytes: &'static [u8]) -> &'static [f32] {
    // SAFETY: every bit pattern is a valid f32; `align_to` only reinterprets the aligned middle.
    let (pre, floats, post) = unsafe { bytes.align_to::<f32>() };
    assert!(pre.is_empty() && post.is_empty(), "f32 blob misaligned or not a multiple of 4 bytes");
    floats
}

/// The painted stack region `_stack_end.._stack_start` (cortex-m-rt paints it at reset).
fn stack_region() -> (usize, usize) {
    extern "C" {
        static mut _stack_end: u32;
        static mut _stack_start: u32;
    }
    (&raw const _stack_end as usize, &raw const _stack_start as usize)
}

/// Bytes of the stack used since it was last painted: the region is scanned from the bottom
/// for the first word that is no longer `STACK_PAINT_VALUE`.
fn stack_used() -> usize {
    let (bottom, top) = stack_region();
    let mut p = bottom;
    while p < top {
        // SAFETY: `p` is a word-aligned address inside the stack region (cortex-m-rt aligns
        // both ends to 4); volatile so the scan really reads the painted memory.
        if unsafe { core::ptr::read_volatile(p as *const u32) } != cortex_m_rt::STACK_PAINT_VALUE {
            break;
        }
        p += 4;
    }
    top - p
}

/// Paints the free part of the stack again (from its bottom to just below the current stack
/// pointer), so the next [`stack_used`] measures only what runs after this call; returns the
/// bytes in use by the callers' frames.
#[inline(never)]
fn repaint_free_stack() -> usize {
    let sp: usize;
    // SAFETY: reads the stack pointer into a register; no memory is touched.
    unsafe { core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    let (bottom, _) = stack_region();
    // Stay clear of this function's own frame, which sits at and above `sp`.
    let mut p = bottom;
    while p + 64 < sp {
        // SAFETY: `p` is word-aligned, inside the stack region and below the stack pointer,
        // so no live frame is there (an interrupt taken meanwhile pushes and pops its frame
        // below `sp` before this loop resumes; at worst a word is repainted after it).
        unsafe { core::ptr::write_volatile(p as *mut u32, cortex_m_rt::STACK_PAINT_VALUE) };
        p += 4;
    }
    stack_region().1 - sp
}

/// Index of the largest logit (the first one on ties).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
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

    defmt::info!(
        "model mobilenet_v1 scale_permille={=u16} dtype={=str} macs={=usize} weights_bytes={=usize}",
        CFG.scale_permille,
        DTYPE,
        MACS,
        WEIGHTS.0.len()
    );
    defmt::info!("arena bytes={=usize} lower_bound={=usize}", PLAN.peak, PLAN.lower_bound);

    let t_setup = ticks.now();
    let Some(engine) = setup() else { return 1 };
    defmt::info!(
        "setup ticks={=u64} stack_used={=usize} engine_bytes={=usize}",
        ticks.now() - t_setup,
        stack_used(),
        core::mem::size_of::<StaticEngine>()
    );

    let caller = repaint_free_stack();
    let result = infer_all(&ticks, &engine);
    defmt::info!(
        "stack inference_used={=usize} caller_frames={=usize} region={=usize}",
        stack_used(),
        caller,
        stack_region().1 - stack_region().0
    );
    match result {
        Some(0) => {
            defmt::info!("result PASS images={=usize}", N_IMAGES);
            0
        }
        Some(failures) => {
            defmt::error!("result FAIL mismatches={=u32} of {=usize}", failures, N_IMAGES);
            1
        }
        None => 1,
    }
}

/// Parses the weight file and prepares the engine over the compile-time [`ENGINE_PLAN`] (kept
/// out of line so its temporaries do not stay in the caller's frame during inference). The
/// file is part of this image in flash, so its structure is validated but its CRC pass (the
/// bulk of start-up) is skipped: `mcu_assets` wrote it with its CRC, the flasher verifies the
/// image, and `check.sh` compares every logit with the host's.
#[inline(never)]
fn setup() -> Option<StaticEngine<'static>> {
    let file = WeightFile::parse_unchecked_crc(&WEIGHTS.0)
        .map_err(|e| defmt::error!("weight file: {}", defmt::Debug2Format(&e)))
        .ok()?;
    Engine::from_plan(&ENGINE_PLAN, &file).map_err(|e| defmt::error!("engine: {}", defmt::Display2Format(&e))).ok()
}

/// Runs the engine (scalar path) on every image and compares with the host's logits; returns
/// the number of mismatching images, or `None` on an error (logged).
#[inline(never)]
fn infer_all(ticks: &Ticks, engine: &StaticEngine<'static>) -> Option<u32> {
    let arena = ARENA.take().expect("arena taken once");
    let images = as_f32s(&IMAGES.0);
    let expected = as_f32s(&EXPECTED.0);
    if images.len() != N_IMAGES * IMAGE_LEN || expected.len() != N_IMAGES * CLASSES {
        defmt::error!(
            "assets hold {=usize} image values and {=usize} logits, expected {=usize} and {=usize}",
            images.len(),
            expected.len(),
            N_IMAGES * IMAGE_LEN,
            N_IMAGES * CLASSES
        );
        return None;
    }
    let mut failures = 0u32;
    for (i, (image, want)) in images.chunks_exact(IMAGE_LEN).zip(expected.chunks_exact(CLASSES)).enumerate() {
        let mut logits = [0.0f32; CLASSES];
        let t0 = ticks.now();
        let result = engine.run(Isa::scalar(), image, arena, &mut logits);
        let dt = ticks.now() - t0;
        if let Err(e) = result {
            defmt::error!("image {=usize}: engine: {}", i, defmt::Display2Format(&e));
            return None;
        }
        let (top1, host_top1) = (argmax(&logits), argmax(want));
        let diff = logits.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let ok = top1 == host_top1 && diff <= TOLERANCE;
        failures += !ok as u32;
        defmt::info!(
            "image {=usize} top1={=usize} host_top1={=usize} max_diff={=f32} ok={=bool} ticks={=u64} logits={=[?]}",
            i,
            top1,
            host_top1,
            diff,
            ok,
            dt,
            &logits[..]
        );
    }
    Some(failures)
}
