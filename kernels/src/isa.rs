//! The one dispatch point: which instruction-set path a kernel call runs.
//!
//! An [`Isa`] can only be obtained through a constructor that has checked the CPU supports it,
//! so a kernel that receives `Isa` with kind [`IsaKind::Avx2`] may call its
//! `#[target_feature(enable = "avx2,fma,f16c")]` inner function soundly. Resolve it once
//! ([`Isa::detect`]) and pass it explicitly; there is no global state. Tests and benchmarks force
//! a path with [`Isa::force`].

/// The instruction-set families that have kernel paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IsaKind {
    /// Portable scalar Rust: the specification, and what a Cortex-M4F runs.
    Scalar,
    /// x86_64 with AVX2 + FMA + F16C.
    Avx2,
    /// aarch64 Advanced SIMD (NEON), which every aarch64 CPU has.
    Neon,
}

impl IsaKind {
    /// Lower-case name used in benchmark ids and logs: `scalar`, `avx2`, `neon`.
    pub const fn name(self) -> &'static str {
        match self {
            IsaKind::Scalar => "scalar",
            IsaKind::Avx2 => "avx2",
            IsaKind::Neon => "neon",
        }
    }

    /// All kinds, for iterating in tests and benchmarks.
    pub const ALL: [IsaKind; 3] = [IsaKind::Scalar, IsaKind::Avx2, IsaKind::Neon];
}

/// A checked choice of kernel path. `Copy`, one byte; pass it to every kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isa {
    kind: IsaKind,
}

impl Isa {
    /// The portable scalar path (always available).
    pub const fn scalar() -> Isa {
        Isa { kind: IsaKind::Scalar }
    }

    /// The kind of path this value selects.
    pub const fn kind(self) -> IsaKind {
        self.kind
    }

    /// The best path the CPU supports. With the `std` feature this asks the CPU at run time;
    /// without it, it uses the target features the crate was compiled with.
    pub fn detect() -> Isa {
        for kind in [IsaKind::Avx2, IsaKind::Neon] {
            if let Some(isa) = Isa::force(kind) {
                return isa;
            }
        }
        Isa::scalar()
    }

    /// The path `kind` if this CPU can run it, else `None`.
    pub fn force(kind: IsaKind) -> Option<Isa> {
        if available(kind) {
            Some(Isa { kind })
        } else {
            None
        }
    }
}

impl Default for Isa {
    /// Same as [`Isa::detect`].
    fn default() -> Self {
        Isa::detect()
    }
}

#[allow(unreachable_code)]
fn available(kind: IsaKind) -> bool {
    match kind {
        IsaKind::Scalar => true,
        IsaKind::Avx2 => {
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            {
                extern crate std;
                return std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c");
            }
            #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
            {
                return cfg!(all(target_feature = "avx2", target_feature = "fma", target_feature = "f16c"));
            }
            false
        }
        IsaKind::Neon => cfg!(all(target_arch = "aarch64", target_feature = "neon")),
    }
}
