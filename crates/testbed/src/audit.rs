//! What an apiserver's audit log says about write requests: who (user-agent), what verb on
//! which object, and when, so tests can check from the member's side which client wrote.

use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// One completed write request, from one line of the audit log (`audit.k8s.io/v1` Event).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditWrite {
    /// create, update, patch, delete or deletecollection.
    pub verb: String,
    /// The client's User-Agent header (empty when it sent none).
    #[serde(default)]
    pub user_agent: String,
    /// The request's path and query.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// The object written, when the request names one.
    #[serde(default)]
    pub object_ref: Option<AuditObject>,
    /// The HTTP status the apiserver answered with.
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    /// When the apiserver received the request.
    pub request_received_timestamp: Timestamp,
    /// When the apiserver finished it.
    pub stage_timestamp: Timestamp,
}

/// The object an audited request wrote.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObject {
    /// Resource (plural), e.g. `deployments`.
    #[serde(default)]
    pub resource: String,
    /// Namespace, empty for cluster-scoped objects.
    #[serde(default)]
    pub namespace: String,
    /// Name, empty for creates that let the server pick it.
    #[serde(default)]
    pub name: String,
    /// Subresource, e.g. `status`.
    #[serde(default)]
    pub subresource: String,
}

/// The status part of an audited response.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct AuditStatus {
    /// HTTP status code.
    #[serde(default)]
    pub code: u16,
}

impl AuditWrite {
    /// Whether the client's user-agent contains `needle`.
    pub fn from_agent(&self, needle: &str) -> bool {
        self.user_agent.contains(needle)
    }

    /// Whether the request succeeded (2xx).
    pub fn succeeded(&self) -> bool {
        self.response_status
            .as_ref()
            .is_some_and(|s| (200..300).contains(&s.code))
    }

    /// The object's resource, or "" when there is none.
    pub fn resource(&self) -> &str {
        self.object_ref.as_ref().map_or("", |o| o.resource.as_str())
    }

    /// When the apiserver received the request, as a [`SystemTime`].
    pub fn received(&self) -> SystemTime {
        SystemTime::from(self.request_received_timestamp)
    }

    /// When the apiserver finished the request, as a [`SystemTime`].
    pub fn completed(&self) -> SystemTime {
        SystemTime::from(self.stage_timestamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_audit_line() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"x","stage":"ResponseComplete","requestURI":"/apis/apps/v1/namespaces/a/deployments/b?fieldManager=skyloom","verb":"patch","user":{"username":"admin"},"userAgent":"skyloom/0.1 (replica-a)","objectRef":{"resource":"deployments","namespace":"a","name":"b","apiGroup":"apps","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-12-03T19:41:21.123456Z","stageTimestamp":"2026-12-03T19:41:21.130000Z"}"#;
        let w: AuditWrite = serde_json::from_str(line).unwrap();
        assert_eq!(w.verb, "patch");
        assert!(w.from_agent("replica-a"));
        assert!(w.succeeded());
        assert_eq!(w.resource(), "deployments");
        assert!(w.completed() > w.received());
    }
}
