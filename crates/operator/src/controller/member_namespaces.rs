//! Member namespaces that are being deleted (CASE-14). A namespace that is Terminating in a
//! member accepts no new objects, so a service whose namespace terminates there avoids that
//! member (the solver sees it as not allowed) and its replicas go elsewhere at once. The
//! member is looked at again at most every [`RECHECK_PERIOD`]; once the namespace is gone
//! (or active again) the member is usable again and the namespace is created anew when
//! needed. Kept in memory: after a restart the first apply finds out again.
//!
//! Skyloom never deletes a member namespace, not even one it created: its member credential
//! deliberately cannot list Secrets or ConfigMaps, so it cannot prove a namespace empty.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use super::Context;

/// How often a terminating member namespace is looked at again.
pub const RECHECK_PERIOD: Duration = Duration::from_secs(30);

/// (member, namespace) pairs seen terminating, with when they were last looked at.
#[derive(Debug, Default)]
pub struct TerminatingNamespaces(Mutex<BTreeMap<(String, String), Instant>>);

impl TerminatingNamespaces {
    /// Records that `namespace` is terminating in `pool`; true when it was not known yet.
    pub fn mark(&self, pool: &str, namespace: &str) -> bool {
        self.lock()
            .insert((pool.to_owned(), namespace.to_owned()), Instant::now())
            .is_none()
    }

    /// The members in which `namespace` is terminating.
    pub fn pools_for(&self, namespace: &str) -> Vec<String> {
        self.lock()
            .keys()
            .filter(|(_, ns)| ns == namespace)
            .map(|(pool, _)| pool.clone())
            .collect()
    }

    /// The pairs not looked at for [`RECHECK_PERIOD`], marked as looked at now.
    fn due(&self, now: Instant) -> Vec<(String, String)> {
        let mut all = self.lock();
        let mut out = Vec::new();
        for (key, checked) in all.iter_mut() {
            if now.duration_since(*checked) >= RECHECK_PERIOD {
                *checked = now;
                out.push(key.clone());
            }
        }
        out
    }

    fn clear(&self, pool: &str, namespace: &str) {
        self.lock().remove(&(pool.to_owned(), namespace.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `namespace` (as read from a member) is being deleted.
pub(super) fn is_terminating(namespace: &Namespace) -> bool {
    namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// Whether a member's answer to a write says the namespace is being deleted (403, with the
/// `NamespaceTerminating` cause or the API server's message for it).
pub(super) fn is_terminating_error(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code == 403
                && (s.message.contains("because it is being terminated")
                    || s.reason == "NamespaceTerminating")
        }
        _ => false,
    }
}

/// Looks again at the terminating namespaces that are due; those that are gone or active
/// again are forgotten, and the scheduler and their services are told.
pub(super) async fn recheck(ctx: &Context) {
    for (pool, namespace) in ctx.terminating_namespaces.due(Instant::now()) {
        let Some(client) = ctx.registry.client(&pool) else {
            ctx.terminating_namespaces.clear(&pool, &namespace);
            continue;
        };
        let still = match Api::<Namespace>::all(client).get_opt(&namespace).await {
            Ok(Some(ns)) => is_terminating(&ns),
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(pool, namespace, "namespace not rechecked: {e}");
                true
            }
        };
        if still {
            continue;
        }
        tracing::info!(
            pool,
            namespace,
            "member namespace no longer terminating; the member takes this namespace's services again"
        );
        ctx.terminating_namespaces.clear(&pool, &namespace);
        ctx.schedule.notify_one();
        for ais in ctx.services.state() {
            if ais.metadata.namespace.as_deref() == Some(namespace.as_str()) {
                let name = ais.metadata.name.clone().unwrap_or_default();
                if ctx
                    .services
                    .get(&ObjectRef::new(&name).within(&namespace))
                    .is_some()
                {
                    ctx.queue.push((namespace.clone(), name));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_per_member_and_rechecked_at_most_every_period() {
        let t = TerminatingNamespaces::default();
        assert!(t.mark("azure", "team-x"));
        assert!(!t.mark("azure", "team-x"), "known already");
        t.mark("gcp", "team-y");
        assert_eq!(t.pools_for("team-x"), vec!["azure".to_owned()]);
        assert!(t.pools_for("team-z").is_empty());
        let now = Instant::now();
        assert!(t.due(now).is_empty(), "just marked");
        let later = now + RECHECK_PERIOD;
        assert_eq!(t.due(later).len(), 2);
        assert!(t.due(later).is_empty(), "looked at just now");
        t.clear("azure", "team-x");
        assert!(t.pools_for("team-x").is_empty());
    }

    #[test]
    fn the_api_servers_refusal_is_recognised() {
        let refusal = |code, reason: &str, message: &str| {
            kube::Error::Api(Box::new(
                serde_json::from_value(serde_json::json!({
                    "status": "Failure", "code": code, "reason": reason, "message": message,
                }))
                .unwrap(),
            ))
        };
        assert!(is_terminating_error(&refusal(
            403,
            "Forbidden",
            "deployments.apps \"llm\" is forbidden: unable to create new content in namespace team-x because it is being terminated"
        )));
        assert!(!is_terminating_error(&refusal(
            403,
            "Forbidden",
            "User \"x\" cannot create deployments"
        )));
        assert!(!is_terminating_error(&refusal(
            409,
            "Conflict",
            "being terminated"
        )));
    }
}
