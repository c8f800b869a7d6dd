//! Client-side request limits for the hub and member clients: a steady rate with bursts,
//! so a flood of reconciles cannot overrun an API server (client-go's QPS and burst).

use std::time::Duration;

use kube::client::ClientBuilder;
use kube::{Client, Config};
use tower::limit::RateLimitLayer;
use tower::util::option_layer;

/// How fast one client may send requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRate {
    /// Requests per second on average; 0 or less means no limit.
    pub qps: f64,
    /// Requests that may go at once before the average applies (at least 1).
    pub burst: u32,
}

impl RequestRate {
    /// The limit as "`burst` requests per window", or `None` when unlimited.
    fn window(self) -> Option<(u64, Duration)> {
        if !self.qps.is_finite() || self.qps <= 0.0 {
            return None;
        }
        let burst = self.burst.max(1);
        let seconds = f64::from(burst) / self.qps;
        Some((
            u64::from(burst),
            Duration::from_secs_f64(seconds.max(0.001)),
        ))
    }
}

/// Builds a client from `config` whose requests are limited to `rate`. Watches count as one
/// request each when they start.
pub fn limited_client(config: Config, rate: RequestRate) -> Result<Client, kube::Error> {
    let layer = rate
        .window()
        .map(|(requests, per)| RateLimitLayer::new(requests, per));
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&option_layer(layer))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_holds_a_burst_at_the_average_rate() {
        let rate = RequestRate {
            qps: 50.0,
            burst: 100,
        };
        assert_eq!(rate.window(), Some((100, Duration::from_secs(2))));
        let one = RequestRate { qps: 4.0, burst: 0 };
        assert_eq!(one.window(), Some((1, Duration::from_millis(250))));
    }

    #[test]
    fn zero_negative_or_nan_means_unlimited() {
        for qps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(RequestRate { qps, burst: 10 }.window(), None, "{qps}");
        }
    }
}
