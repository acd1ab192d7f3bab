//! Activations and elementwise ops: ReLU forward/backward, residual add.

/// An activation fused into a kernel's output epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Act {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
}

impl Act {
    /// Applies the activation to one value.
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Act::None => v,
            Act::Relu => {
                if v > 0.0 {
                    v
                } else {
                    0.0
                }
            }
        }
    }
}
