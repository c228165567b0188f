//! `warden health`: is the data plane of this configuration live?
//!
//! For container health checks (the runtime image has no shell and no curl):
//! one `GET /v2/health/live` to the configured listen address (an
//! unspecified address means loopback), exit 0 on `200`, 1 otherwise
//! (configuration errors included: container runtimes reserve other codes).
//!
//! Over TLS the probe trusts exactly one certificate, the one this
//! configuration serves (`tls.cert`, or the generated
//! `<data_dir>/tls/cert.pem`), whatever names it carries: a certificate for
//! `warden.example.com` is still the right one on 127.0.0.1. A listener that
//! requires client certificates cannot be probed this way.
//!
//! The request is written by hand: one fixed GET and a status line do not
//! need an HTTP client library in the binary.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_core::config::{CertSource, Config, Overrides};

use crate::Failure;
use crate::cli::Location;
use crate::commands::load_config;

const REQUEST: &[u8] =
    b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nUser-Agent: warden-health\r\nConnection: close\r\n\r\n";

/// Runs the probe; `listen` overrides `server.listen`.
pub(crate) fn health(location: &Location, listen: Option<String>) -> Result<(), Failure> {
    // Exit 1 for anything that is not "live", configuration errors included:
    // container runtimes reserve other codes.
    let config = load_config(
        location,
        Overrides {
            listen,
            ..Overrides::default()
        },
    )
    .map_err(|e| match e {
        Failure::Usage(m) => Failure::Runtime(m),
        other => other,
    })?;
    let addr = probe_address(config.listen);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?;
    let status = runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(5), probe(addr, &config)).await
        })
        .map_err(|_| Failure::runtime(format!("{addr}: no answer within 5 s")))?
        .map_err(|e| Failure::runtime(format!("{addr}: {e}")))?;
    if status == 200 {
        println!("live ({addr})");
        Ok(())
    } else {
        Err(Failure::runtime(format!("{addr}: answered {status}")))
    }
}

/// The configured address, with an unspecified IP replaced by loopback.
fn probe_address(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

async fn probe(addr: SocketAddr, config: &Config) -> Result<u16, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let Some(tls) = &config.tls else {
        return exchange(tcp).await;
    };
    let cert_path: PathBuf = match &tls.cert {
        CertSource::SelfSigned { dir, .. } => dir.join("cert.pem"),
        CertSource::Pem { cert, .. } => cert.clone(),
    };
    let served = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?
        .next()
        .ok_or_else(|| format!("{}: no certificate", cert_path.display()))?
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { served, provider }))
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    exchange(stream).await
}

/// Sends the GET and reads the status code from the status line.
async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> Result<u16, String> {
    stream
        .write_all(REQUEST)
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < 12 {
        match stream.read(&mut head[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    status_code(&head[..filled]).ok_or_else(|| "not an HTTP answer".to_owned())
}

fn status_code(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head.get(..12)?).ok()?;
    let rest = line.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

/// Accepts exactly the certificate this configuration serves, and checks
/// the handshake signature with it as usual.
#[derive(Debug)]
struct Pinned {
    served: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.served.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the certificate this configuration serves".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 Service"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert_eq!(status_code(b"SSH-2.0-OpenSSH_9"), None);
    }

    #[test]
    fn unspecified_addresses_probe_loopback() {
        let a = probe_address("0.0.0.0:8443".parse().unwrap());
        assert_eq!(a, "127.0.0.1:8443".parse().unwrap());
        let a = probe_address("[::]:8443".parse().unwrap());
        assert_eq!(a, "[::1]:8443".parse().unwrap());
        let a = probe_address("10.0.0.5:8443".parse().unwrap());
        assert_eq!(a, "10.0.0.5:8443".parse().unwrap());
    }
}
