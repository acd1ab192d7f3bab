//! Instruction counting under QEMU: a free-running 64-bit SysTick count, and a loop of known
//! instruction count to calibrate it (shared by the firmware binaries).
//!
//! Under `-icount shift=0` the emulated clock advances 1 ns per instruction, but the board's
//! SysTick runs at 25 MHz, so one tick is 40 instructions; the binaries time [`loop_ticks`] at
//! two lengths and report both, and `check.sh` turns ticks into instructions with that ratio.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::{SCB, SYST};
use cortex_m_rt::exception;

/// SysTick reload value: the counter's full 24 bits.
const SYST_RELOAD: u32 = 0x00FF_FFFF;
/// SysTick wrap-arounds since [`Ticks::start`].
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// A free-running 64-bit tick count from SysTick (processor clock) plus its wrap interrupt.
pub struct Ticks(SYST);

impl Ticks {
    /// Starts SysTick counting down from [`SYST_RELOAD`] with its interrupt enabled.
    pub fn start(mut syst: SYST) -> Ticks {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(SYST_RELOAD);
        syst.clear_current();
        syst.enable_interrupt();
        syst.enable_counter();
        // The first reload from the cleared value is not a wrap: wait for it, then count.
        while SYST::get_current() == 0 {}
        WRAPS.store(0, Ordering::Relaxed);
        Ticks(syst)
    }

    /// Ticks since [`Ticks::start`].
    pub fn now(&self) -> u64 {
        loop {
            let w1 = WRAPS.load(Ordering::Relaxed);
            let cvr = SYST::get_current();
            // A wrap whose interrupt is still pending has reloaded the counter but not yet
            // counted: the value read is then near the top.
            let pending = SCB::is_pendst_pending() && cvr > SYST_RELOAD / 2;
            if WRAPS.load(Ordering::Relaxed) == w1 {
                let wraps = w1 as u64 + pending as u64;
                return wraps * (SYST_RELOAD as u64 + 1) + (SYST_RELOAD - cvr) as u64;
            }
        }
    }
}

/// Runs a loop of exactly `2·n` instructions (`subs`, `bne`) and returns the ticks it took.
fn loop_ticks(t: &Ticks, n: u32) -> u64 {
    let t0 = t.now();
    // SAFETY: the asm only decrements a scratch register to zero; it touches no memory or stack.
    unsafe {
        core::arch::asm!("2:", "subs {0}, {0}, #1", "bne 2b", inout(reg) n => _, options(nomem, nostack));
    }
    t.now() - t0
}

/// Logs the calibration: loops of `2·n1` and `2·n2` instructions and the ticks each took (the
/// fixed cost of reading the counter cancels in the difference).
pub fn calibrate(t: &Ticks) {
    let (n1, n2) = (100_000u32, 1_100_000u32);
    let (t1, t2) = (loop_ticks(t, n1), loop_ticks(t, n2));
    defmt::info!("calib loop_insns={=u32} ticks={=u64} loop_insns={=u32} ticks={=u64}", 2 * n1, t1, 2 * n2, t2);
}
