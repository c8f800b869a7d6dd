//! Prices as exact integers.
//!
//! The CRD schema already restricts prices to `^(0|[1-9][0-9]{0,5})(\.[0-9]{1,6})?$`; this
//! parser enforces the same grammar again so that a price that reached the operator by another
//! path (an older CRD, `skyloom plan -f`) can never become NaN, infinite or negative.

use thiserror::Error;

/// An amount in millionths of a US dollar (per unit-hour when used as a price).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MicroUsd(pub u64);

impl MicroUsd {
    /// The amount in dollars, for display and for floating-point solvers.
    pub fn as_usd(self) -> f64 {
        // Exact for every value a price can take (< 2^53).
        self.0 as f64 / 1_000_000.0
    }
}

/// Why a price string was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PriceError {
    /// Not a plain non-negative decimal with at most 6 integer and 6 fractional digits.
    #[error(
        "price {0:?} is not a plain non-negative decimal such as \"2.5\" (at most 999999.999999, no exponent)"
    )]
    Malformed(String),
}

/// Parses a price such as `"4.096"` into micro-USD.
pub fn parse_price(text: &str) -> Result<MicroUsd, PriceError> {
    let malformed = || PriceError::Malformed(text.to_owned());
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || whole.len() > 6 || (whole.len() > 1 && whole.starts_with('0')) {
        return Err(malformed());
    }
    let mut micros: u64 = 0;
    for b in whole.bytes() {
        micros = micros * 10 + u64::from(b - b'0');
    }
    micros *= 1_000_000;
    if let Some(fraction) = fraction {
        if !all_digits(fraction) || fraction.len() > 6 {
            return Err(malformed());
        }
        let mut scale = 100_000;
        for b in fraction.bytes() {
            micros += u64::from(b - b'0') * scale;
            scale /= 10;
        }
    }
    Ok(MicroUsd(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_decimals() {
        assert_eq!(parse_price("0"), Ok(MicroUsd(0)));
        assert_eq!(parse_price("4.1"), Ok(MicroUsd(4_100_000)));
        assert_eq!(parse_price("0.000001"), Ok(MicroUsd(1)));
        assert_eq!(parse_price("999999.999999"), Ok(MicroUsd(999_999_999_999)));
        assert_eq!(parse_price("0.0448"), Ok(MicroUsd(44_800)));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "-1",
            "NaN",
            "inf",
            "1e308",
            "1.",
            ".5",
            "01",
            "1000000",
            "1.0000001",
            "1,5",
            " 1",
            "+1",
        ] {
            assert!(parse_price(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
