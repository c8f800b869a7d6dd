//! What a member credential says about itself: the expiry of a bearer token that is a JWT
//! (ServiceAccount tokens from `kubectl create token` or the TokenRequest API carry `exp`).
//! The token is decoded, never verified (the member verifies it) and never logged.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kube::config::Kubeconfig;

/// How long before expiry a pool warns (`CredentialsExpiring`).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(3600);

/// The `exp` claim of the current context's user token, if it is a JWT that has one.
pub fn token_expiry(kubeconfig: &Kubeconfig) -> Option<SystemTime> {
    let context = kubeconfig
        .current_context
        .as_deref()
        .and_then(|name| kubeconfig.contexts.iter().find(|c| c.name == name))
        .or_else(|| kubeconfig.contexts.first())?;
    let user_name = &context.context.as_ref()?.user;
    let user = kubeconfig
        .auth_infos
        .iter()
        .find(|u| Some(&u.name) == user_name.as_ref())?;
    let token = user.auth_info.as_ref()?.token.as_ref()?;
    jwt_expiry(secrecy::ExposeSecret::expose_secret(token))
}

/// The `exp` claim (seconds since the epoch) of a JWT, or None for anything else.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = u64::try_from(claims.get("exp")?.as_i64()?).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// Whether a credential expiring at `expiry` should warn at `now`.
pub fn expiring_soon(expiry: SystemTime, now: SystemTime) -> bool {
    expiry
        .duration_since(now)
        .map_or(true, |left| left < EXPIRY_WARNING)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    fn kubeconfig(token: &str) -> Kubeconfig {
        Kubeconfig::from_yaml(&format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: m\nclusters: [{{name: m, cluster: {{server: 'https://127.0.0.1:6443'}}}}]\ncontexts: [{{name: m, context: {{cluster: m, user: sa}}}}, {{name: other, context: {{cluster: m, user: other}}}}]\nusers: [{{name: other, user: {{token: {}}}}}, {{name: sa, user: {{token: '{token}'}}}}]\n",
            jwt(r#"{"exp": 1}"#)
        ))
        .unwrap()
    }

    #[test]
    fn the_current_users_jwt_expiry_is_read() {
        let kc = kubeconfig(&jwt(
            r#"{"sub":"system:serviceaccount:x:y","exp":1893456000}"#,
        ));
        assert_eq!(
            token_expiry(&kc),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000))
        );
    }

    #[test]
    fn opaque_tokens_and_jwts_without_exp_have_no_expiry() {
        for token in [
            "not-a-jwt".to_owned(),
            "a.b".to_owned(),
            "a.%%%.c".to_owned(),
            jwt(r#"{"sub":"x"}"#),
            jwt(r#"{"exp":"soon"}"#),
            jwt(r#"{"exp":-5}"#),
        ] {
            assert_eq!(token_expiry(&kubeconfig(&token)), None, "{token}");
        }
    }

    #[test]
    fn warns_within_the_last_hour_and_after_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!expiring_soon(now + Duration::from_secs(7200), now));
        assert!(expiring_soon(now + Duration::from_secs(600), now));
        assert!(expiring_soon(now - Duration::from_secs(5), now));
    }
}
