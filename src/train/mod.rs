//! Host training (`std`): the multi-threaded forward/backward [`Executor`] over a model
//! program, learning-rate [`Schedule`]s and the library [`Trainer`] loop (distillation losses
//! come from [`crate::dist`]).

pub mod exec;
pub(crate) mod lines;
pub mod sched;
mod spin;
pub mod trainer;

pub use exec::{ExecError, Executor, Mode};
pub use sched::{Schedule, ScheduleError};
pub use trainer::{
    DataSource, Diverged, EvalReport, MemoryData, StepPhases, StepReport, TrainConfig, TrainError, Trainer,
};
