//! The member's address and CA as the admin's kubeconfig has them, and the kubeconfig `join`
//! writes for the operator: inline token and CA only, nothing the operator would refuse.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use k8s_openapi::ByteString;
use kube::config::Kubeconfig;
use serde_json::json;

/// Where the member's API server is and how to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEndpoint {
    /// The context used from the admin's kubeconfig.
    pub context: String,
    /// API server URL written into the generated kubeconfig.
    pub server: String,
    /// Base64 of the PEM CA bundle, if the admin's kubeconfig names one (inline or as a file).
    pub ca_data: Option<String>,
    /// `tls-server-name`, kept when the admin's kubeconfig sets it.
    pub tls_server_name: Option<String>,
}

/// Base64 of `bytes`, as Kubernetes encodes `[]byte` fields.
pub fn base64(bytes: &[u8]) -> String {
    match serde_json::to_value(ByteString(bytes.to_vec())) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Reads a kubeconfig file (relative file references become absolute, as kubectl does).
pub fn read(path: &Path) -> anyhow::Result<Kubeconfig> {
    Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))
}

/// Finds the cluster of `context` (or the current context) and its CA. A CA given as a file
/// path is read and inlined: the operator refuses file references.
pub fn endpoint(
    kubeconfig: &Kubeconfig,
    context: Option<&str>,
    server_override: Option<&str>,
    source: &Path,
) -> anyhow::Result<MemberEndpoint> {
    let context_name = match context.or(kubeconfig.current_context.as_deref()) {
        Some(c) => c.to_owned(),
        None => bail!(
            "kubeconfig {} has no current-context; pass --member-context",
            source.display()
        ),
    };
    let Some(ctx) = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
    else {
        bail!(
            "kubeconfig {} has no context {context_name:?}",
            source.display()
        );
    };
    let Some(cluster) = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
    else {
        bail!(
            "kubeconfig {}: context {context_name:?} names cluster {:?}, which is not defined",
            source.display(),
            ctx.cluster
        );
    };
    let server = match server_override.or(cluster.server.as_deref()) {
        Some(s) => s.to_owned(),
        None => bail!(
            "kubeconfig {}: cluster {:?} has no server",
            source.display(),
            ctx.cluster
        ),
    };
    if !server.starts_with("https://") {
        bail!(
            "member server {server:?} is not an https:// URL; Skyloom talks to members over TLS only"
        );
    }
    let ca_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) if !data.trim().is_empty() => Some(data.trim().to_owned()),
        (_, Some(file)) => {
            let path = PathBuf::from(file);
            let pem = std::fs::read(&path).with_context(|| {
                format!(
                    "reading certificate-authority {} named by kubeconfig {}",
                    path.display(),
                    source.display()
                )
            })?;
            Some(base64(&pem))
        }
        _ => None,
    };
    Ok(MemberEndpoint {
        context: context_name,
        server,
        ca_data,
        tls_server_name: cluster.tls_server_name.clone(),
    })
}

/// Renders the kubeconfig stored on the hub: one cluster with inline CA data, one user with
/// a bearer token, one context. No exec, auth-provider, file reference or proxy.
pub fn render(pool: &str, endpoint: &MemberEndpoint, ca_data: &str, token: &str) -> String {
    let mut cluster = json!({
        "server": endpoint.server,
        "certificate-authority-data": ca_data,
    });
    if let (Some(name), Some(obj)) = (&endpoint.tls_server_name, cluster.as_object_mut()) {
        obj.insert("tls-server-name".into(), json!(name));
    }
    let user = format!("skyloom-{pool}");
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": pool, "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": pool, "context": {"cluster": pool, "user": user}}],
        "current-context": pool,
    });
    // Plain scalars: a long token on one line, as kubectl writes it, not a folded block.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(&doc, options).unwrap_or_else(|_| doc.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("skyloom-join-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_ca_file_is_read_and_inlined() {
        let dir = temp_dir("cafile");
        write(&dir, "ca.crt", "-----BEGIN CERTIFICATE-----\nabc\n");
        let path = write(
            &dir,
            "config",
            "apiVersion: v1\nkind: Config\nclusters:\n- name: m\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority: ca.crt\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws\ncontexts:\n- name: admin@m\n  context: {cluster: m, user: u}\ncurrent-context: admin@m\n",
        );
        let kc = read(&path).unwrap();
        let ep = endpoint(&kc, None, None, &path).unwrap();
        assert_eq!(ep.context, "admin@m");
        assert_eq!(ep.server, "https://10.0.0.1:6443");
        assert_eq!(
            ep.ca_data.as_deref(),
            Some(base64(b"-----BEGIN CERTIFICATE-----\nabc\n").as_str())
        );
        let over = endpoint(&kc, Some("admin@m"), Some("https://m.example:443"), &path).unwrap();
        assert_eq!(over.server, "https://m.example:443");
        assert!(endpoint(&kc, Some("nope"), None, &path).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn plain_http_members_are_refused() {
        let dir = temp_dir("http");
        let path = write(
            &dir,
            "config",
            "clusters:\n- name: m\n  cluster: {server: 'http://10.0.0.1:8080'}\ncontexts:\n- name: c\n  context: {cluster: m}\ncurrent-context: c\n",
        );
        let kc = read(&path).unwrap();
        let err = endpoint(&kc, None, None, &path).unwrap_err().to_string();
        assert!(err.contains("https"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn rendered_kubeconfig_has_inline_credentials_only() {
        let ep = MemberEndpoint {
            context: "admin".into(),
            server: "https://127.0.0.1:6443".into(),
            ca_data: Some("Q0E=".into()),
            tls_server_name: Some("kubernetes".into()),
        };
        let token = "x".repeat(900);
        let text = render("aws", &ep, "Q0E=", &token);
        assert!(text.contains(&format!("token: {token}\n")), "{text}");
        let parsed = Kubeconfig::from_yaml(&text).unwrap();
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
        assert_eq!(cluster.tls_server_name.as_deref(), Some("kubernetes"));
        assert!(cluster.certificate_authority.is_none());
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.token.is_some());
        assert!(user.exec.is_none() && user.token_file.is_none());
        assert_eq!(parsed.current_context.as_deref(), Some("aws"));
        // What join writes is what the operator accepts under its strict default policy.
        let policy = skyloom::kubeconfig_guard::GuardPolicy::default();
        assert!(skyloom::kubeconfig_guard::check(&text, policy).is_ok());
    }
}
