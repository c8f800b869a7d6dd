//! Admin kubeconfigs for a member: one through the fault proxy (what users and the operator
//! get) and one straight to the apiserver (what the member's own components use).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::pki::MemberPki;

/// Renders a kubeconfig with embedded certificate data for `server` (an `https://` URL).
pub fn render(cluster: &str, server: &str, pki: &MemberPki) -> String {
    let b64 = |pem: &str| STANDARD.encode(pem.as_bytes());
    let user = format!("{cluster}-admin");
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": cluster,
            "cluster": {
                "server": server,
                "certificate-authority-data": b64(&pki.ca_cert),
            },
        }],
        "users": [{
            "name": user,
            "user": {
                "client-certificate-data": b64(&pki.admin_cert),
                "client-key-data": b64(&pki.admin_key),
            },
        }],
        "contexts": [{
            "name": cluster,
            "context": {"cluster": cluster, "user": user},
        }],
        "current-context": cluster,
    });
    // JSON is valid YAML, and serde_json cannot fail on a `Value`.
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_kubeconfig_kube_can_read() {
        let pki = MemberPki::generate("x").unwrap();
        let text = render("x", "https://127.0.0.1:6443", &pki);
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("x"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert!(
            cluster.certificate_authority.is_none(),
            "no file references"
        );
    }
}
