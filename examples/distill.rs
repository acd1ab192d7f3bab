//! PaddleSlim's single-distiller tutorial in Rust: distil a ResNet50 teacher into a
//! MobileNetV1 student with an L2 hint between `teacher_bn5c_branch2b` and
//! `depthwise_conv2d_11` plus cross-entropy, on the built-in synthetic 10-class dataset.
//!
//! ```text
//! cargo run --release --example distill [steps] [batch] [threads]
//! ```
//!
//! As in the tutorial the teacher is untrained (random weights, initial running statistics
//! mean 0 / variance 1): in eval mode its batch norms do not normalise, so its hint tensor is
//! large and the L2 term dominates. This only shows the mechanics; a real run loads a trained
//! teacher.

use std::error::Error;
use std::time::Instant;

use tinykd::dist::{merge, Loss};
use tinykd::host::data::synth;
use tinykd::models;
use tinykd::params::ParamStore;
use tinykd::train::{Schedule, TrainConfig, Trainer};
use tinykd::ModelConfig;

fn main() -> Result<(), Box<dyn Error>> {
    let arg = |i: usize, default: usize| std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (steps, batch, threads) = (arg(1, 5), arg(2, 32), arg(3, 2));

    // 1. The student (MobileNetV1) and the teacher (ResNet50), 32x32 inputs, 10 classes.
    let (scfg, tcfg) = (ModelConfig::mobilenet_v1(1000), ModelConfig::resnet50());
    let (student, teacher) = (models::program(&scfg)?, models::program(&tcfg)?);
    let (sparams, tparams) = (ParamStore::init(&scfg, 1)?, ParamStore::init(&tcfg, 2)?);

    // 2. A few variables of each, with shapes (NHWC).
    for (who, cfg, names) in [
        ("student", &scfg, ["image", "depthwise_conv2d_11", "fc7"]),
        ("teacher", &tcfg, ["image", "bn5c_branch2b.output.1.tmp_3", "fc"]),
    ] {
        for name in names {
            if let Some(v) = models::find_var(cfg, batch, name)? {
                println!("{who:8} {name:32} -> {:24} {:?} {}", v.name, v.dims, v.layout);
            }
        }
    }

    // 3. Merge: the teacher reads the student's `image`; its tensors get the prefix `teacher_`.
    let merged = merge((&teacher, &tparams), &student, &[("image", "image")], "teacher_")?;

    // 4. The losses: the tutorial's L2 hint plus cross-entropy on the student's logits.
    let losses = [Loss::l2("teacher_bn5c_branch2b", "depthwise_conv2d_11"), Loss::ce()];

    // 5. Momentum(lr 0.01, 0.9) over the student's parameters; a few steps on synthetic data.
    let cfg = TrainConfig {
        batch_size: batch,
        threads,
        seed: 0,
        momentum: 0.9,
        weight_decay: 0.0,
        schedule: Schedule::constant(0.01)?,
    };
    let mut trainer = Trainer::new(merged, sparams, &losses, cfg)?;
    // The built-in dataset; a `Dataset` is a trainer data source (images normalised as in the
    // tutorial, `(x − 127.5)/127.5`).
    let (mut data, _test) = synth::generate(steps * batch, 1, 7);
    let start = Instant::now();
    trainer.train_epoch(&mut data, 0, &mut |r| {
        let parts: Vec<String> = r.losses.parts.iter().map(|(label, _, v)| format!("{label} = {v:.4}")).collect();
        println!("step {:3}  total {:.4}  ({})", r.step, r.losses.total, parts.join(", "));
    })?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{steps} steps of {batch} images in {secs:.2} s ({:.1} img/s, {threads} threads)",
        (steps * batch) as f64 / secs
    );
    Ok(())
}
