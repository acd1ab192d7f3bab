//! Shapes whose lengths do not fit a `usize`: every entry point must refuse them with
//! `KernelError::Len` on every path. Their products used to wrap to small lengths that empty
//! slices passed, after which the SIMD paths read and wrote out of bounds (a segfault from safe
//! code) and the portable path panicked on an index.

use tinykd_kernels::act::Act;
use tinykd_kernels::gemm::{gemm, GemmShape, Trans};
use tinykd_kernels::linear::panels::{pack_panels, panels_len};
use tinykd_kernels::shape::{prod, Conv2d, DwConv3x3, Fsp, Linear, Logits, Pool};
use tinykd_kernels::{conv, dwconv, linear, loss, pool, Isa, IsaKind, KernelError};

/// Every ISA this CPU can run.
fn isas() -> Vec<Isa> {
    IsaKind::ALL.iter().filter_map(|&k| Isa::force(k)).collect()
}

/// Asserts a length error (not a panic, not success).
fn refused<T: std::fmt::Debug>(what: &str, isa: Isa, r: Result<T, KernelError>) {
    match r {
        Err(KernelError::Len { .. }) => {}
        other => panic!("{what} on {}: expected a length error, got {other:?}", isa.kind().name()),
    }
}

const BIG: usize = 1 << 32;

#[test]
fn lengths_saturate_instead_of_wrapping() {
    assert_eq!(prod(&[BIG, BIG, BIG]), usize::MAX);
    assert_eq!(prod(&[usize::MAX, 0]), 0, "a zero factor still gives 0");
    assert_eq!(prod(&[3, 5, 7]), 105);
    assert_eq!(Conv2d::new(BIG, 1, 1, BIG, BIG, 1, 1, 0).x_len(), usize::MAX);
    assert_eq!(DwConv3x3::new(1 << 62, 2, 2, 1, 1).y_len(), usize::MAX);
    assert_eq!(Linear::new(BIG, BIG, BIG).w_len(), usize::MAX);
    assert_eq!(Conv2d::new(1, usize::MAX, 1, 1, 1, 3, 1, 1).out_h(), usize::MAX - 2, "h + 2·pad saturates");
    assert_eq!(panels_len(BIG, BIG, 17), usize::MAX);
}

#[test]
fn every_entry_point_refuses_a_shape_whose_lengths_overflow() {
    let mut none: [f32; 0] = [];
    let w9 = [0.0f32; 9];
    for isa in isas() {
        let s = DwConv3x3::new(1 << 62, 2, 2, 1, 1);
        refused("dwconv fwd", isa, dwconv::dwconv3x3_fwd::<f32>(isa, &s, &[], &w9, None, Act::None, &mut none));
        refused("dwconv bwd input", isa, dwconv::dwconv3x3_bwd_input(isa, &s, &[], &w9, &mut none));

        let l = Linear::new(BIG, BIG, BIG);
        refused("linear fwd", isa, linear::linear_fwd::<f32>(isa, &l, &[], &[], None, Act::None, &mut none));
        let l = Linear::new(1 << 62, 4, 1);
        refused("linear fwd (rows)", isa, linear::linear_fwd::<f32>(isa, &l, &[], &[0.0; 4], None, Act::None, &mut []));

        let c = Conv2d::new(BIG, 1, 1, BIG, BIG, 1, 1, 0);
        let r = conv::conv2d_fwd::<f32>(isa, &c, &[], &[], None, Act::None, &mut none, &mut []);
        refused("conv fwd", isa, r);
        let c = Conv2d::new(1 << 62, 2, 2, 1, 1, 3, 1, 1);
        let r = conv::conv2d_fwd::<f32>(isa, &c, &[], &w9, None, Act::None, &mut none, &mut []);
        refused("conv fwd 3x3", isa, r);
        refused("conv bwd weight", isa, conv::conv2d_bwd_weight(isa, &c, &[], &[], &mut [0.0; 9], &mut []));

        let g = GemmShape { m: 2, n: 1, k: 1, ta: Trans::N, tb: Trans::N, lda: usize::MAX, ldb: 1, ldc: 1 };
        refused("gemm lda", isa, gemm::<f32, f32>(isa, &g, 1.0, &[], &[1.0], 0.0, &mut [0.0; 2]));
        let g = GemmShape { m: 2, n: 1, k: 1, ta: Trans::N, tb: Trans::N, lda: 1, ldb: 1, ldc: usize::MAX };
        refused("gemm ldc", isa, gemm::<f32, f32>(isa, &g, 1.0, &[1.0; 2], &[1.0], 0.0, &mut [0.0; 2]));

        let p = Pool::new(1 << 62, 2, 2, 1);
        refused("max pool", isa, pool::maxpool3x3s2_fwd(isa, &p, &[], &mut none));
        let p = Pool::new(BIG, BIG, 1, 1);
        refused("global average pool", isa, pool::global_avg_fwd(isa, &p, &[], &mut none));

        refused("softmax ce", isa, loss::softmax_ce(isa, &Logits::new(BIG, BIG), &[], &[], None));
        let f = Fsp::new(BIG, BIG, 1, 1);
        refused("fsp", isa, loss::fsp_loss(isa, &f, &[], &[], &[], &[], None, None, &mut []));
    }
    refused("pack panels", Isa::scalar(), pack_panels::<f32>(BIG, BIG, 17, &[], &mut []));
}
