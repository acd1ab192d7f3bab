//! Memory planner: a property test on random layer chains and DAGs (no two buffers that are
//! live at the same step share memory, every buffer inside the arena, peak ≥ lower bound, the
//! lower bound recomputed independently), and the inference schedules and plans of both models.

#[path = "../kernels/tests/common/mod.rs"]
mod common;

use common::Rng;
use tinykd::graph::Name;
use tinykd::models::{self, summary, ModelError};
use tinykd::plan::{self, Buf, BufferReq, Plan, Schedule, StepKind, ALIGN, MAX_BUFFERS};
use tinykd::{ModelConfig, Stem};

/// Checks every property of a plan of `reqs`; returns the brute-force lower bound.
fn check_plan(what: &str, reqs: &[BufferReq], plan: &Plan) -> usize {
    let off = plan.offsets();
    assert_eq!(off.len(), reqs.len(), "{what}: one offset per buffer");
    for (i, (r, &o)) in reqs.iter().zip(off).enumerate() {
        assert_eq!(o % ALIGN, 0, "{what}: buffer {i} offset {o} not aligned");
        assert!(
            o + r.bytes <= plan.peak,
            "{what}: buffer {i} [{o}, {}) outside the arena of {}",
            o + r.bytes,
            plan.peak
        );
    }
    for i in 0..reqs.len() {
        for j in i + 1..reqs.len() {
            let (a, b) = (&reqs[i], &reqs[j]);
            let live_together = a.first <= b.last && b.first <= a.last;
            let disjoint = off[i] + a.bytes <= off[j] || off[j] + b.bytes <= off[i];
            assert!(
                !live_together || disjoint,
                "{what}: buffers {i} {a:?} at {} and {j} {b:?} at {} overlap while both live",
                off[i],
                off[j]
            );
        }
    }
    let last = reqs.iter().map(|r| r.last).max().unwrap_or(0);
    let lb = (0..=last)
        .map(|s| reqs.iter().filter(|r| r.first <= s && s <= r.last).map(|r| r.bytes).sum::<usize>())
        .max()
        .unwrap_or(0);
    assert_eq!(plan.lower_bound, lb, "{what}: lower bound");
    assert!(plan.peak >= lb, "{what}: peak {} below the lower bound {lb}", plan.peak);
    lb
}

/// A random DAG of `n` layers in topological order: each reads one or two earlier outputs
/// (mostly recent ones, sometimes far back like a skip connection); some have one-step scratch.
fn random_dag(rng: &mut Rng, n: usize, chain: bool) -> Vec<BufferReq> {
    let mut reqs: Vec<BufferReq> = Vec::new();
    let mut out_of = Vec::new();
    for step in 0..n as u16 {
        let inputs = if step == 0 {
            vec![]
        } else if chain {
            vec![step as usize - 1]
        } else {
            let mut v = vec![step as usize - 1 - rng.below((step as usize).min(3))];
            if rng.below(3) == 0 {
                v.push(rng.below(step as usize));
            }
            v
        };
        for i in inputs {
            let b: &mut BufferReq = &mut reqs[out_of[i]];
            b.last = b.last.max(step);
        }
        let max = if rng.below(4) == 0 { 100_000 } else { 5_000 };
        let bytes = 1 + rng.below(max);
        out_of.push(reqs.len());
        reqs.push(BufferReq { bytes, first: step, last: step });
        if rng.below(3) == 0 {
            reqs.push(BufferReq { bytes: 4 * (1 + rng.below(2_000)), first: step, last: step });
        }
    }
    reqs
}

#[test]
fn random_chains_and_dags_are_planned_without_overlap() {
    let mut rng = Rng::new(7);
    for case in 0..400 {
        let chain = case % 4 == 0;
        let n = 1 + rng.below(60);
        let reqs = random_dag(&mut rng, n, chain);
        let plan = Plan::new(&reqs).unwrap();
        check_plan(&format!("case {case} (chain {chain}, {n} layers)"), &reqs, &plan);
    }
}

#[test]
fn random_lifetimes_are_planned_without_overlap() {
    let mut rng = Rng::new(11);
    for case in 0..300 {
        let n = rng.below(MAX_BUFFERS + 1);
        let reqs: Vec<BufferReq> = (0..n)
            .map(|_| {
                let first = rng.below(40) as u16;
                let last = first + rng.below(10) as u16;
                BufferReq { bytes: 1 + rng.below(10_000), first, last }
            })
            .collect();
        let plan = Plan::new(&reqs).unwrap();
        check_plan(&format!("case {case}"), &reqs, &plan);
    }
}

#[test]
fn planner_edge_cases() {
    let empty = Plan::new(&[]).unwrap();
    assert_eq!((empty.peak, empty.lower_bound), (0, 0));
    // Disjoint lifetimes share memory; intersecting ones do not.
    let reqs = [
        BufferReq { bytes: 100, first: 0, last: 1 },
        BufferReq { bytes: 100, first: 2, last: 3 },
        BufferReq { bytes: 50, first: 1, last: 2 },
    ];
    let plan = Plan::new(&reqs).unwrap();
    // Offsets and sizes are rounded up to ALIGN (64 bytes: cache lines on the host).
    assert_eq!(plan::ALIGN, 64);
    assert_eq!(plan.offsets(), [0, 0, 128]);
    assert_eq!((plan.peak, plan.lower_bound), (192, 150));
    let too_many = vec![BufferReq { bytes: 1, first: 0, last: 0 }; MAX_BUFFERS + 1];
    assert!(matches!(Plan::new(&too_many), Err(ModelError::Capacity { .. })));
}

/// The arena size is a `const fn` of the config: a static arena can be declared with it.
const MNV1_025: ModelConfig = ModelConfig::mobilenet_v1(250);
static ARENA_MNV1: [u8; plan::arena_bytes(&MNV1_025, 1)] = [0; plan::arena_bytes(&MNV1_025, 1)];
const R50_ARENA: usize = plan::arena_bytes(&ModelConfig::resnet50(), 1);

#[test]
fn arena_size_is_a_const_fn_for_both_models() {
    let (_, p) = plan::plan_for(&MNV1_025, 1).unwrap();
    assert_eq!(ARENA_MNV1.len(), p.peak + ALIGN);
    let (_, p) = plan::plan_for(&ModelConfig::resnet50(), 1).unwrap();
    assert_eq!(R50_ARENA, p.peak + ALIGN);
    assert_eq!(summary(&ModelConfig::resnet50()).unwrap().arena_bytes, p.peak);
}

#[test]
fn model_schedules_fold_bn_and_fuse_relu() {
    let prog = models::program(&ModelConfig::mobilenet_v1(1000)).unwrap();
    let sc = Schedule::new(&prog, 1).unwrap();
    let steps = sc.steps();
    // conv1, 13 x (dw, sep), pool, fc.
    assert_eq!(steps.len(), 29);
    assert_eq!(
        (steps[0].kind, steps[0].x, steps[0].layer),
        (StepKind::Conv { relu: true }, Buf::Input, Name::new("conv1"))
    );
    assert_eq!(steps[23].layer, "conv5_6_dw");
    assert!(matches!(steps[0].scratch, Buf::Arena(_)), "3x3 conv needs im2col scratch");
    assert_eq!(steps[2].scratch, Buf::None, "pointwise conv needs none");
    assert_eq!((steps[28].kind, steps[28].y), (StepKind::Fc, Buf::Output));

    let prog = models::program(&ModelConfig::resnet50()).unwrap();
    let sc = Schedule::new(&prog, 2).unwrap();
    let steps = sc.steps();
    // conv1, pool1, 16 blocks x (2a, 2b, 2c, add) + 4 shortcut convs, pool, fc.
    assert_eq!(steps.len(), 2 + 16 * 4 + 4 + 2);
    let adds: Vec<_> = steps.iter().filter(|s| s.kind == StepKind::AddRelu).collect();
    assert_eq!(adds.len(), 16);
    for s in adds {
        assert_eq!(s.x, s.y, "{}: residual add runs in place", s.layer);
        assert_ne!(s.x2, s.y);
    }
    let c = steps.iter().find(|s| s.layer == "res2a_branch2c").unwrap();
    assert_eq!(c.kind, StepKind::Conv { relu: false }, "no ReLU before the add");
    assert_eq!(Schedule::new(&prog, 0).unwrap_err(), ModelError::Batch);
}

#[test]
fn model_plans_are_valid() {
    for (cfg, batch) in [
        (ModelConfig::mobilenet_v1(1000), 1),
        (ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar), 3),
        (ModelConfig::resnet50(), 1),
        (ModelConfig::resnet50().with_stem(Stem::Cifar), 2),
    ] {
        let (sc, p) = plan::plan_for(&cfg, batch).unwrap();
        let lb = check_plan(&format!("{cfg:?} batch {batch}"), sc.buffers(), &p);
        assert!(p.peak <= lb + lb / 4, "{cfg:?}: peak {} far above the lower bound {lb}", p.peak);
    }
    // MobileNetV1 1.0 at 32x32: the largest step is conv2_1_sep (32 KiB in, 64 KiB out), and
    // the greedy plan meets the bound.
    let (_, p) = plan::plan_for(&ModelConfig::mobilenet_v1(1000), 1).unwrap();
    assert_eq!((p.lower_bound, p.peak), (98_304, 98_304));
}
