//! How close a kernel's output must come to libtorch's: the tests' shared comparisons.

use tch::{Kind, Tensor};

/// Every element of `got` within `units` f32 units in the last place of `want`'s.
pub(crate) fn assert_within_f32_units(got: &Tensor, want: &Tensor, units: f64, what: &str) {
    let over = (got - want).abs() - want.abs() * (units * f32::EPSILON as f64);
    assert!(
        over.max().double_value(&[]) <= 1e-30,
        "{what}: more than {units} units apart"
    );
}

/// Every element of `got` within one bf16 unit of `want`'s (2^(exponent − 7) at |v|), and
/// fewer than `max_share` of them apart at all: a unit apart only where two f32 results
/// round to bf16 on either side of a boundary.
pub(crate) fn assert_within_one_bf16_unit(got: &Tensor, want: &Tensor, max_share: f64, what: &str) {
    let (g, t) = (got.to_kind(Kind::Float), want.to_kind(Kind::Float));
    let unit = t.abs().clamp_min(1e-30).log2().floor().exp2() / 128.0;
    let apart = (&g - &t).abs();
    assert!(
        apart.le_tensor(&(unit * 1.0001)).all().int64_value(&[]) == 1,
        "{what}: more than one unit apart"
    );
    let differ = apart.gt(0.0).to_kind(Kind::Float).mean(Kind::Float);
    assert!(
        differ.double_value(&[]) < max_share,
        "{what}: {differ:?} apart"
    );
}
