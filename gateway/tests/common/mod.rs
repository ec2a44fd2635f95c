//! What the gateway's tests share: a gateway started in-process on a free port (stopped when
//! dropped), a small HTTP/1.1 client over TCP or TLS that reports exact statuses, headers and
//! bodies, the configuration tests start from, and the samples of `/metrics`.

#![allow(dead_code)]

pub mod load;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ratelimit_gateway::Config;
use ratelimit_testkit::Server;
pub use ratelimit_testkit::http::Reply;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// The admin key of the environment (at least 32 characters).
pub const ADMIN: &str = "test-admin-key-0123456789abcdef0123";

/// A gateway serving in this process.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The CA to trust when it serves HTTPS.
    pub ca: Option<String>,
    task: JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gateway {
    pub async fn start(config: Config) -> Gateway {
        Gateway::start_on(config, "127.0.0.1:0").await
    }

    /// A gateway listening on `addr` (`[::]:0` to serve IPv4 clients as IPv4-mapped IPv6).
    pub async fn start_on(config: Config, addr: &str) -> Gateway {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            ratelimit_gateway::run(&config, listener)
                .await
                .expect("the gateway starts");
        });
        Gateway {
            addr,
            ca: None,
            task,
        }
    }

    /// A client of a gateway served elsewhere.
    pub fn client(addr: SocketAddr) -> Gateway {
        Gateway {
            addr,
            ca: None,
            task: tokio::spawn(async {}),
        }
    }

    /// A request as `ip` (sent through the trusted proxy 127.0.0.1 as X-Forwarded-For).
    pub fn from(&self, ip: &str) -> Call<'_> {
        Call {
            gateway: self,
            headers: vec![("X-Forwarded-For".into(), ip.into())],
            local: None,
        }
    }

    /// A request from the loopback address `ip` (`127.0.0.2`) itself, with no header of the
    /// test's: a peer that is not the trusted proxy when the gateway trusts `127.0.0.1` only.
    pub fn peer(&self, ip: &str) -> Call<'_> {
        Call {
            gateway: self,
            headers: Vec::new(),
            local: Some(ip.parse().unwrap()),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        self.from("192.0.2.1").send(method, path, key, body).await
    }

    /// An admin creates a user; their id and key.
    pub async fn user(&self, name: &str, role: &str) -> (u64, String) {
        let body = format!(r#"{{"username": "{name}", "role": "{role}"}}"#);
        let reply = self.send("POST", "/users", Some(ADMIN), Some(&body)).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        let json = reply.json();
        (
            json["id"].as_u64().unwrap(),
            json["api_key"].as_str().unwrap().to_string(),
        )
    }
}

pub struct Call<'a> {
    gateway: &'a Gateway,
    headers: Vec<(String, String)>,
    /// The address the connection comes from (any of 127.0.0.0/8 on loopback).
    local: Option<IpAddr>,
}

impl Call<'_> {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        for (name, value) in &self.headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(key) = key {
            request.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method != "GET" {
            request.push_str("Content-Type: application/json\r\n");
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        let stream = match self.local {
            None => TcpStream::connect(self.gateway.addr).await.unwrap(),
            Some(ip) => {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(ip, 0)).unwrap();
                socket.connect(self.gateway.addr).await.unwrap()
            }
        };
        match &self.gateway.ca {
            None => exchange(stream, &request).await,
            Some(ca) => {
                let tls = tls_client(ca)
                    .connect("127.0.0.1".try_into().unwrap(), stream)
                    .await
                    .expect("TLS handshake");
                exchange(tls, &request).await
            }
        }
    }
}

/// A TLS client trusting only `ca`.
pub fn tls_client(ca: &str) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin, request: &str) -> Reply {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw));
    // A TLS peer closing without close_notify is an error after the data: keep the data.
    let _ = read.await.expect("a reply within 20 s");
    Reply::parse(&String::from_utf8(raw).unwrap())
}

/// What the gateway's replies carry beyond HTTP: JSON bodies and problem types.
pub trait Body {
    fn json(&self) -> Value;
    fn problem(&self) -> String;
}

impl Body for Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    /// The problem type's last word, after checking the reply is a problem of its status.
    fn problem(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let json = self.json();
        assert_eq!(json["status"], self.status, "{self:?}");
        let kind = json["type"].as_str().unwrap();
        kind.strip_prefix("urn:ratelimit-gateway:problem:")
            .unwrap()
            .to_string()
    }
}

/// The defaults on this server, with the test admin key, a 2 s budget and 127.0.0.1 as a
/// trusted proxy (so a test picks a client IP with X-Forwarded-For).
pub fn config(server: &Server) -> Config {
    let mut config = Config::for_redis(&[server.url("")]);
    config.admin_key = Some(ADMIN.into());
    config.redis_timeout = Duration::from_secs(2);
    config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    config
}

pub fn policy(text: &str) -> ratelimit_client::Policy {
    ratelimit_gateway::domain::parse_policy(text).unwrap()
}

/// The samples of a Prometheus text exposition (`/metrics`): each series as rendered (name
/// and labels) with its value; comments left out.
pub fn samples(body: &str) -> Vec<(&str, f64)> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            (series, value.parse().expect("a sample's value"))
        })
        .collect()
}

/// The value of one series (`name{labels}` as rendered), 0 when it is not there yet.
pub fn sample(body: &str, series: &str) -> f64 {
    samples(body)
        .into_iter()
        .find(|(s, _)| *s == series)
        .map_or(0.0, |(_, value)| value)
}

/// An upstream that answers every request `200` with the request's head as its body, and
/// counts them.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counted = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo(stream, counted.clone()));
            }
        });
        Upstream { addr, hits, task }
    }

    /// How many requests it has answered.
    pub fn served(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Serves one keep-alive connection: each request (no body: the test sends GETs) is answered
/// with its own head.
async fn echo(stream: TcpStream, hits: Arc<AtomicU64>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut head = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if !line.is_empty() {
            head.push_str(&line);
            head.push('\n');
            continue;
        }
        hits.fetch_add(1, Ordering::SeqCst);
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{head}",
            head.len()
        );
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        head.clear();
    }
}
