//! A barrier for the executor's threads that spins before it yields.
//!
//! The executor's threads meet at every train-mode batch norm (54 times per MobileNetV1 step,
//! forward and backward) and usually arrive within microseconds of each other. `std`'s
//! `Barrier` parks the early thread on a futex and the wake-up alone cost ~30–80 µs per meeting on
//! the 2-core VM (2–3 ms per tutorial distillation step, measured); spinning first avoids it.
//! After [`SPINS`] checks the waiting thread yields its core on every further check, so an
//! oversubscribed machine (more threads than cores) still makes progress.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// Spins this many times before yielding the core on each further check.
const SPINS: u32 = 1 << 14;

/// A reusable barrier for `n` threads.
pub(crate) struct SpinBarrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    pub(crate) fn new(n: usize) -> SpinBarrier {
        SpinBarrier { n, arrived: AtomicUsize::new(0), generation: AtomicUsize::new(0) }
    }

    /// Blocks until all `n` threads have called `wait` (for this round).
    pub(crate) fn wait(&self) {
        let gen = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == gen {
            if spins < SPINS {
                spins += 1;
                spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SpinBarrier;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn no_thread_passes_before_all_have_arrived() {
        const N: usize = 3;
        const ROUNDS: usize = 2000;
        let barrier = SpinBarrier::new(N);
        let arrived = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..N {
                s.spawn(|| {
                    for round in 0..ROUNDS {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        barrier.wait();
                        assert!(arrived.load(Ordering::SeqCst) >= N * (round + 1), "passed round {round} early");
                        barrier.wait();
                    }
                });
            }
        });
        assert_eq!(arrived.load(Ordering::SeqCst), N * ROUNDS);
    }
}
