//! The presets of `scripts/presets/`, compiled into the binary so an
//! installed `elfin` needs no source tree.

/// `(name, text)`; names starting with `_` are pieces other presets
/// `source`, not presets of their own.
pub const BUILTIN: &[(&str, &str)] = &[
    ("_ofa_el_common", include_str!("../../../scripts/presets/_ofa_el_common.sh")),
    ("caption_stage1_el", include_str!("../../../scripts/presets/caption_stage1_el.sh")),
    ("caption_stage1_el_db", include_str!("../../../scripts/presets/caption_stage1_el_db.sh")),
    ("refcoco_el", include_str!("../../../scripts/presets/refcoco_el.sh")),
    ("refcocoplus_el", include_str!("../../../scripts/presets/refcocoplus_el.sh")),
    ("refcocog_el", include_str!("../../../scripts/presets/refcocog_el.sh")),
    ("_demo_cpu", include_str!("../../../scripts/presets/_demo_cpu.sh")),
    ("demo_caption_el", include_str!("../../../scripts/presets/demo_caption_el.sh")),
    ("demo_refcoco_el", include_str!("../../../scripts/presets/demo_refcoco_el.sh")),
    ("_ofa_eval_common", include_str!("../../../scripts/presets/_ofa_eval_common.sh")),
    ("caption_test", include_str!("../../../scripts/presets/caption_test.sh")),
    ("_refcoco_eval", include_str!("../../../scripts/presets/_refcoco_eval.sh")),
    ("refcoco_val", include_str!("../../../scripts/presets/refcoco_val.sh")),
    ("refcoco_testA", include_str!("../../../scripts/presets/refcoco_testA.sh")),
    ("refcoco_testB", include_str!("../../../scripts/presets/refcoco_testB.sh")),
    ("refcocoplus_val", include_str!("../../../scripts/presets/refcocoplus_val.sh")),
    ("refcocoplus_testA", include_str!("../../../scripts/presets/refcocoplus_testA.sh")),
    ("refcocoplus_testB", include_str!("../../../scripts/presets/refcocoplus_testB.sh")),
    ("refcocog_val", include_str!("../../../scripts/presets/refcocog_val.sh")),
    ("refcocog_test", include_str!("../../../scripts/presets/refcocog_test.sh")),
    ("demo_caption_eval", include_str!("../../../scripts/presets/demo_caption_eval.sh")),
    ("demo_refcoco_eval", include_str!("../../../scripts/presets/demo_refcoco_eval.sh")),
];

pub fn get(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}
