//! Learning-rate schedules, evaluated per optimizer step (0-based).

use std::boxed::Box;
use std::fmt;
use std::vec::Vec;

/// A learning-rate schedule. Build with the checked constructors; a value built from the
/// variants directly can be checked by the same rules with [`Schedule::validate`] (which
/// [`Trainer::new`](super::Trainer::new) does).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The same rate every step.
    Constant(f32),
    /// Paddle's `PiecewiseDecay`: `values[i]` where `i` is the number of boundaries `≤ step`
    /// (`values.len() == boundaries.len() + 1`, boundaries strictly increasing).
    Piecewise {
        /// Steps at which the rate changes.
        boundaries: Vec<usize>,
        /// The rates.
        values: Vec<f32>,
    },
    /// `base · ½(1 + cos(π·min(step, total)/total))`: from `base` down to 0 at `total` steps
    /// (and 0 after).
    Cosine {
        /// Starting rate.
        base: f32,
        /// Steps to reach 0.
        total: usize,
    },
    /// Linear warmup: for `step < steps`, `inner(0)·(step + 1)/steps`; afterwards
    /// `inner(step − steps)` (the wrapped schedule starts when warmup ends, as Paddle's
    /// `LinearWarmup`).
    Warmup {
        /// Warmup steps.
        steps: usize,
        /// The schedule after warmup.
        inner: Box<Schedule>,
    },
}

/// An invalid schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleError(pub &'static str);

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "learning-rate schedule: {}", self.0)
    }
}

impl std::error::Error for ScheduleError {}

fn check_rate(lr: f32) -> Result<(), ScheduleError> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(ScheduleError("rates must be finite and >= 0"))
    }
}

fn check_piecewise(boundaries: &[usize], values: &[f32]) -> Result<(), ScheduleError> {
    if values.len() != boundaries.len() + 1 {
        return Err(ScheduleError("piecewise needs one more value than boundaries"));
    }
    if boundaries.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ScheduleError("piecewise boundaries must be strictly increasing"));
    }
    values.iter().try_for_each(|&v| check_rate(v))
}

fn check_cosine(base: f32, total: usize) -> Result<(), ScheduleError> {
    check_rate(base)?;
    if total == 0 {
        return Err(ScheduleError("cosine needs at least one step"));
    }
    Ok(())
}

fn check_warmup(steps: usize) -> Result<(), ScheduleError> {
    if steps == 0 {
        return Err(ScheduleError("warmup needs at least one step"));
    }
    Ok(())
}

impl Schedule {
    /// A constant rate.
    pub fn constant(lr: f32) -> Result<Schedule, ScheduleError> {
        check_rate(lr)?;
        Ok(Schedule::Constant(lr))
    }

    /// Piecewise constant (see [`Schedule::Piecewise`]).
    pub fn piecewise(boundaries: Vec<usize>, values: Vec<f32>) -> Result<Schedule, ScheduleError> {
        check_piecewise(&boundaries, &values)?;
        Ok(Schedule::Piecewise { boundaries, values })
    }

    /// Cosine decay from `base` to 0 over `total` steps.
    pub fn cosine(base: f32, total: usize) -> Result<Schedule, ScheduleError> {
        check_cosine(base, total)?;
        Ok(Schedule::Cosine { base, total })
    }

    /// Linear warmup over `steps` steps in front of `inner`.
    pub fn warmup(steps: usize, inner: Schedule) -> Result<Schedule, ScheduleError> {
        check_warmup(steps)?;
        Ok(Schedule::Warmup { steps, inner: Box::new(inner) })
    }

    /// Checks a schedule by the rules of the constructors, wrapped schedules included (a
    /// value built from the public variants skips them).
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match self {
            Schedule::Constant(lr) => check_rate(*lr),
            Schedule::Piecewise { boundaries, values } => check_piecewise(boundaries, values),
            Schedule::Cosine { base, total } => check_cosine(*base, *total),
            Schedule::Warmup { steps, inner } => {
                check_warmup(*steps)?;
                inner.validate()
            }
        }
    }

    /// The rate at `step`. Never panics on a schedule [`Schedule::validate`] refuses: a
    /// `Piecewise` with too few values gives its last value where a missing one would be
    /// used (0 with none), a `Cosine` of `total` 0 gives 0 (its end) at every step, and a
    /// non-finite or negative rate is returned as it is.
    pub fn lr(&self, step: usize) -> f32 {
        match self {
            Schedule::Constant(lr) => *lr,
            Schedule::Piecewise { boundaries, values } => {
                let i = boundaries.iter().filter(|&&b| b <= step).count();
                values.get(i).or(values.last()).copied().unwrap_or(0.0)
            }
            Schedule::Cosine { total: 0, .. } => 0.0,
            Schedule::Cosine { base, total } => {
                let t = step.min(*total) as f64 / *total as f64;
                (*base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
            Schedule::Warmup { steps, inner } => {
                if step < *steps {
                    inner.lr(0) * (step + 1) as f32 / *steps as f32
                } else {
                    inner.lr(step - steps)
                }
            }
        }
    }
}
