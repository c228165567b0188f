//! The client-address step: who is on the other end, for limits, bans and
//! logs.
//!
//! `X-Forwarded-For` and `Forwarded` are believed only when the socket peer
//! is a configured trusted proxy; then the address is the rightmost entry
//! that is not itself a trusted proxy (entries to its left were written by
//! the client and can be forged). Otherwise it is the socket peer, whatever
//! the headers say.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The socket peer of a connection, set by the listener.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The names of the client certificate the TLS handshake verified (mTLS),
/// set by the listener on every request of the connection.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub std::sync::Arc<[String]>);

/// The client address the pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Resolves the client address for a request from `peer`.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let hops: Vec<&str> = if xff.is_empty() {
        headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(forwarded_for)
            .collect()
    } else {
        xff
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            // An unparsable entry: stop at the last hop we could verify.
            None => break,
        }
    }
    client
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_from_untrusted_peers_are_ignored() {
        let headers = h(&[("x-forwarded-for", "9.9.9.9"), ("forwarded", "for=8.8.8.8")]);
        assert_eq!(
            client_addr(ip("203.0.113.7"), &headers, &[]),
            ip("203.0.113.7")
        );
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_addr(ip("203.0.113.7"), &headers, &trusted),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // The client forged "1.1.1.1"; the proxy appended the real address.
        let headers = h(&[("x-forwarded-for", "1.1.1.1, 198.51.100.4, 10.0.0.2")]);
        assert_eq!(
            client_addr(ip("10.0.0.1"), &headers, &trusted),
            ip("198.51.100.4")
        );
        // Several headers are one list.
        let headers = h(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.4"),
        ]);
        assert_eq!(
            client_addr(ip("10.0.0.1"), &headers, &trusted),
            ip("198.51.100.4")
        );
        // Garbage stops the walk at the last verified hop.
        let headers = h(&[("x-forwarded-for", "198.51.100.4, garbage")]);
        assert_eq!(
            client_addr(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.1")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_addr(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_header_is_understood() {
        let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let headers = h(&[(
            "forwarded",
            r#"for=1.1.1.1, for="[2001:db8::1]:443";proto=https"#,
        )]);
        assert_eq!(
            client_addr(ip("127.0.0.1"), &headers, &trusted),
            ip("2001:db8::1")
        );
        let mapped = ip("::ffff:127.0.0.1");
        let headers = h(&[("x-forwarded-for", "192.0.2.9:5000")]);
        assert_eq!(client_addr(mapped, &headers, &trusted), ip("192.0.2.9"));
    }
}
