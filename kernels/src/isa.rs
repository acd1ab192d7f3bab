//! The one dispatch point: which instruction-set path a kernel call runs.
//!
//! An [`Isa`] can only be obtained through a constructor that has checked the CPU supports it,
//! so a kernel that receives `Isa` with kind [`IsaKind::Avx2`] (or [`IsaKind::Avx512`], which
//! implies it) may call its `#[target_feature(enable = "avx2,fma,f16c")]` inner function
//! soundly. Resolve it once ([`Isa::detect`]) and pass it explicitly; there is no global state.
//! Tests and benchmarks force a path with [`Isa::force`]; users with `TINYKD_ISA`
//! (`Isa::from_env`, with the `std` feature).

/// The instruction-set families that have kernel paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IsaKind {
    /// Portable scalar Rust: the specification, and what a Cortex-M4F runs.
    Scalar,
    /// x86_64 with AVX2 + FMA + F16C.
    Avx2,
    /// x86_64 with AVX-512F besides AVX2 + FMA + F16C: 16-lane FMA in the GEMM micro-kernel and
    /// the panel product (the compute-bound kernels); every other kernel runs its AVX2 path.
    Avx512,
    /// aarch64 Advanced SIMD (NEON), which every aarch64 CPU has.
    Neon,
}

impl IsaKind {
    /// Lower-case name used in benchmark ids and logs: `scalar`, `avx2`, `avx512`, `neon`.
    pub const fn name(self) -> &'static str {
        match self {
            IsaKind::Scalar => "scalar",
            IsaKind::Avx2 => "avx2",
            IsaKind::Avx512 => "avx512",
            IsaKind::Neon => "neon",
        }
    }

    /// All kinds, for iterating in tests and benchmarks.
    pub const ALL: [IsaKind; 4] = [IsaKind::Scalar, IsaKind::Avx2, IsaKind::Avx512, IsaKind::Neon];

    /// Whether this path may run the AVX2+FMA+F16C code (AVX-512 implies it: an `Isa` of kind
    /// Avx512 exists only on CPUs that have both).
    pub const fn has_avx2(self) -> bool {
        matches!(self, IsaKind::Avx2 | IsaKind::Avx512)
    }
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

    /// The best path the CPU supports. With the `std` feature this asks the CPU at run time
    /// (and honours the `TINYKD_ISA` override, see `Isa::from_env`); without it, it uses the
    /// target features the crate was compiled with.
    pub fn detect() -> Isa {
        #[cfg(feature = "std")]
        if let Ok(Some(isa)) = Isa::from_env() {
            return isa;
        }
        for kind in [IsaKind::Avx512, IsaKind::Avx2, IsaKind::Neon] {
            if let Some(isa) = Isa::force(kind) {
                return isa;
            }
        }
        Isa::scalar()
    }

    /// The path named by the environment variable `TINYKD_ISA` (`scalar`, `avx2`, `avx512`,
    /// `neon`): `Ok(None)` when it is unset or empty, an error message when it names no path or
    /// one this CPU cannot run ([`Isa::detect`] then ignores it; the `tinykd` tool refuses it).
    #[cfg(feature = "std")]
    pub fn from_env() -> core::result::Result<Option<Isa>, &'static str> {
        extern crate std;
        let Ok(name) = std::env::var("TINYKD_ISA") else { return Ok(None) };
        if name.is_empty() {
            return Ok(None);
        }
        let kind = IsaKind::ALL
            .into_iter()
            .find(|k| k.name() == name.trim().to_ascii_lowercase())
            .ok_or("TINYKD_ISA names no kernel path (scalar, avx2, avx512, neon)")?;
        Isa::force(kind).map(Some).ok_or("TINYKD_ISA names a path this CPU cannot run")
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
        IsaKind::Avx512 => {
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            {
                extern crate std;
                return available(IsaKind::Avx2) && std::is_x86_feature_detected!("avx512f");
            }
            #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
            {
                return available(IsaKind::Avx2) && cfg!(target_feature = "avx512f");
            }
            false
        }
        IsaKind::Neon => cfg!(all(target_arch = "aarch64", target_feature = "neon")),
    }
}
