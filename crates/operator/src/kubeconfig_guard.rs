//! Checks a member kubeconfig from a Secret before any client is built from it.
//!
//! A kubeconfig is executable configuration: an `exec` plugin or `auth-provider` runs a
//! program, file fields make the client read local files (the operator's own token among
//! them), `proxy-url` and odd server addresses send credentials elsewhere. By default only
//! inline credentials are accepted: `token`, `client-certificate-data` with `client-key-data`,
//! and `certificate-authority-data`. Error messages name the field, never its value, and never
//! echo the document (it carries credentials).

use std::net::IpAddr;

use kube::config::{Kubeconfig, NamedAuthInfo, NamedCluster};

/// What an operator-level policy allows beyond the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardPolicy {
    /// Accept `exec` and `auth-provider` credentials.
    pub allow_exec: bool,
    /// Accept `insecure-skip-tls-verify`, plain `http://` and link-local or metadata servers.
    pub allow_insecure: bool,
}

/// Why a kubeconfig was refused. Names fields only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigRejected {
    /// Not YAML, or not a kubeconfig.
    #[error("the kubeconfig is not a valid kubeconfig document{}", line.map(|l| format!(" (near line {l})")).unwrap_or_default())]
    Unparsable {
        /// The line the parser stopped at, when it said.
        line: Option<u32>,
    },
    /// No usable context, cluster or user.
    #[error("the kubeconfig has no usable {0}")]
    Incomplete(&'static str),
    /// A field that is not allowed.
    #[error("field {field} is not allowed in member kubeconfigs: {why}")]
    Forbidden {
        /// Path of the field, e.g. `users[0].user.exec`.
        field: String,
        /// Why.
        why: &'static str,
    },
}

impl KubeconfigRejected {
    fn forbidden(field: String, why: &'static str) -> Self {
        Self::Forbidden { field, why }
    }
}

/// Parses and checks `text`; returns the kubeconfig on success.
pub fn check(text: &str, policy: GuardPolicy) -> Result<Kubeconfig, KubeconfigRejected> {
    let kc = Kubeconfig::from_yaml(text).map_err(|e| KubeconfigRejected::Unparsable {
        line: line_of(&e.to_string()),
    })?;
    if kc.clusters.is_empty() {
        return Err(KubeconfigRejected::Incomplete("cluster"));
    }
    if kc.contexts.is_empty() {
        return Err(KubeconfigRejected::Incomplete("context"));
    }
    for (i, c) in kc.clusters.iter().enumerate() {
        check_cluster(i, c, policy)?;
    }
    for (i, u) in kc.auth_infos.iter().enumerate() {
        check_user(i, u, policy)?;
    }
    Ok(kc)
}

/// Extracts only a line number from a parser message (the message itself may quote input).
fn line_of(message: &str) -> Option<u32> {
    let idx = message.find("line ")?;
    let digits: String = message[idx + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn check_cluster(
    i: usize,
    c: &NamedCluster,
    policy: GuardPolicy,
) -> Result<(), KubeconfigRejected> {
    let at = |f: &str| format!("clusters[{i}].cluster.{f}");
    let Some(cluster) = &c.cluster else {
        return Err(KubeconfigRejected::Incomplete("cluster"));
    };
    if cluster.certificate_authority.is_some() {
        return Err(KubeconfigRejected::forbidden(
            at("certificate-authority"),
            "file references are refused; inline the CA as certificate-authority-data",
        ));
    }
    if cluster.proxy_url.is_some() {
        return Err(KubeconfigRejected::forbidden(
            at("proxy-url"),
            "a proxy would see the member's credentials",
        ));
    }
    if cluster.insecure_skip_tls_verify == Some(true) && !policy.allow_insecure {
        return Err(KubeconfigRejected::forbidden(
            at("insecure-skip-tls-verify"),
            "TLS verification is required (operator setting --allow-insecure-members)",
        ));
    }
    let server = cluster
        .server
        .as_deref()
        .ok_or(KubeconfigRejected::Incomplete("cluster server"))?;
    let Some(rest) = server.strip_prefix("https://") else {
        if policy.allow_insecure && server.starts_with("http://") {
            return Ok(());
        }
        return Err(KubeconfigRejected::forbidden(
            at("server"),
            "the server must be an https:// URL",
        ));
    };
    if !policy.allow_insecure && is_metadata_or_link_local(host_of(rest)) {
        return Err(KubeconfigRejected::forbidden(
            at("server"),
            "link-local and cloud metadata addresses are refused",
        ));
    }
    Ok(())
}

fn host_of(rest: &str) -> &str {
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority)
}

fn is_metadata_or_link_local(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    if lower == "metadata.google.internal"
        || lower == "metadata"
        || lower.ends_with(".metadata.google.internal")
    {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_link_local(),
        Ok(IpAddr::V6(v6)) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    == "fd00:ec2::254"
                        .parse::<std::net::Ipv6Addr>()
                        .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED)
        }
        Err(_) => false,
    }
}

fn check_user(i: usize, u: &NamedAuthInfo, policy: GuardPolicy) -> Result<(), KubeconfigRejected> {
    let at = |f: &str| format!("users[{i}].user.{f}");
    let Some(user) = &u.auth_info else {
        return Ok(());
    };
    if !policy.allow_exec {
        if user.exec.is_some() {
            return Err(KubeconfigRejected::forbidden(
                at("exec"),
                "credential plugins run programs inside the operator (operator setting --allow-exec-credentials)",
            ));
        }
        if user.auth_provider.is_some() {
            return Err(KubeconfigRejected::forbidden(
                at("auth-provider"),
                "auth providers can run programs inside the operator (operator setting --allow-exec-credentials)",
            ));
        }
    }
    for (field, set) in [
        ("tokenFile", user.token_file.is_some()),
        ("client-certificate", user.client_certificate.is_some()),
        ("client-key", user.client_key.is_some()),
    ] {
        if set {
            return Err(KubeconfigRejected::forbidden(
                at(field),
                "file references are refused; inline the credential",
            ));
        }
    }
    if user.username.is_some() || user.password.is_some() {
        return Err(KubeconfigRejected::forbidden(
            at("username"),
            "basic authentication is refused; use a token or a client certificate",
        ));
    }
    if user.impersonate.is_some() || user.impersonate_groups.is_some() {
        return Err(KubeconfigRejected::forbidden(
            at("as"),
            "impersonation is refused",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "CANARY-TOKEN-6f1d";

    fn kubeconfig(cluster: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n{cluster}\nusers:\n- name: u\n  user:\n{user}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        )
    }

    const GOOD_CLUSTER: &str =
        "    server: https://127.0.0.1:6443\n    certificate-authority-data: Zm9v";

    fn rejected(text: &str) -> String {
        let err = check(text, GuardPolicy::default()).unwrap_err().to_string();
        assert!(
            !err.contains(CANARY),
            "the error leaks the credential: {err}"
        );
        err
    }

    #[test]
    fn inline_token_is_accepted() {
        let text = kubeconfig(GOOD_CLUSTER, &format!("    token: {CANARY}"));
        check(&text, GuardPolicy::default()).unwrap();
    }

    #[test]
    fn exec_and_auth_provider_are_refused_unless_allowed() {
        let exec = kubeconfig(
            GOOD_CLUSTER,
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: sh\n      args: [\"-c\", \"touch exec-canary\"]",
        );
        assert!(rejected(&exec).contains("users[0].user.exec"));
        check(
            &exec,
            GuardPolicy {
                allow_exec: true,
                allow_insecure: false,
            },
        )
        .unwrap();
        let provider = kubeconfig(
            GOOD_CLUSTER,
            "    auth-provider:\n      name: gcp\n      config: {cmd-path: /bin/sh}",
        );
        assert!(rejected(&provider).contains("auth-provider"));
    }

    #[test]
    fn file_references_are_refused() {
        let token_file = kubeconfig(
            GOOD_CLUSTER,
            "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
        );
        assert!(rejected(&token_file).contains("tokenFile"));
        let cert = kubeconfig(
            GOOD_CLUSTER,
            "    client-certificate: /etc/passwd\n    client-key-data: Zm9v",
        );
        assert!(rejected(&cert).contains("client-certificate"));
        let ca = kubeconfig(
            "    server: https://127.0.0.1:6443\n    certificate-authority: /etc/ssl/ca.pem",
            "    token: x",
        );
        assert!(rejected(&ca).contains("certificate-authority"));
    }

    #[test]
    fn proxy_insecure_and_metadata_servers_are_refused() {
        let proxy = kubeconfig(
            "    server: https://127.0.0.1:6443\n    proxy-url: http://127.0.0.1:9",
            "    token: x",
        );
        assert!(rejected(&proxy).contains("proxy-url"));
        let insecure = kubeconfig(
            "    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true",
            "    token: x",
        );
        assert!(rejected(&insecure).contains("insecure-skip-tls-verify"));
        check(
            &insecure,
            GuardPolicy {
                allow_exec: false,
                allow_insecure: true,
            },
        )
        .unwrap();
        for server in [
            "https://169.254.169.254",
            "https://[fe80::1]:443",
            "https://metadata.google.internal/",
        ] {
            let text = kubeconfig(&format!("    server: {server}"), "    token: x");
            assert!(
                rejected(&text).contains("clusters[0].cluster.server"),
                "{server}"
            );
        }
        let http = kubeconfig("    server: http://127.0.0.1:8080", "    token: x");
        assert!(rejected(&http).contains("https://"));
    }

    #[test]
    fn debug_and_display_of_credentials_and_errors_are_redacted() {
        // CASE-20 E4: the parsed kubeconfig (token and key inline) and every refusal.
        let key = "Q0FOQVJZLUtFWS02ZjFk"; // base64 of CANARY-KEY-6f1d
        let text = kubeconfig(
            GOOD_CLUSTER,
            &format!("    token: {CANARY}\n    client-key-data: {key}"),
        );
        let kc = check(&text, GuardPolicy::default()).unwrap();
        let shown = format!("{kc:?} {kc:#?}");
        for needle in [CANARY, key, "CANARY-KEY-6f1d"] {
            assert!(!shown.contains(needle), "Debug shows {needle}: {shown}");
        }
        let exec = kubeconfig(
            GOOD_CLUSTER,
            &format!("    exec:\n      command: /bin/echo\n      args: [{CANARY}]"),
        );
        let err = check(&exec, GuardPolicy::default()).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(CANARY), "{shown}");
    }

    #[test]
    fn unparsable_text_is_refused_without_echo() {
        let err = rejected(&format!("clusters: [\n  token: {CANARY}\n  : : :"));
        assert!(err.contains("not a valid kubeconfig"), "{err}");
        assert!(rejected("apiVersion: v1\nkind: Config\n").contains("no usable cluster"));
    }
}
