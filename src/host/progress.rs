//! Training progress on stderr: a live bar (epoch, step/total, loss, images/s, ETA) when stderr
//! is a terminal; otherwise one plain line per epoch, so logs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress display for a training run of `epochs` epochs.
pub struct Progress {
    epochs: u64,
    epoch: u64,
    bar: Option<ProgressBar>,
    live: bool,
    started: Instant,
}

impl Progress {
    /// A display that draws a bar only when stderr is a terminal.
    pub fn new(epochs: u64) -> Self {
        Progress::with_mode(epochs, std::io::stderr().is_terminal())
    }

    /// A display with the bar forced on (`live`) or off (one line per epoch).
    pub fn with_mode(epochs: u64, live: bool) -> Self {
        Progress { epochs, epoch: 0, bar: None, live, started: Instant::now() }
    }

    /// Whether a live bar is drawn.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Starts epoch `epoch` (1-based) of `steps` steps.
    pub fn start_epoch(&mut self, epoch: u64, steps: u64) {
        self.epoch = epoch;
        self.started = Instant::now();
        if self.live {
            let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} eta {eta}")
                .expect("static progress template is valid")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(format!("epoch {epoch}/{}", self.epochs));
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
        }
    }

    /// Reports that `step` steps of the epoch are done, with the running loss and throughput.
    pub fn update(&mut self, step: u64, loss: f64, images_per_sec: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(format!("loss {loss:.4} {images_per_sec:.0} img/s"));
        }
    }

    /// Ends the epoch: clears the bar, then prints `summary` (e.g. losses and accuracies) on
    /// one line prefixed with the epoch number and its duration.
    pub fn finish_epoch(&mut self, summary: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("epoch {}/{} ({:.1} s): {summary}", self.epoch, self.epochs, self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}
