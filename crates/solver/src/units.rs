//! Resource names, base units and the unit each resource is priced in.
//!
//! Amounts are integers in a resource's *base unit*: millicores for `cpu`, bytes for
//! `memory`, `ephemeral-storage` and `hugepages-*`, and whole units (devices) for every other
//! resource, such as `nvidia.com/gpu`. Prices are micro-USD per *price unit* and hour: one core
//! for `cpu`, one GiB (2^30 bytes) for byte-valued resources, one unit otherwise — the
//! conventions of the CloudPool API.

/// The CPU resource name; amounts in millicores.
pub const CPU: &str = "cpu";
/// The memory resource name; amounts in bytes.
pub const MEMORY: &str = "memory";
/// The NVIDIA GPU extended resource name; amounts in devices.
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";

/// Micro-USD in one USD.
pub const MICRO_PER_USD: i128 = 1_000_000;
/// Nano-USD in one USD: the solver's internal money unit.
pub const NANO_PER_USD: i128 = 1_000_000_000;

const GIB: u64 = 1 << 30;

/// How a resource's base unit relates to the unit its price is quoted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceUnit {
    /// Base units in one price unit (1000 millicores per core, 2^30 bytes per GiB, 1 else).
    pub base_per_unit: u64,
    /// Name of the price unit, for explanations: `core`, `GiB` or `unit`.
    pub name: &'static str,
}

/// Whether a resource's amounts are bytes.
pub fn is_byte_resource(resource: &str) -> bool {
    resource == MEMORY || resource == "ephemeral-storage" || resource.starts_with("hugepages-")
}

/// The unit prices of `resource` are quoted in.
pub fn price_unit(resource: &str) -> PriceUnit {
    if resource == CPU {
        PriceUnit {
            base_per_unit: 1000,
            name: "core",
        }
    } else if is_byte_resource(resource) {
        PriceUnit {
            base_per_unit: GIB,
            name: "GiB",
        }
    } else {
        PriceUnit {
            base_per_unit: 1,
            name: "unit",
        }
    }
}

/// Converts an amount in base units to the unit used in reports: cores for `cpu`, bytes for
/// byte-valued resources, devices otherwise.
pub fn report_amount(resource: &str, base: u64) -> f64 {
    if resource == CPU {
        base as f64 / 1000.0
    } else {
        base as f64
    }
}

/// Formats an amount in base units for people: `1.5` cores, `16Gi`, `2` devices.
pub fn display_amount(resource: &str, base: u64) -> String {
    if resource == CPU {
        if base.is_multiple_of(1000) {
            format!("{}", base / 1000)
        } else {
            format!("{base}m")
        }
    } else if is_byte_resource(resource) {
        const UNITS: [(&str, u64); 5] = [
            ("Pi", 1 << 50),
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        for (suffix, size) in UNITS {
            if base >= size && base.is_multiple_of(size) {
                return format!("{}{suffix}", base / size);
            }
        }
        format!("{base}")
    } else {
        format!("{base}")
    }
}

/// The cost in nano-USD per hour of `amount` base units at `micro_usd_per_unit_hour`, rounded
/// to the nearest nano-USD; `None` when the exact product does not fit an `i128`.
pub fn cost_nano(resource: &str, amount: u64, micro_usd_per_unit_hour: u64) -> Option<i128> {
    let unit = i128::from(price_unit(resource).base_per_unit);
    let numerator = i128::from(micro_usd_per_unit_hour)
        .checked_mul(NANO_PER_USD / MICRO_PER_USD)?
        .checked_mul(i128::from(amount))?;
    // Round half up; all terms are non-negative.
    Some((numerator + unit / 2) / unit)
}

/// Nano-USD as USD, for reports.
pub fn nano_to_usd(nano: i128) -> f64 {
    nano as f64 / NANO_PER_USD as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_units_follow_the_cloudpool_conventions() {
        assert_eq!(price_unit("cpu").base_per_unit, 1000);
        assert_eq!(price_unit("memory").name, "GiB");
        assert_eq!(price_unit("hugepages-2Mi").base_per_unit, 1 << 30);
        assert_eq!(price_unit("nvidia.com/gpu").base_per_unit, 1);
    }

    #[test]
    fn costs_are_exact_in_nano_usd() {
        // 500 millicores at $0.04 per core-hour = $0.02.
        assert_eq!(cost_nano("cpu", 500, 40_000), Some(20_000_000));
        // 2 GiB at $0.005 per GiB-hour = $0.01.
        assert_eq!(cost_nano("memory", 2 << 30, 5_000), Some(10_000_000));
        assert_eq!(
            cost_nano("nvidia.com/gpu", 1, 2_100_000),
            Some(2_100_000_000)
        );
        assert!(cost_nano("nvidia.com/gpu", u64::MAX, u64::MAX).is_none());
    }

    #[test]
    fn amounts_display_in_kubernetes_style() {
        assert_eq!(display_amount("cpu", 1500), "1500m");
        assert_eq!(display_amount("cpu", 2000), "2");
        assert_eq!(display_amount("memory", 16 << 30), "16Gi");
        assert_eq!(display_amount("nvidia.com/gpu", 3), "3");
    }
}
