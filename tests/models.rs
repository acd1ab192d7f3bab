//! Model programs: parameter / statistic / MAC counts against PaddleSlim's, names and shapes of
//! the tutorial's hint tensors, naming stability, scales and stems, and config errors.

use std::collections::HashSet;

use tinykd::graph::{Name, OpKind, Program, VarKind};
use tinykd::models::{self, find_var, list_vars, summary, ModelError, VarInfo};
use tinykd::{Arch, ModelConfig, Stem};

const MNV1: ModelConfig = ModelConfig::mobilenet_v1(1000);
const R50: ModelConfig = ModelConfig::resnet50();
/// Built at compile time: the program is a `const fn` of the config.
const MNV1_PROGRAM: Program = match models::program(&MNV1) {
    Ok(p) => p,
    Err(_) => panic!("MobileNetV1 config"),
};

fn prog(cfg: &ModelConfig) -> Program {
    models::program(cfg).unwrap()
}

/// MACs of the ops matching `pred`.
fn macs_where(p: &Program, pred: impl Fn(&tinykd::graph::Op) -> bool) -> usize {
    p.ops().iter().filter(|op| pred(op)).map(|op| p.macs(op)).sum()
}

fn var<'a>(vars: &'a [VarInfo], name: &str) -> &'a VarInfo {
    vars.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no variable {name}"))
}

#[test]
fn mobilenet_v1_counts_match_paddleslim() {
    let s = summary(&MNV1).unwrap();
    assert_eq!(s.params, 3_217_226);
    assert_eq!(s.statistics, 21_888);
    assert_eq!(s.macs, 11_596_288);
    let p = prog(&MNV1);
    assert_eq!(macs_where(&p, |op| op.name == "conv1"), 221_184);
    assert_eq!(macs_where(&p, |op| matches!(op.kind, OpKind::DwConv { .. })), 354_816);
    assert_eq!(macs_where(&p, |op| matches!(op.kind, OpKind::Conv { k: 1, .. })), 11_010_048);
    assert_eq!(macs_where(&p, |op| op.kind == OpKind::Fc), 10_240);
    assert!(s.arena_lower_bound > 0 && s.arena_bytes >= s.arena_lower_bound);
}

#[test]
fn resnet50_counts_match_paddleslim() {
    let s = summary(&R50).unwrap();
    assert_eq!(s.params, 23_528_522);
    assert_eq!(s.statistics, 53_120);
    assert_eq!(s.macs, 83_431_424);
    let p = prog(&R50);
    let stage = |prefix: &'static str| macs_where(&p, move |op| op.name.as_str().starts_with(prefix));
    assert_eq!(stage("conv1"), 2_408_448);
    assert_eq!(stage("res2"), 13_631_488);
    assert_eq!(stage("res3"), 20_971_520);
    assert_eq!(stage("res4"), 29_884_416);
    assert_eq!(stage("res5"), 16_515_072);
    assert_eq!(macs_where(&p, |op| op.kind == OpKind::Fc), 20_480);
    assert!(s.arena_bytes >= s.arena_lower_bound);
}

#[test]
fn list_vars_agrees_with_summary_and_names_are_unique() {
    for cfg in [MNV1, R50, ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar)] {
        let vars = list_vars(&cfg, 2).unwrap();
        let s = summary(&cfg).unwrap();
        let sum = |k: VarKind| vars.iter().filter(|v| v.kind == k).map(|v| v.bytes / 4).sum::<usize>();
        assert_eq!(sum(VarKind::Parameter), s.params);
        assert_eq!(sum(VarKind::Statistic), s.statistics);
        let names: HashSet<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names.len(), vars.len(), "duplicate variable names");
        for v in &vars {
            assert_eq!(v.bytes, 4 * v.dims.iter().product::<usize>(), "{}", v.name);
            if v.kind == VarKind::Activation {
                assert_eq!(v.dims[0], 2, "{} has the batch first", v.name);
            }
        }
    }
}

#[test]
fn mobilenet_v1_names_shapes_and_layouts() {
    let vars = list_vars(&MNV1, 1).unwrap();
    let check = |name: &str, dims: &[usize], layout: &str, kind: VarKind| {
        let v = var(&vars, name);
        assert_eq!((v.dims.as_slice(), v.layout, v.kind), (dims, layout, kind), "{name}");
    };
    check("image", &[1, 32, 32, 3], "NHWC", VarKind::Activation);
    check("conv1_weights", &[3, 3, 3, 32], "HWIO", VarKind::Parameter);
    check("conv1", &[1, 16, 16, 32], "NHWC", VarKind::Activation);
    check("conv1_bn_scale", &[32], "C", VarKind::Parameter);
    check("conv1_bn_offset", &[32], "C", VarKind::Parameter);
    check("conv1_bn_mean", &[32], "C", VarKind::Statistic);
    check("conv1_bn_variance", &[32], "C", VarKind::Statistic);
    check("conv1_bn", &[1, 16, 16, 32], "NHWC", VarKind::Activation);
    check("conv1_bn.relu", &[1, 16, 16, 32], "NHWC", VarKind::Activation);
    check("conv2_1_dw_weights", &[3, 3, 32], "HWC", VarKind::Parameter);
    check("conv2_1_sep_weights", &[1, 1, 32, 64], "HWIO", VarKind::Parameter);
    check("conv2_2_dw", &[1, 8, 8, 64], "NHWC", VarKind::Activation);
    check("conv5_6_sep_bn_variance", &[1024], "C", VarKind::Statistic);
    check("conv6_sep_bn.relu", &[1, 1, 1, 1024], "NHWC", VarKind::Activation);
    check("pool", &[1, 1024], "NC", VarKind::Activation);
    check("fc7_weights", &[1024, 10], "IO", VarKind::Parameter);
    check("fc7_offset", &[10], "C", VarKind::Parameter);
    check("fc7", &[1, 10], "NC", VarKind::Activation);
    let dw: Vec<&str> = vars.iter().filter(|v| v.name.ends_with("_dw")).map(|v| v.name.as_str()).collect();
    assert_eq!(dw.len(), 13);
    assert_eq!(dw[11], "conv5_6_dw");
    assert_eq!(dw[12], "conv6_dw");
}

#[test]
fn resnet50_names_shapes() {
    let vars = list_vars(&R50, 1).unwrap();
    let check = |name: &str, dims: &[usize]| assert_eq!(var(&vars, name).dims, dims, "{name}");
    check("conv1_weights", &[7, 7, 3, 64]);
    check("bn_conv1_scale", &[64]);
    check("bn_conv1.relu", &[1, 16, 16, 64]);
    check("pool1", &[1, 8, 8, 64]);
    check("res2a_branch2a_weights", &[1, 1, 64, 64]);
    check("res2a_branch1_weights", &[1, 1, 64, 256]);
    check("bn2a_branch1_variance", &[256]);
    check("res2a.add.relu", &[1, 8, 8, 256]);
    check("res3a_branch2b", &[1, 4, 4, 128]);
    check("res3d.add.relu", &[1, 4, 4, 512]);
    check("res4f.add.relu", &[1, 2, 2, 1024]);
    check("res5c_branch2c_weights", &[1, 1, 512, 2048]);
    check("bn5c_branch2c_offset", &[2048]);
    check("res5c.add.relu", &[1, 1, 1, 2048]);
    check("fc_weights", &[2048, 10]);
    check("fc_offset", &[10]);
    check("fc", &[1, 10]);
    assert!(!vars.iter().any(|v| v.name == "res2b_branch1_weights"), "identity shortcut has no conv");
    assert_eq!(vars.iter().filter(|v| v.name.ends_with("_branch1_weights")).count(), 4);
}

#[test]
fn tutorial_hint_tensors_resolve_to_512_channels_at_1x1() {
    for name in ["depthwise_conv2d_11", "depthwise_conv2d_11.tmp_0", "conv5_6_dw"] {
        let v = find_var(&MNV1, 64, name).unwrap().unwrap_or_else(|| panic!("{name}"));
        assert_eq!((v.name.as_str(), v.dims.as_slice(), v.layout), ("conv5_6_dw", &[64, 1, 1, 512][..], "NHWC"));
        assert_eq!(v.bytes, 64 * 512 * 4);
    }
    for name in ["bn5c_branch2b", "bn5c_branch2b.output.1.tmp_3"] {
        let v = find_var(&R50, 64, name).unwrap().unwrap_or_else(|| panic!("{name}"));
        assert_eq!((v.name.as_str(), v.dims.as_slice()), ("bn5c_branch2b", &[64, 1, 1, 512][..]));
        assert_eq!(v.kind, VarKind::Activation);
    }
    // The teacher hint is the BN output before its ReLU.
    let p = prog(&R50);
    let id = p.find("bn5c_branch2b").unwrap();
    let producer = p.ops().iter().find(|op| op.output == id).unwrap();
    assert_eq!(producer.kind, OpKind::BatchNorm);
    let relu = p.ops().iter().find(|op| op.input() == id).unwrap();
    assert_eq!((relu.kind, p.tensor(relu.output).name.as_str()), (OpKind::Relu, "bn5c_branch2b.relu"));
    // The student hint is the raw depthwise output, consumed by its BN.
    let p = prog(&MNV1);
    let id = p.find("depthwise_conv2d_11").unwrap();
    assert!(matches!(p.ops().iter().find(|op| op.output == id).unwrap().kind, OpKind::DwConv { stride: 2 }));
    assert_eq!(p.find("depthwise_conv2d_13"), None);
    assert_eq!(p.find("no_such_tensor"), None);
    assert_eq!(find_var(&MNV1, 1, "bn5c_branch2b").unwrap(), None);
}

#[test]
fn names_are_stable_across_builds() {
    for cfg in [MNV1, R50] {
        let (a, b) = (prog(&cfg), prog(&cfg));
        let names = |p: &Program| p.tensors().iter().map(|t| t.name.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b));
        assert_eq!(list_vars(&cfg, 3).unwrap(), list_vars(&cfg, 3).unwrap());
        assert_eq!(a.ops(), b.ops());
    }
    assert_eq!(MNV1_PROGRAM.ops(), prog(&MNV1).ops(), "const-built program equals the runtime one");
    assert_eq!(MNV1_PROGRAM.ops().len(), 83);
    assert_eq!(prog(&R50).ops().len(), 158);
}

#[test]
fn scales_build_with_scaled_channels() {
    for (permille, c1, last) in [(250, 8, 256), (500, 16, 512), (750, 24, 768), (1000, 32, 1024)] {
        let cfg = ModelConfig::mobilenet_v1(permille);
        let vars = list_vars(&cfg, 1).unwrap();
        assert_eq!(var(&vars, "conv1_weights").dims, [3, 3, 3, c1]);
        assert_eq!(var(&vars, "fc7_weights").dims, [last, 10]);
        assert_eq!(var(&vars, "conv5_6_dw").dims, [1, 1, 1, last / 2]);
        assert!(summary(&cfg).unwrap().params > 0);
    }
    let s25 = summary(&ModelConfig::mobilenet_v1(250)).unwrap();
    assert!(s25.macs < summary(&MNV1).unwrap().macs / 8);
}

#[test]
fn cifar_stems_build() {
    let cfg = MNV1.with_stem(Stem::Cifar);
    let vars = list_vars(&cfg, 1).unwrap();
    assert_eq!(var(&vars, "conv1").dims, [1, 32, 32, 32]);
    assert_eq!(var(&vars, "conv6_sep_bn.relu").dims, [1, 2, 2, 1024]);
    assert_eq!(summary(&cfg).unwrap().params, 3_217_226);

    let cfg = R50.with_stem(Stem::Cifar);
    let vars = list_vars(&cfg, 1).unwrap();
    assert_eq!(var(&vars, "conv1_weights").dims, [3, 3, 3, 64]);
    assert!(!vars.iter().any(|v| v.name == "pool1"), "no max pool in the CIFAR stem");
    assert_eq!(var(&vars, "res2c.add.relu").dims, [1, 32, 32, 256]);
    assert_eq!(var(&vars, "res5c.add.relu").dims, [1, 4, 4, 2048]);
    let s = summary(&cfg).unwrap();
    assert_eq!(s.params, 23_528_522 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64);
    assert!(s.macs > 1_200_000_000 && s.macs < 1_400_000_000, "~1.3 GMAC, got {}", s.macs);
}

#[test]
fn other_inputs_and_classes() {
    let cfg = MNV1.with_input(64, 96).with_classes(100);
    let vars = list_vars(&cfg, 1).unwrap();
    assert_eq!(var(&vars, "conv6_sep").dims, [1, 2, 3, 1024]);
    assert_eq!(var(&vars, "fc7").dims, [1, 100]);
    let cfg = R50.with_stem(Stem::Cifar).with_input(8, 16);
    assert_eq!(var(&list_vars(&cfg, 1).unwrap(), "res5c.add.relu").dims, [1, 1, 2, 2048]);
}

#[test]
fn invalid_configs_give_clear_errors() {
    let e = models::program(&MNV1.with_input(30, 32)).unwrap_err();
    assert_eq!(e, ModelError::InputSize { h: 30, w: 32, multiple: 32 });
    assert!(e.to_string().contains("multiples of 32"), "{e}");
    assert_eq!(
        summary(&MNV1.with_stem(Stem::Cifar).with_input(24, 24)).unwrap_err(),
        ModelError::InputSize { h: 24, w: 24, multiple: 16 }
    );
    assert_eq!(list_vars(&R50.with_input(0, 32), 1).unwrap_err(), ModelError::InputSize { h: 0, w: 32, multiple: 32 });
    assert!(models::program(&R50.with_stem(Stem::Cifar).with_input(8, 8)).is_ok());
    let mut r = R50;
    r.scale_permille = 500;
    let e = summary(&r).unwrap_err();
    assert_eq!(e, ModelError::Scale { arch: Arch::ResNet50, scale_permille: 500 });
    assert!(e.to_string().contains("1000"));
    assert!(matches!(models::program(&ModelConfig::mobilenet_v1(0)), Err(ModelError::Scale { .. })));
    assert_eq!(models::program(&MNV1.with_classes(0)).unwrap_err(), ModelError::Classes);
    assert_eq!(list_vars(&MNV1, 0).unwrap_err(), ModelError::Batch);
}

#[test]
fn name_type_formats_and_compares_without_allocation() {
    const N: Name = Name::new("res").push_num(5).push_byte(b'c').push_str("_branch2b");
    assert_eq!(N.as_str(), "res5c_branch2b");
    assert!(N == "res5c_branch2b" && N != "res5c_branch2");
    assert_eq!(format!("{N}"), "res5c_branch2b");
    assert_eq!(format!("{N:?}"), "\"res5c_branch2b\"");
    assert_eq!(Name::new("x").push_num(1024).as_str(), "x1024");
}
