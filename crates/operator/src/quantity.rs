//! Kubernetes quantities ("500m", "16Gi", "1e3") in the solver's integer base units:
//! millicores for `cpu`, bytes for byte-valued resources, whole units for the rest. Checked
//! arithmetic throughout: a quantity that does not fit is an error, never a wrap-around.

use skyloom_solver::units;

/// Why a quantity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not the Kubernetes quantity syntax.
    #[error("'{0}' is not a Kubernetes quantity")]
    Syntax(String),
    /// Negative.
    #[error("'{0}' is negative")]
    Negative(String),
    /// Too large for the solver's integer units.
    #[error("'{0}' is too large")]
    TooLarge(String),
    /// A fraction of a resource counted in whole units (GPUs and other extended resources,
    /// Pod slots): Kubernetes refuses such requests, and a fractional capacity means nothing.
    #[error("'{0}' is not a whole number, and {1} is counted in whole units")]
    Fractional(String, String),
}

/// Converts `text` for `resource` into base units, rounding a fraction of a millicore or a
/// byte up as Kubernetes does; a fraction of a whole-unit resource (`nvidia.com/gpu: "2.5"`)
/// is an error.
pub fn to_base_units(resource: &str, text: &str) -> Result<u64, QuantityError> {
    let s = text.trim();
    let syntax = || QuantityError::Syntax(text.to_owned());
    let too_large = || QuantityError::TooLarge(text.to_owned());
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(syntax());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    if digits.len() > 30 {
        return Err(too_large());
    }
    let mantissa: i128 = digits.parse().map_err(|_| syntax())?;
    // value = mantissa * 10^exp10 * 2^exp2
    let mut exp10: i32 = -i32::try_from(frac_part.len()).map_err(|_| syntax())?;
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        other => {
            let exp = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))
                .ok_or_else(syntax)?;
            let e: i32 = exp.parse().map_err(|_| syntax())?;
            if e.abs() > 40 {
                return Err(too_large());
            }
            exp10 += e;
        }
    }
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative(text.to_owned()));
    }
    if resource == units::CPU {
        exp10 += 3; // millicores
    }
    let mut value = mantissa.checked_mul(1i128 << exp2).ok_or_else(too_large)?;
    if exp10 >= 0 {
        let factor = 10i128
            .checked_pow(u32::try_from(exp10).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
        value = value.checked_mul(factor).ok_or_else(too_large)?;
    } else {
        let divisor = 10i128
            .checked_pow(u32::try_from(-exp10).map_err(|_| too_large())?)
            .unwrap_or(i128::MAX);
        if value % divisor != 0 && resource != units::CPU && !units::is_byte_resource(resource) {
            return Err(QuantityError::Fractional(
                text.to_owned(),
                resource.to_owned(),
            ));
        }
        value = (value + divisor - 1) / divisor; // round up, as Kubernetes does for requests
    }
    u64::try_from(value).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(to_base_units("cpu", "500m").unwrap(), 500);
        assert_eq!(to_base_units("cpu", "2").unwrap(), 2000);
        assert_eq!(to_base_units("cpu", "1.5").unwrap(), 1500);
        assert_eq!(to_base_units("cpu", "1e3").unwrap(), 1_000_000);
        assert_eq!(to_base_units("memory", "16Gi").unwrap(), 16 << 30);
        assert_eq!(to_base_units("memory", "1G").unwrap(), 1_000_000_000);
        assert_eq!(to_base_units("memory", "128974848").unwrap(), 128_974_848);
        assert_eq!(to_base_units("nvidia.com/gpu", "4").unwrap(), 4);
        assert_eq!(
            to_base_units("cpu", "1u").unwrap(),
            1,
            "rounded up to a millicore"
        );
        assert_eq!(to_base_units("memory", "0").unwrap(), 0);
        assert_eq!(
            to_base_units("memory", "1.5").unwrap(),
            2,
            "rounded up to a byte"
        );
        assert_eq!(to_base_units("nvidia.com/gpu", "2000m").unwrap(), 2);
        assert_eq!(to_base_units("nvidia.com/gpu", "1.0").unwrap(), 1);
    }

    #[test]
    fn a_fraction_of_a_whole_unit_resource_is_refused() {
        for bad in ["2.5", "500m", "0.1", "1e-1"] {
            let e = to_base_units("nvidia.com/gpu", bad).unwrap_err();
            assert_eq!(
                e,
                QuantityError::Fractional(bad.to_owned(), "nvidia.com/gpu".to_owned())
            );
            assert!(e.to_string().contains("whole units"), "{e}");
        }
        assert!(to_base_units("pods", "1.5").is_err());
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        for bad in ["abc", "", "1.2.3", "--1", "1Qi", "1e", ".", "1e999"] {
            assert!(to_base_units("cpu", bad).is_err(), "{bad}");
        }
        assert!(matches!(
            to_base_units("cpu", "-1"),
            Err(QuantityError::Negative(_))
        ));
        assert!(matches!(
            to_base_units("memory", "100Ei"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            to_base_units("cpu", "99999999999999999999"),
            Err(QuantityError::TooLarge(_))
        ));
    }
}
