//! Certificates and keys for one member: a CA, the apiserver's serving certificate, an admin
//! client certificate (organisation `system:masters`) and the service-account signing key.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};

use crate::error::TestbedError;

/// PEM material of one member's control plane.
#[derive(Clone)]
pub struct MemberPki {
    /// The member's CA certificate (PEM); it signs the serving and client certificates.
    pub ca_cert: String,
    /// The apiserver's serving certificate (PEM), valid for 127.0.0.1 and localhost.
    pub serving_cert: String,
    /// The serving certificate's private key (PEM).
    pub serving_key: String,
    /// The admin client certificate (PEM), in group `system:masters`.
    pub admin_cert: String,
    /// The admin client certificate's private key (PEM).
    pub admin_key: String,
    /// The service-account signing key (PKCS#8 PEM).
    pub sa_key: String,
    /// The service-account public key (PEM).
    pub sa_pub: String,
}

impl std::fmt::Debug for MemberPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberPki { <redacted> }")
    }
}

fn pki_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TestbedError {
    move |source| TestbedError::Pki { what, source }
}

fn params(common_name: &str, organisation: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organisation {
        dn.push(DnType::OrganizationName, org);
    }
    params.distinguished_name = dn;
    params.not_before = date_time_ymd(2024, 1, 1);
    params.not_after = date_time_ymd(2049, 12, 31);
    params
}

impl MemberPki {
    /// Generates fresh keys and certificates for the member called `member`.
    pub fn generate(member: &str) -> Result<Self, TestbedError> {
        let ca_key = KeyPair::generate().map_err(pki_err("CA key"))?;
        let mut ca_params = params(&format!("skyloom-testbed-{member}-ca"), None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(pki_err("CA"))?;

        let serving_key = KeyPair::generate().map_err(pki_err("serving key"))?;
        let mut serving = params(&format!("skyloom-testbed-{member}-apiserver"), None);
        serving.subject_alt_names = vec![
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            SanType::DnsName("localhost".try_into().map_err(pki_err("SAN"))?),
            SanType::DnsName(
                "kubernetes.default.svc"
                    .try_into()
                    .map_err(pki_err("SAN"))?,
            ),
        ];
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving
            .signed_by(&serving_key, &ca)
            .map_err(pki_err("serving certificate"))?;

        let admin_key = KeyPair::generate().map_err(pki_err("admin key"))?;
        let mut admin = params("skyloom-testbed-admin", Some("system:masters"));
        admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin
            .signed_by(&admin_key, &ca)
            .map_err(pki_err("admin certificate"))?;

        let sa = KeyPair::generate().map_err(pki_err("service-account key"))?;
        Ok(Self {
            ca_cert: ca.pem(),
            serving_cert: serving_cert.pem(),
            serving_key: serving_key.serialize_pem(),
            admin_cert: admin_cert.pem(),
            admin_key: admin_key.serialize_pem(),
            sa_key: sa.serialize_pem(),
            sa_pub: sa.public_key_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_distinct_pem_material() {
        let a = MemberPki::generate("a").unwrap();
        let b = MemberPki::generate("b").unwrap();
        assert!(a.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(a.admin_key.contains("PRIVATE KEY"));
        assert!(a.sa_pub.contains("PUBLIC KEY"));
        assert_ne!(a.ca_cert, b.ca_cert);
        assert_eq!(format!("{a:?}"), "MemberPki { <redacted> }");
    }
}
