//! Who a request is charged to: the peer's IP, the client's IP read through trusted proxies
//! only (from one configured header, `X-Forwarded-For` by default), a header such as an API
//! key, or any function of the request. Addresses are canonical (an IPv4-mapped IPv6 address
//! is its IPv4 address), and an IPv6 client is keyed by its /64.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;
use ipnet::IpNet;

/// A key that could not be found for a reason the server's owner must fix (the server gives
/// no peer address): the request is answered `500`, never let through unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyError(pub &'static str);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for KeyError {}

const NO_PEER: KeyError = KeyError(
    "the request carries no peer address: serve with axum's \
     into_make_service_with_connect_info::<SocketAddr>(), or put the peer's SocketAddr in \
     the request's extensions",
);

type Extract = dyn Fn(&Parts) -> Result<Option<String>, KeyError> + Send + Sync;

/// Picks the key a request is limited by.
#[derive(Clone)]
pub struct Key(Arc<Extract>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// The IP address of the connection's peer (see [`ip_key`]): axum's
    /// `ConnectInfo<SocketAddr>` (serve with `into_make_service_with_connect_info::<SocketAddr>()`),
    /// or a `SocketAddr` the server put in the request's extensions. A request without either
    /// is answered `500`: the server is misconfigured. Behind a proxy, every request has the
    /// proxy's address: see [`client_ip`](Self::client_ip).
    pub fn peer_ip() -> Key {
        Key(Arc::new(|parts| {
            let ip = peer(parts).ok_or(NO_PEER)?;
            Ok(Some(ip_key(ip)))
        }))
    }

    /// The client's IP address (see [`ip_key`]) through the `trusted` proxies, read from
    /// `X-Forwarded-For`: see [`ClientIp`].
    pub fn client_ip(trusted: impl IntoIterator<Item = IpNet>) -> Key {
        Key::client(ClientIp::new(trusted))
    }

    /// The client's IP address (see [`ip_key`]) as `client_ip` finds it.
    pub fn client(client_ip: ClientIp) -> Key {
        Key(Arc::new(move |parts| {
            let ip = client_ip.of(parts).ok_or(NO_PEER)?;
            Ok(Some(ip_key(ip)))
        }))
    }

    /// The value of a header (an API key, a tenant id); requests without it are not limited.
    /// A value that is not text is a key too: it is never a way around the limit.
    pub fn header(name: http::HeaderName) -> Key {
        Key::from_fn(move |parts| {
            let value = parts.headers.get(&name)?;
            // Visible ASCII as it is; other text (UTF-8) as it is, which no ASCII value
            // equals; other bytes in hex after a NUL, which no header value holds.
            Some(match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => text.to_string(),
                Err(_) => {
                    let hex: String = value
                        .as_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    format!("\0{hex}")
                }
            })
        })
    }

    /// Any function of the request and its extensions (the authenticated user an earlier
    /// layer put there, say); `None`: the request is not limited.
    pub fn from_fn(f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Key {
        Key(Arc::new(move |parts| Ok(f(parts))))
    }

    pub(crate) fn of(&self, parts: &Parts) -> Result<Option<String>, KeyError> {
        (self.0)(parts)
    }
}

/// The key an address is limited and blocked by: an IPv4 address as it is, an IPv6 address
/// as its /64 (`2001:db8:1:2::/64`), since one subscriber is given a /64 and picks any address
/// in it. The address is made canonical first.
pub fn ip_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        // A prefix of 64 is always valid: the error arm cannot be taken.
        IpAddr::V6(v6) => match ipnet::Ipv6Net::new(v6, 64) {
            Ok(net) => net.trunc().to_string(),
            Err(_) => v6.to_string(),
        },
    }
}

/// The peer's address, from the request's extensions, canonical.
pub fn peer(parts: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip().to_canonical());
    }
    parts
        .extensions
        .get::<SocketAddr>()
        .map(|addr| addr.ip().to_canonical())
}

/// The header a trusted proxy writes the client's address in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A comma-separated list of addresses, each proxy appending its peer: `X-Forwarded-For`
    /// (what nginx, HAProxy, Envoy, Caddy, Traefik and cloud load balancers write), or a header
    /// of the same shape such as `X-Real-IP`.
    List(HeaderName),
    /// RFC 7239 `Forwarded`: the `for=` of each element.
    Forwarded,
}

impl Default for ProxyHeader {
    fn default() -> Self {
        ProxyHeader::List(HeaderName::from_static("x-forwarded-for"))
    }
}

impl FromStr for ProxyHeader {
    type Err = String;

    /// `forwarded` (any case) is RFC 7239's header; any other header name is a list.
    fn from_str(text: &str) -> Result<ProxyHeader, String> {
        if text.eq_ignore_ascii_case("forwarded") {
            return Ok(ProxyHeader::Forwarded);
        }
        HeaderName::from_str(text)
            .map(ProxyHeader::List)
            .map_err(|_| format!("{text:?} is not a header name"))
    }
}

impl std::fmt::Display for ProxyHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyHeader::List(name) => f.write_str(name.as_str()),
            ProxyHeader::Forwarded => f.write_str("forwarded"),
        }
    }
}

/// How the client's address is found: the peer's address, unless the peer is one of the
/// trusted proxies; then the address that proxy wrote last in the configured header, and so
/// on from the right through the chain of trusted proxies. Only one header is read: a proxy
/// passes on whatever other headers its client sent, so a second header would let a client
/// choose its address.
///
/// Each entry is read on its own, so an entry that is not an address (`unknown`, an
/// obfuscated name, bytes that are not text) spoils only itself. If the walk reaches one, a
/// trusted proxy vouched for a client it could not name: the client is the unknown address
/// `0.0.0.0`, shared by all such clients, and never a trusted proxy's own address.
#[derive(Clone, Debug, Default)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: ProxyHeader,
}

/// The address of a client a trusted proxy could not name.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

impl ClientIp {
    /// Trusts these proxies (addresses or networks; IPv4-mapped ones count as IPv4), reading
    /// `X-Forwarded-For`.
    pub fn new(trusted: impl IntoIterator<Item = IpNet>) -> ClientIp {
        ClientIp {
            trusted: trusted.into_iter().map(canonical_net).collect(),
            header: ProxyHeader::default(),
        }
    }

    /// Reads this header instead of `X-Forwarded-For`.
    pub fn header(mut self, header: ProxyHeader) -> ClientIp {
        self.header = header;
        self
    }

    /// The client's address, canonical; `None` if the request carries no peer address.
    pub fn of(&self, parts: &Parts) -> Option<IpAddr> {
        let mut hop = peer(parts)?;
        if !self.is_trusted(hop) {
            return Some(hop);
        }
        let chain = match &self.header {
            ProxyHeader::List(name) => list_entries(parts, name),
            ProxyHeader::Forwarded => forwarded_entries(parts),
        };
        for entry in chain.iter().rev() {
            match entry {
                Some(ip) => {
                    hop = *ip;
                    if !self.is_trusted(hop) {
                        return Some(hop);
                    }
                }
                None => return Some(UNKNOWN_CLIENT),
            }
        }
        Some(hop)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// A network as configured, with an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) made the
/// IPv4 network it is.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(net) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return net.into();
    }
    net
}

/// The entries of every line of a list header, in order, each read on its own.
fn list_entries(parts: &Parts, name: &HeaderName) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    for line in parts.headers.get_all(name) {
        out.extend(line.as_bytes().split(|&b| b == b',').map(node_ip));
    }
    out
}

/// The `for=` of every `Forwarded` element, in order; an element without one is unreadable.
fn forwarded_entries(parts: &Parts) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    for line in parts.headers.get_all(http::header::FORWARDED) {
        for element in line.as_bytes().split(|&b| b == b',') {
            let node = element.split(|&b| b == b';').find_map(|pair| {
                let at = pair.iter().position(|&b| b == b'=')?;
                let (name, value) = pair.split_at(at);
                name.trim_ascii()
                    .eq_ignore_ascii_case(b"for")
                    .then_some(&value[1..])
            });
            out.push(node.and_then(node_ip));
        }
    }
    out
}

/// An address as `Forwarded` or `X-Forwarded-For` write it, canonical: `192.0.2.43`,
/// `"192.0.2.43:47011"`, `"[2001:db8:cafe::17]:4711"`, `2001:db8::1`.
fn node_ip(node: &[u8]) -> Option<IpAddr> {
    let node = std::str::from_utf8(node.trim_ascii()).ok()?;
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    let ip = if let Ok(ip) = node.parse::<IpAddr>() {
        ip
    } else if let Ok(addr) = node.parse::<SocketAddr>() {
        addr.ip()
    } else {
        node.strip_prefix('[')?.split(']').next()?.parse().ok()?
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, headers: &[(&str, &[u8])]) -> Parts {
        let mut request = http::Request::builder();
        for (name, value) in headers {
            request = request.header(*name, http::HeaderValue::from_bytes(value).unwrap());
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

    const XFF: &str = "x-forwarded-for";

    #[test]
    fn the_client_ip_comes_through_trusted_proxies_only() {
        let client = ClientIp::new(nets(&["10.0.0.0/8", "2001:db8:ffff::/48"]));
        let ip =
            |peer, headers: &[(&str, &[u8])]| client.of(&parts(peer, headers)).unwrap().to_string();
        // No proxy: the peer, whatever the headers claim.
        assert_eq!(ip("198.51.100.7", &[(XFF, b"1.2.3.4")]), "198.51.100.7");
        // One trusted proxy: the address it appended.
        assert_eq!(ip("10.0.0.2", &[(XFF, b"203.0.113.9")]), "203.0.113.9");
        // A client sending its own header: the proxy appended the real peer after it.
        assert_eq!(
            ip("10.0.0.2", &[(XFF, b"1.2.3.4, 203.0.113.9")]),
            "203.0.113.9"
        );
        // Two trusted proxies, in two header lines.
        assert_eq!(
            ip(
                "10.0.0.2",
                &[(XFF, b"1.2.3.4, 203.0.113.9"), (XFF, b"10.1.1.1")]
            ),
            "203.0.113.9"
        );
        // A trusted proxy without the header: the proxy itself.
        assert_eq!(ip("10.0.0.2", &[]), "10.0.0.2");
        // Ports, brackets and quotes.
        assert_eq!(
            ip("10.0.0.2", &[(XFF, b"\"[2001:db8:cafe::17]:4711\"")]),
            "2001:db8:cafe::17"
        );
        assert_eq!(ip("10.0.0.2", &[(XFF, b"192.0.2.43:47011")]), "192.0.2.43");
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let trusted = nets(&["10.0.0.0/8"]);
        let forwarded = [
            ("forwarded", &b"for=198.51.100.1"[..]),
            (XFF, b"203.0.113.9"),
        ];
        // X-Forwarded-For by default: a client's Forwarded is passed through by proxies that
        // write X-Forwarded-For, and means nothing.
        let by_default = ClientIp::new(trusted.clone());
        assert_eq!(
            by_default
                .of(&parts("10.0.0.2", &forwarded))
                .unwrap()
                .to_string(),
            "203.0.113.9"
        );
        // Forwarded when configured, with quotes, ports, IPv6 and other parameters.
        let rfc = ClientIp::new(trusted.clone()).header(ProxyHeader::Forwarded);
        let ip =
            |headers: &[(&str, &[u8])]| rfc.of(&parts("10.0.0.2", headers)).unwrap().to_string();
        assert_eq!(ip(&forwarded), "198.51.100.1");
        assert_eq!(
            ip(&[(
                "forwarded",
                br#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#
            )]),
            "2001:db8:cafe::17"
        );
        assert_eq!(
            ip(&[("forwarded", br#"For="192.0.2.43:47011";by=10.0.0.2"#)]),
            "192.0.2.43"
        );
        // Another list header (X-Real-IP).
        let real = ClientIp::new(trusted).header("X-Real-IP".parse().unwrap());
        let headers = [("x-real-ip", &b"192.0.2.8"[..]), (XFF, b"203.0.113.9")];
        assert_eq!(
            real.of(&parts("10.0.0.2", &headers)).unwrap().to_string(),
            "192.0.2.8"
        );
        assert_eq!(
            "Forwarded".parse::<ProxyHeader>(),
            Ok(ProxyHeader::Forwarded)
        );
        assert_eq!(
            "X-Forwarded-For".parse::<ProxyHeader>(),
            Ok(ProxyHeader::default())
        );
        assert!("no header".parse::<ProxyHeader>().is_err());
    }

    #[test]
    fn an_unreadable_entry_never_becomes_a_trusted_proxys_address() {
        let client = ClientIp::new(nets(&["10.0.0.0/8"]));
        let ip =
            |headers: &[(&str, &[u8])]| client.of(&parts("10.0.0.2", headers)).unwrap().to_string();
        // The client's bytes and the proxy's append share one line: the entry the proxy
        // wrote is read on its own.
        assert_eq!(ip(&[(XFF, b"\xff, 203.0.113.9")]), "203.0.113.9");
        assert_eq!(ip(&[(XFF, b"\xff\xfe")]), "0.0.0.0");
        // The walk reaching an entry that is not an address: the unknown client, never the
        // proxy that passed it on.
        assert_eq!(ip(&[(XFF, b"unknown, 10.0.0.3")]), "0.0.0.0");
        assert_eq!(ip(&[(XFF, b"")]), "0.0.0.0");
        let rfc = ClientIp::new(nets(&["10.0.0.0/8"])).header(ProxyHeader::Forwarded);
        let headers = [("forwarded", &b"for=unknown, for=10.0.0.3"[..])];
        assert_eq!(
            rfc.of(&parts("10.0.0.2", &headers)).unwrap(),
            UNKNOWN_CLIENT
        );
        let headers = [("forwarded", &b"for=\"\xff, for=203.0.113.4"[..])];
        assert_eq!(
            rfc.of(&parts("10.0.0.2", &headers)).unwrap().to_string(),
            "203.0.113.4"
        );
    }

    #[test]
    fn addresses_are_canonical_and_ipv6_clients_are_keyed_by_their_64() {
        // A v4 client of a server listening on [::]; a v4-mapped trusted network.
        let client = ClientIp::new(nets(&["::ffff:127.0.0.0/104"]));
        let p = parts("::ffff:127.0.0.1", &[(XFF, b"::ffff:203.0.113.9")]);
        assert_eq!(client.of(&p).unwrap().to_string(), "203.0.113.9");
        assert_eq!(peer(&p).unwrap().to_string(), "127.0.0.1");
        assert_eq!(ip_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1");
        assert_eq!(
            ip_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            ip_key("2001:db8:1:2:bbbb::9".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn headers_and_functions_pick_keys() {
        let with = parts("192.0.2.1", &[("x-api-key", b"k-123")]);
        let header = Key::header(http::HeaderName::from_static("x-api-key"));
        assert_eq!(header.of(&with), Ok(Some("k-123".into())));
        assert_eq!(header.of(&parts("192.0.2.1", &[])), Ok(None));
        // Bytes that are not text are a key too, distinct from any text.
        let bytes = parts("192.0.2.1", &[("x-api-key", b"\xff\xfe")]);
        assert_eq!(header.of(&bytes), Ok(Some("\0fffe".into())));
        let utf8 = parts("192.0.2.1", &[("x-api-key", "é".as_bytes())]);
        assert_eq!(header.of(&utf8), Ok(Some("é".into())));
        assert_eq!(Key::peer_ip().of(&with), Ok(Some("192.0.2.1".into())));
        let none = Key::from_fn(|_| None);
        assert_eq!(none.of(&with), Ok(None));
        // No peer address: an error, not an unlimited request.
        let (bare, ()) = http::Request::new(()).into_parts();
        assert_eq!(Key::peer_ip().of(&bare), Err(NO_PEER));
        assert_eq!(
            Key::client_ip(nets(&["10.0.0.0/8"])).of(&bare),
            Err(NO_PEER)
        );
    }
}
