//! Acc@0.5 with the reference's conventions: bins → pixels with the fp16
//! roundings, IoU without +1, strict positive intersection, ≥ 0.5.

use elfin_trainer::eval::{overlap, BoxDecoder};

#[test]
fn decodes_the_spec_example_with_fp16_ratios() {
    // Spec appendix: w = 640, h = 480, bins 360/253/661/964 decode with fp16
    // ratios to (230.687, 121.591, 423.567, 463.296).
    let decoder = BoxDecoder { fp16: true, ..BoxDecoder::default() };
    let (wr, hr) = (BoxDecoder::resize_ratio(512, 640), BoxDecoder::resize_ratio(512, 480));
    let b = decoder.decode([360, 253, 661, 964], wr, hr);
    for (got, want) in b.iter().zip([230.687f32, 121.591, 423.567, 463.296]) {
        assert!((got - want).abs() < 1e-3, "{b:?}");
    }
    // fp16 rounds 0.8 down to 0.7998046875, so the full-image box overshoots
    // the 640-pixel width: 512 / 0.7998046875 ≈ 640.1563.
    let full = decoder.decode([0, 0, 999, 999], wr, hr);
    assert!((full[2] - 640.15625).abs() < 1e-4, "{full:?}");
    let full32 = BoxDecoder::default().decode([0, 0, 999, 999], wr, hr);
    assert!((full32[2] - 640.0).abs() < 1e-4 && (full32[3] - 480.0).abs() < 1e-4, "{full32:?}");
}

#[test]
fn bins_come_from_token_ids() {
    let decoder = BoxDecoder::default();
    // <bin_0> = 58457 and <bin_999> = 59456 in the 59457-symbol dictionary.
    assert_eq!(decoder.bin_of_token(58457, 59457), 0);
    assert_eq!(decoder.bin_of_token(59456, 59457), 999);
}

#[test]
fn reference_boxes_are_fp16_rounded_only_under_fp16() {
    let region = [230.79f32, 121.75, 423.66, 463.06];
    assert_eq!(BoxDecoder::default().reference_box(region), region);
    // Spacing 0.125 in [128, 256) and 0.25 in [256, 512).
    let rounded = BoxDecoder { fp16: true, ..BoxDecoder::default() }.reference_box(region);
    assert_eq!(rounded, [230.75, 121.75, 423.75, 463.0]);
}

#[test]
fn identical_and_half_overlapping_boxes() {
    let o = overlap([10.0, 10.0, 110.0, 60.0], [10.0, 10.0, 110.0, 60.0]);
    assert!(o.is_hit() && (o.iou - 1.0).abs() < 1e-6);
    // Shifted by half the width: inter 50·50, union 2·5000 − 2500 → 1/3.
    let o = overlap([60.0, 10.0, 160.0, 60.0], [10.0, 10.0, 110.0, 60.0]);
    assert!((o.iou - 1.0 / 3.0).abs() < 1e-6 && !o.is_hit());
}

#[test]
fn contained_box_at_exactly_half_the_area() {
    // Prediction = top half of the target: IoU = 50 / (100 + 1e-6). In float32
    // 100 + 1e-6 == 100, so IoU is exactly 0.5 and counts (≥).
    let o = overlap([0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0]);
    assert_eq!(o.iou, 0.5);
    assert!(o.is_hit());
    // For a unit box the 1e-6 survives (1 + 1e-6 > 1 in float32): 0.5 / 1.000001 < 0.5.
    let o = overlap([0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 1.0, 1.0]);
    assert!(o.iou < 0.5 && !o.is_hit(), "{o:?}");
}

#[test]
fn touching_boxes_have_zero_width_and_miss() {
    // No +1 pixel convention: sharing the edge x = 10 is no overlap.
    let o = overlap([0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]);
    assert_eq!((o.inter_w, o.iou), (0.0, 0.0));
    assert!(!o.is_hit());
}

#[test]
fn degenerate_and_inverted_boxes_never_hit() {
    // Zero-width boxes, even identical ones: 0 / (0 + 1e-6) = 0.
    let line = [5.0, 0.0, 5.0, 10.0];
    let o = overlap(line, line);
    assert_eq!(o.iou, 0.0);
    assert!(!o.is_hit());
    // Inverted identical boxes: negative sides multiply to a positive
    // "intersection" and IoU ≈ 1, but the strict width/height test rejects them.
    let inverted = [10.0, 10.0, 0.0, 0.0];
    let o = overlap(inverted, inverted);
    assert!(o.iou > 0.99 && o.inter_w < 0.0 && !o.is_hit(), "{o:?}");
    // Disjoint in both axes: sides −2 and −2 give "intersection" 4 and
    // IoU 4 / (1 + 1 − 4 + 1e-6) ≈ −2.
    let o = overlap([0.0, 0.0, 1.0, 1.0], [3.0, 3.0, 4.0, 4.0]);
    assert!((o.iou + 2.0).abs() < 1e-5 && !o.is_hit(), "{o:?}");
}
