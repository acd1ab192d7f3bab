//! The loss-spec parser (`--loss`) on arbitrary text, then name and shape resolution against
//! the real tutorial pair (ResNet50 teacher merged as `teacher_` into MobileNetV1, 32x32):
//! `Ok` or `Err`, never a panic; every parsed item's label parses back to the same loss.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tinykd::dist::{merge, parse_loss, parse_losses, Losses, Merged};
use tinykd::models;
use tinykd::params::ParamStore;
use tinykd::ModelConfig;

fn merged() -> &'static Merged {
    static M: OnceLock<Merged> = OnceLock::new();
    M.get_or_init(|| {
        let tcfg = ModelConfig::resnet50();
        let teacher = models::program(&tcfg).expect("teacher");
        let tparams = ParamStore::init(&tcfg, 1).expect("teacher params");
        let student = models::program(&ModelConfig::mobilenet_v1(1000)).expect("student");
        merge((&teacher, &tparams), &student, &[("image", "image")], "teacher_").expect("merge")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = std::str::from_utf8(data) else { return };
    let losses = match parse_losses(spec) {
        Ok(l) => l,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for l in &losses {
        let text = format!("{}*{}", l.kind.label(), l.weight);
        let again = parse_loss(&text).unwrap_or_else(|e| panic!("label `{text}` does not parse back: {e}"));
        assert_eq!(again.kind.label(), l.kind.label());
        assert_eq!(again.weight.to_bits(), l.weight.to_bits());
    }
    match Losses::new(merged(), &losses) {
        Ok(checked) => {
            let _ = (checked.needs_teacher(), checked.needs_labels(), checked.labels());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
