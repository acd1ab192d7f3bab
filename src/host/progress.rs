//! Training progress on stderr: a live bar (epoch, step/total, loss, images/s, ETA) when stderr
//! is a terminal; otherwise one plain line per epoch, and within a long epoch a line every
//! [`PLAIN_EVERY`] with the same figures, so logs stay readable and a long epoch is not silent.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps on stderr drawn with `template` (indicatif's syntax) and the project's
/// bar characters: the one style of the training, evaluation and dataset bars.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template(template).expect("static progress template is valid").progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// How often a plain (non-terminal) display reports within an epoch.
pub const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// Progress display for a training run of `epochs` epochs.
pub struct Progress {
    epochs: u64,
    epoch: u64,
    steps: u64,
    bar: Option<ProgressBar>,
    live: bool,
    started: Instant,
    /// When the plain display last printed a line within the epoch.
    last_line: Instant,
}

impl Progress {
    /// A display that draws a bar only when stderr is a terminal.
    pub fn new(epochs: u64) -> Self {
        Progress::with_mode(epochs, std::io::stderr().is_terminal())
    }

    /// A display with the bar forced on (`live`) or off (one line per epoch).
    pub fn with_mode(epochs: u64, live: bool) -> Self {
        let now = Instant::now();
        Progress { epochs, epoch: 0, steps: 0, bar: None, live, started: now, last_line: now }
    }

    /// Whether a live bar is drawn.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Starts epoch `epoch` (1-based) of `steps` steps.
    pub fn start_epoch(&mut self, epoch: u64, steps: u64) {
        self.epoch = epoch;
        self.steps = steps;
        self.started = Instant::now();
        self.last_line = self.started;
        if self.live {
            let bar = bar(steps, "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} eta {eta}");
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
        } else if !self.live && step < self.steps && self.last_line.elapsed() >= PLAIN_EVERY {
            self.last_line = Instant::now();
            let elapsed = self.started.elapsed();
            eprintln!("{}", plain_line(self.epoch, self.epochs, step, self.steps, loss, images_per_sec, elapsed));
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

/// A plain display's line within an epoch: `epoch 2/6: step 120/781, loss 1.2345, 261 img/s,
/// eta 2m31s` (the epoch's remaining steps at its pace so far).
fn plain_line(epoch: u64, epochs: u64, step: u64, steps: u64, loss: f64, ips: f64, elapsed: Duration) -> String {
    let left = elapsed.as_secs_f64() / step.max(1) as f64 * steps.saturating_sub(step) as f64;
    let left = left.round() as u64;
    format!(
        "epoch {epoch}/{epochs}: step {step}/{steps}, loss {loss:.4}, {ips:.0} img/s, eta {}m{:02}s",
        left / 60,
        left % 60
    )
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_gives_the_step_loss_speed_and_the_epochs_eta() {
        let line = plain_line(2, 6, 120, 781, 1.23456, 261.2, Duration::from_secs(30));
        assert_eq!(line, "epoch 2/6: step 120/781, loss 1.2346, 261 img/s, eta 2m45s");
        // No step done yet: no division by zero.
        assert!(plain_line(1, 1, 0, 10, 0.0, 0.0, Duration::ZERO).ends_with("eta 0m00s"));
    }
}
