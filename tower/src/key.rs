//! Who a request is charged to: the peer's IP, the client's IP read from `Forwarded` or
//! `X-Forwarded-For` through trusted proxies only, a header such as an API key, or any
//! function of the request. A request without a key is not limited.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::request::Parts;
use ipnet::IpNet;

type Extract = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// Picks the key a request is limited by.
#[derive(Clone)]
pub struct Key(Arc<Extract>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// The IP address of the connection's peer: axum's `ConnectInfo<SocketAddr>` (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`), or a `SocketAddr` the server
    /// put in the request's extensions. Behind a proxy, every request has the proxy's
    /// address: see [`client_ip`](Self::client_ip).
    pub fn peer_ip() -> Key {
        Key::from_fn(|parts| peer(parts).map(|ip| ip.to_string()))
    }

    /// The client's IP address: the peer's, unless the peer is one of the `trusted` proxies;
    /// then the address it forwarded (`Forwarded: for=…`, or else the last `X-Forwarded-For`
    /// entry), and so on through the chain of trusted proxies. An address only an untrusted
    /// hop vouches for is never used: a client cannot pick its own key by sending the header.
    pub fn client_ip(trusted: impl IntoIterator<Item = IpNet>) -> Key {
        let trusted: Vec<IpNet> = trusted.into_iter().collect();
        Key::from_fn(move |parts| client_ip(parts, &trusted).map(|ip| ip.to_string()))
    }

    /// The value of a header (an API key, a tenant id); requests without it are not limited.
    pub fn header(name: http::HeaderName) -> Key {
        Key::from_fn(move |parts| {
            let value = parts.headers.get(&name)?.to_str().ok()?;
            Some(value.to_string())
        })
    }

    /// Any function of the request and its extensions (the authenticated user an earlier
    /// layer put there, say); `None`: the request is not limited.
    pub fn from_fn(f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Key {
        Key(Arc::new(f))
    }

    pub(crate) fn of(&self, parts: &Parts) -> Option<String> {
        (self.0)(parts)
    }
}

/// The peer's address, from the request's extensions.
pub fn peer(parts: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    parts.extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

/// The client's address through the `trusted` proxies (see [`Key::client_ip`]).
pub fn client_ip(parts: &Parts, trusted: &[IpNet]) -> Option<IpAddr> {
    let mut hop = peer(parts)?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&hop) {
        return Some(hop);
    }
    // The chain as the proxies wrote it, client first; each proxy appends its peer.
    let chain = forwarded_for(parts).unwrap_or_else(|| x_forwarded_for(parts));
    for claimed in chain.iter().rev() {
        match claimed {
            // What the last trusted hop says its peer was.
            Some(ip) => {
                hop = *ip;
                if !is_trusted(ip) {
                    return Some(hop);
                }
            }
            // An entry we cannot read (`unknown`, an obfuscated name): the trusted proxy
            // that passed it on is as far as we can see.
            None => return Some(hop),
        }
    }
    Some(hop)
}

/// The `for=` of every `Forwarded` element, in order; `None` if there is no such header.
fn forwarded_for(parts: &Parts) -> Option<Vec<Option<IpAddr>>> {
    let mut out = Vec::new();
    let mut any = false;
    for value in parts.headers.get_all(http::header::FORWARDED) {
        any = true;
        let Ok(value) = value.to_str() else {
            out.push(None);
            continue;
        };
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then_some(value.trim())
            });
            out.push(node.and_then(node_ip));
        }
    }
    any.then_some(out)
}

/// The entries of every `X-Forwarded-For` header, in order.
fn x_forwarded_for(parts: &Parts) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    for value in parts.headers.get_all("x-forwarded-for") {
        match value.to_str() {
            Ok(value) => out.extend(value.split(',').map(|v| node_ip(v.trim()))),
            Err(_) => out.push(None),
        }
    }
    out
}

/// An address as `Forwarded` or `X-Forwarded-For` write it: `192.0.2.43`,
/// `"192.0.2.43:47011"`, `"[2001:db8:cafe::17]:4711"`, `2001:db8::1`.
fn node_ip(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')?.split(']').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder();
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(SocketAddr::new(peer.parse().unwrap(), 40000));
        parts
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_client_ip_comes_through_trusted_proxies_only() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let ip = |peer, headers: &[(&str, &str)]| {
            client_ip(&parts(peer, headers), &trusted).map(|ip| ip.to_string())
        };
        let xff = "x-forwarded-for";
        // No proxy: the peer, whatever the headers claim.
        assert_eq!(
            ip("198.51.100.7", &[(xff, "1.2.3.4")]).unwrap(),
            "198.51.100.7"
        );
        // One trusted proxy: the address it appended.
        assert_eq!(
            ip("10.0.0.2", &[(xff, "203.0.113.9")]).unwrap(),
            "203.0.113.9"
        );
        // A client sending its own header: the proxy appended the real peer after it.
        assert_eq!(
            ip("10.0.0.2", &[(xff, "1.2.3.4, 203.0.113.9")]).unwrap(),
            "203.0.113.9"
        );
        // Two trusted proxies, in two header lines.
        assert_eq!(
            ip(
                "10.0.0.2",
                &[(xff, "1.2.3.4, 203.0.113.9"), (xff, "10.1.1.1")]
            )
            .unwrap(),
            "203.0.113.9"
        );
        // A trusted proxy without the header: the proxy itself.
        assert_eq!(ip("10.0.0.2", &[]).unwrap(), "10.0.0.2");
        // Forwarded wins over X-Forwarded-For, with quotes, ports and IPv6.
        assert_eq!(
            ip(
                "2001:db8:ffff::1",
                &[
                    (
                        "forwarded",
                        r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#
                    ),
                    (xff, "9.9.9.9")
                ]
            )
            .unwrap(),
            "2001:db8:cafe::17"
        );
        assert_eq!(
            ip(
                "10.0.0.2",
                &[("forwarded", r#"For="192.0.2.43:47011";by=10.0.0.2"#)]
            )
            .unwrap(),
            "192.0.2.43"
        );
        // An entry that is not an address stops the walk at the proxy that passed it on.
        assert_eq!(
            ip("10.0.0.2", &[("forwarded", "for=unknown, for=10.0.0.3")]).unwrap(),
            "10.0.0.3"
        );
    }

    #[test]
    fn headers_and_functions_pick_keys() {
        let with = parts("192.0.2.1", &[("x-api-key", "k-123")]);
        let header = Key::header(http::HeaderName::from_static("x-api-key"));
        assert_eq!(header.of(&with).as_deref(), Some("k-123"));
        assert_eq!(header.of(&parts("192.0.2.1", &[])), None);
        assert_eq!(Key::peer_ip().of(&with).as_deref(), Some("192.0.2.1"));
        let none = Key::from_fn(|_| None);
        assert_eq!(none.of(&with), None);
    }
}
