//! Leader election: who this replica is, and whether it may write right now.
//!
//! kube-lease-manager acquires and renews the Lease, but it reports a loss only once it has
//! read the Lease again: while the hub is unreachable its requests hang or fail and it keeps
//! saying "leader" (CASE-17). So this replica leads only while the lease manager says so *and*
//! the Lease last seen from the hub names it with a renew time younger than the renew
//! deadline. Past that deadline every writer stops, before another replica can take over
//! (which needs the whole lease duration to pass without a renewal).

use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use http::{HeaderName, HeaderValue};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::config::RunArgs;

/// Errors of setting up leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read or created on the hub.
    #[error("setting up leader election on Lease {namespace}/{name}: {source}")]
    Setup {
        /// The operator's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// What failed.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
}

/// Lease timing derived from the lease duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a renewal holds the Lease, in seconds.
    pub duration_seconds: u64,
    /// How long before expiry the leader renews, in seconds (so it renews every
    /// `duration - grace` seconds, about a third of the duration).
    pub grace_seconds: u64,
    /// How long after its last renewal the leader keeps writing: two thirds of the duration,
    /// which leaves room for one failed renewal and ends well before anyone can take over.
    pub renew_deadline: Duration,
}

impl Timing {
    /// The timing for a lease of `duration_seconds` (at least 2).
    pub fn for_lease(duration_seconds: u64) -> Self {
        let duration = duration_seconds.max(2);
        let renew_every = (duration / 3).max(1);
        Self {
            duration_seconds: duration,
            grace_seconds: duration - renew_every,
            renew_deadline: Duration::from_millis(duration * 2000 / 3),
        }
    }
}

/// This replica's identity: `configured`, else the hostname (a pod's name) with a suffix
/// unique to this process.
pub fn identity(configured: Option<&str>) -> String {
    if let Some(id) = configured.filter(|s| !s.trim().is_empty()) {
        return id.trim().to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skyloom".to_owned());
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}_{:x}{nanos:x}", std::process::id())
}

/// The User-Agent every request of this replica carries, naming it: `skyloom/<version> (<identity>)`.
pub fn user_agent(identity: &str) -> (HeaderName, HeaderValue) {
    let safe: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let text = format!("skyloom/{} ({safe})", env!("CARGO_PKG_VERSION"));
    let value =
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("skyloom"));
    (http::header::USER_AGENT, value)
}

/// Until when `lease` lets `identity` write: its renew time plus `deadline`, if it holds it.
pub fn leads_until(
    lease: Option<&LeaseSpec>,
    identity: &str,
    deadline: Duration,
) -> Option<SystemTime> {
    let spec = lease?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = SystemTime::from(spec.renew_time.as_ref()?.0);
    renewed.checked_add(deadline)
}

/// A channel that says whether this replica leads. Without leader election it always does.
pub async fn leadership(
    args: &RunArgs,
    hub: &Client,
    identity: &str,
) -> Result<watch::Receiver<bool>, LeaderError> {
    if !args.leader_elect {
        let (tx, rx) = watch::channel(true);
        // Keep the sender alive for the life of the process.
        std::mem::forget(tx);
        return Ok(rx);
    }
    let timing = Timing::for_lease(args.lease_duration_seconds);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(hub.clone(), &args.lease_name)
        .with_namespace(&args.namespace)
        .with_identity(identity)
        .with_duration(timing.duration_seconds)
        .with_grace(timing.grace_seconds)
        .with_field_manager("skyloom-leader")
        .build()
        .await
        .map_err(|source| LeaderError::Setup {
            namespace: args.namespace.clone(),
            name: args.lease_name.clone(),
            source,
        })?;
    let (elected, _task) = manager.watch().await;
    let leases = watcher(
        Api::<Lease>::namespaced(hub.clone(), &args.namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", args.lease_name)),
    )
    .default_backoff()
    .applied_objects();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(guard(
        elected,
        leases,
        identity.to_owned(),
        timing.renew_deadline,
        tx,
    ));
    Ok(rx)
}

/// Leads while `elected` says so and the last Lease seen was renewed by us within `deadline`.
async fn guard(
    mut elected: watch::Receiver<bool>,
    leases: impl Stream<Item = Result<Lease, watcher::Error>>,
    identity: String,
    deadline: Duration,
    tx: watch::Sender<bool>,
) {
    futures::pin_mut!(leases);
    let mut until: Option<SystemTime> = None;
    loop {
        let now = SystemTime::now();
        let is_elected = *elected.borrow();
        let leading = is_elected && until.is_some_and(|u| now < u);
        let was_leading = tx.send_replace(leading);
        if was_leading && !leading && is_elected {
            tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                "the Lease was not renewed within the renew deadline: stopping every writer until it is"
            );
        }
        let wake = until
            .and_then(|u| u.duration_since(now).ok())
            .filter(|_| leading)
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = tx.closed() => return,
            changed = elected.changed() => {
                if changed.is_err() {
                    tx.send_replace(false);
                    return;
                }
            }
            next = leases.next() => match next {
                Some(Ok(lease)) => until = leads_until(lease.spec.as_ref(), &identity, deadline),
                // The watcher relists with backoff by itself.
                Some(Err(_)) => {}
                None => {
                    tx.send_replace(false);
                    return;
                }
            },
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    #[test]
    fn timing_stops_writes_before_anyone_can_take_over() {
        for d in [2, 3, 4, 6, 15, 60] {
            let t = Timing::for_lease(d);
            let renew_every = Duration::from_secs(t.duration_seconds - t.grace_seconds);
            assert!(
                t.grace_seconds > 0 && t.grace_seconds < t.duration_seconds,
                "{t:?}"
            );
            assert!(t.renew_deadline > renew_every, "{t:?}");
            assert!(
                t.renew_deadline < Duration::from_secs(t.duration_seconds),
                "{t:?}"
            );
        }
        let t = Timing::for_lease(15);
        assert_eq!(
            (t.grace_seconds, t.renew_deadline),
            (10, Duration::from_secs(10))
        );
        assert_eq!(Timing::for_lease(0).duration_seconds, 2);
    }

    #[test]
    fn only_our_recent_renewal_lets_us_write() {
        let renewed = SystemTime::now();
        let spec = |holder: &str| LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::try_from(renewed).unwrap(),
            )),
            ..LeaseSpec::default()
        };
        let deadline = Duration::from_secs(4);
        let until = leads_until(Some(&spec("a")), "a", deadline).unwrap();
        let off = until.duration_since(renewed).unwrap();
        assert!(off.abs_diff(deadline) < Duration::from_millis(1), "{off:?}");
        assert_eq!(leads_until(Some(&spec("b")), "a", deadline), None);
        assert_eq!(leads_until(None, "a", deadline), None);
        let no_renew = LeaseSpec {
            holder_identity: Some("a".into()),
            ..LeaseSpec::default()
        };
        assert_eq!(leads_until(Some(&no_renew), "a", deadline), None);
    }

    fn lease(holder: &str) -> Result<Lease, watcher::Error> {
        Ok(Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        })
    }

    async fn becomes(rx: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|v| *v == want))
            .await
            .unwrap_or_else(|_| panic!("leading did not become {want}"))
            .unwrap();
    }

    #[tokio::test]
    async fn the_guard_stops_leading_when_renewals_stop_arriving() {
        let (elected_tx, elected) = watch::channel(true);
        let (leases_tx, leases) = futures::channel::mpsc::unbounded();
        let (tx, mut leading) = watch::channel(false);
        let deadline = Duration::from_millis(300);
        tokio::spawn(guard(elected, leases, "me".into(), deadline, tx));

        leases_tx.unbounded_send(lease("me")).unwrap();
        becomes(&mut leading, true).await;
        // No renewal seen within the deadline (the hub is cut off): stop, although the lease
        // manager still says "elected".
        let started = std::time::Instant::now();
        becomes(&mut leading, false).await;
        assert!(started.elapsed() < deadline + Duration::from_millis(200));
        assert!(*elected_tx.borrow());
        // A renewal seen again: lead again. Someone else's Lease or losing the election: stop.
        leases_tx.unbounded_send(lease("me")).unwrap();
        becomes(&mut leading, true).await;
        leases_tx.unbounded_send(lease("other")).unwrap();
        becomes(&mut leading, false).await;
        leases_tx.unbounded_send(lease("me")).unwrap();
        becomes(&mut leading, true).await;
        elected_tx.send_replace(false);
        becomes(&mut leading, false).await;
    }

    #[test]
    fn identity_and_user_agent() {
        assert_eq!(identity(Some(" pod-1 ")), "pod-1");
        let a = identity(None);
        assert!(!a.is_empty() && a.contains('_'), "{a}");
        let (name, value) = user_agent("skyloom-7d9f/x y");
        assert_eq!(name, http::header::USER_AGENT);
        let text = value.to_str().unwrap();
        assert!(
            text.starts_with("skyloom/") && text.ends_with("(skyloom-7d9f-x-y)"),
            "{text}"
        );
    }
}
