//! Which certificate authorities a TLS connection to a receiver trusts: by default the public
//! ones (Mozilla's roots, built in); with a channel's or destination's `ca_file`, only the CA
//! certificates that file holds (PEM), for receivers inside a company's own PKI. Shared by the
//! HTTP POSTs (webhook, Slack, SMS, a distributed report), SMTP (email) and the PostgreSQL
//! store (`sslrootcert`).

use std::{path::Path, sync::Arc, time::Duration};

use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};

/// The longest `ca_file` read.
const MAX_CA_FILE: u64 = 1 << 20;

/// The authorities trusted.
#[derive(Clone, Default)]
pub struct Trust {
    /// The PEM of `ca_file`, or `None` for the public roots.
    pem: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.pem.is_some() {
            "Trust(ca_file)"
        } else {
            "Trust(public roots)"
        })
    }
}

impl Trust {
    /// The public roots, or only the certificates of `ca_file`: a readable file of at most
    /// 1 MiB holding at least one PEM certificate, else the error says which and why.
    pub fn load(ca_file: Option<&Path>) -> Result<Self, String> {
        let Some(path) = ca_file else {
            return Ok(Self::default());
        };
        let pem = crate::files::read_bounded(path, MAX_CA_FILE, "a CA file")
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let certificates = certificates(&pem)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?
            .len();
        if certificates == 0 {
            return Err(format!(
                "ca_file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                path.display()
            ));
        }
        Ok(Self {
            pem: Some(pem.into()),
        })
    }

    /// An HTTP client that gives up after `timeout`, trusting these authorities.
    pub fn http_agent(&self, timeout: Duration) -> ureq::Agent {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false);
        if let Some(pem) = &self.pem {
            let roots = certificates(pem).unwrap_or_default();
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
                    .build(),
            );
        }
        config.build().into()
    }

    /// The roots a rustls client trusts: the public ones, or these.
    pub fn rustls_roots(&self) -> rustls::RootCertStore {
        match &self.pem {
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certificates(pem).unwrap_or_default() {
                    // A certificate rustls cannot take is left out: the server's is then
                    // not trusted, and the connection says so.
                    let _ = roots.add(rustls::pki_types::CertificateDer::from(c.der().to_vec()));
                }
                roots
            }
        }
    }

    /// TLS parameters for an SMTP connection to `host`, trusting these authorities.
    pub fn smtp_tls(&self, host: &str) -> Result<TlsParameters, String> {
        let mut builder = TlsParameters::builder(host.to_owned());
        if let Some(pem) = &self.pem {
            let roots = Certificate::from_pem(pem).map_err(|e| format!("ca_file: {e}"))?;
            builder = builder
                .certificate_store(CertificateStore::None)
                .add_root_certificate(roots);
        }
        builder.build_rustls().map_err(|e| format!("{host}: {e}"))
    }
}

/// The certificates of a PEM text (keys and other sections skipped).
fn certificates(pem: &[u8]) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| e.to_string())? {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = Trust::load(Some(&empty)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = Trust::load(Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        assert!(Trust::load(None).unwrap().pem.is_none());
    }
}
