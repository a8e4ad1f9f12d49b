//! Check values in results: whole numbers stay whole in JSON (`0`, not
//! `0.0`), so scripts that read the older integer values keep working.

use serde::{Deserialize, Deserializer, Serializer};

use crate::scenario::thresholds::Unit;

pub(crate) fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match *value {
        None => s.serialize_none(),
        Some(v) if v.fract() == 0.0 && v.abs() < EXACT => s.serialize_i64(v as i64),
        Some(v) => s.serialize_f64(v),
    }
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Option::<f64>::deserialize(d)
}

/// A value in `unit`, for people: `61.2ms`, `3.5s`, `12`, `0.987`.
pub(crate) fn show(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Us if value >= 1e6 => format!("{}s", trim(value / 1e6)),
        Unit::Us if value >= 1e3 => format!("{}ms", trim(value / 1e3)),
        Unit::Us => format!("{}µs", trim(value)),
        Unit::S => format!("{}s", trim(value)),
        Unit::Count => format!("{value}"),
        Unit::Ratio => format!("{}", (value * 1000.0).round() / 1000.0),
    }
}

/// At most one decimal, none when whole.
fn trim(x: f64) -> String {
    let r = (x * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}
