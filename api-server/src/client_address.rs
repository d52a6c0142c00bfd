//! Who the client is, for the rate limit: the TCP peer, or (opted into) the address a trusted
//! proxy in front wrote into a header, and the bucket key that address falls in.
//!
//! Pure functions of the peer address and the headers. Whatever goes wrong in a header (too
//! few entries, an address that does not parse, an obfuscated or `unknown` node) the answer is
//! the peer: a forged or broken header must never pick an address for its sender. A client
//! whose header is unusable then shares the proxy's bucket with every other such client, which
//! is a penalty, never an escape.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU8;

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Where the client's address is read from (`RATE_LIMIT_CLIENT_ADDRESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Source {
    /// The TCP peer: right when clients connect directly, or through an L4 proxy that keeps
    /// the source address (`externalTrafficPolicy: Local`).
    #[default]
    Peer,
    /// `X-Forwarded-For`, the address the outermost of `trusted_hops` proxies appended.
    XForwardedFor,
    /// `X-Real-IP`, set (overwritten) by the one proxy in front (nginx `$remote_addr`).
    XRealIp,
    /// RFC 7239 `Forwarded`, the `for=` of the element the outermost of `trusted_hops`
    /// proxies appended.
    Forwarded,
}

/// How to find the client's address; the default trusts no header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress {
    pub source: Source,
    /// Proxies in front that append to `X-Forwarded-For` / `Forwarded`: the client is the
    /// `trusted_hops`-th entry from the right. Unused by the other sources.
    pub trusted_hops: NonZeroU8,
}

impl Default for ClientAddress {
    fn default() -> Self {
        Self {
            source: Source::Peer,
            trusted_hops: NonZeroU8::MIN,
        }
    }
}

impl ClientAddress {
    /// The client's address: from the configured header when it holds a usable one, else the
    /// peer's.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let hops = usize::from(self.trusted_hops.get());
        match self.source {
            Source::Peer => None,
            Source::XForwardedFor => x_forwarded_for(headers, hops),
            Source::XRealIp => x_real_ip(headers),
            Source::Forwarded => forwarded(headers, hops),
        }
        .unwrap_or(peer)
    }
}

/// The rate-limit bucket an address falls in: an IPv4 address as is (also when written as
/// IPv4-mapped IPv6, as a dual-stack socket reports it), an IPv6 address by its /64, the
/// smallest prefix a site is given, so one host cannot take a fresh bucket per address.
pub fn rate_limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
        },
    }
}

/// The `hops`-th entry from the right, over every `X-Forwarded-For` line in order. Entries
/// left of it are the client's own and are never read, so they cannot make it fail.
fn x_forwarded_for(headers: &HeaderMap, hops: usize) -> Option<IpAddr> {
    let mut seen = 0;
    for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        for entry in line.as_bytes().rsplit(|b| *b == b',') {
            let entry = std::str::from_utf8(entry).ok()?.trim();
            // `a,,b` or a trailing comma: nothing written, nothing counted.
            if entry.is_empty() {
                continue;
            }
            seen += 1;
            if seen == hops {
                return parse_node(entry);
            }
        }
    }
    None
}

/// The one `X-Real-IP`; two of them mean a client's survived the proxy, so neither is used.
fn x_real_ip(headers: &HeaderMap) -> Option<IpAddr> {
    let mut lines = headers.get_all(X_REAL_IP).iter();
    match (lines.next(), lines.next()) {
        (Some(line), None) => parse_node(std::str::from_utf8(line.as_bytes()).ok()?.trim()),
        _ => None,
    }
}

/// The `for=` of the `hops`-th `Forwarded` element from the right. Each line is parsed on its
/// own (a quoted string cannot span lines); a line that does not parse yields nothing.
fn forwarded(headers: &HeaderMap, hops: usize) -> Option<IpAddr> {
    let mut seen = 0;
    for line in headers.get_all(FORWARDED).iter().rev() {
        let line = std::str::from_utf8(line.as_bytes()).ok()?;
        let elements = split_unquoted(line, b',')?;
        for element in elements.into_iter().rev() {
            if element.trim().is_empty() {
                continue;
            }
            seen += 1;
            if seen == hops {
                return forwarded_for(element);
            }
        }
    }
    None
}

/// The node of an element's single `for` parameter (RFC 7239 section 4).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let mut node = None;
    for pair in split_unquoted(element, b';')? {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("for") {
            // A parameter occurs at most once per element.
            if node.is_some() {
                return None;
            }
            node = Some(unquote(value.trim())?);
        }
    }
    parse_node(node?)
}

/// `s` split at `separator` outside quoted strings; `None` when a quote is left open.
fn split_unquoted(s: &str, separator: u8) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == separator && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

/// A token, or a quoted string without escapes (no address needs one).
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => Some(value),
    }
}

/// An address, optionally with a port: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`. Anything else (`unknown`, an obfuscated `_node`, a
/// host name, a zone id) is `None`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, _port) = node.split_once(':')?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "10.0.0.9";

    /// Header lines as (name, value), in order.
    type Headers = Vec<(&'static str, &'static str)>;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn resolve(source: Source, hops: u8, pairs: &[(&str, &str)]) -> String {
        let config = ClientAddress {
            source,
            trusted_hops: NonZeroU8::new(hops).unwrap(),
        };
        config
            .resolve(PEER.parse().unwrap(), &headers(pairs))
            .to_string()
    }

    fn assert_resolves(source: Source, cases: &[(u8, Headers, &str)]) {
        for (hops, pairs, want) in cases {
            assert_eq!(
                resolve(source, *hops, pairs),
                *want,
                "{source:?}, {hops} hops, {pairs:?}"
            );
        }
    }

    fn assert_falls_back(source: Source, cases: &[(u8, Headers)]) {
        for (hops, pairs) in cases {
            assert_resolves(source, &[(*hops, pairs.clone(), PEER)]);
        }
    }

    #[test]
    fn the_peer_source_ignores_every_header() {
        let all = [
            ("x-forwarded-for", "203.0.113.7"),
            ("x-real-ip", "203.0.113.8"),
            ("forwarded", "for=203.0.113.9"),
        ];
        assert_eq!(resolve(Source::Peer, 1, &all), PEER);
        assert_eq!(ClientAddress::default().source, Source::Peer);
    }

    #[test]
    fn x_forwarded_for_takes_the_entry_the_outermost_trusted_proxy_wrote() {
        let xff = |v| vec![("x-forwarded-for", v)];
        let cases: &[(u8, Headers, &str)] = &[
            (1, xff("203.0.113.7"), "203.0.113.7"),
            // What the client wrote itself (left) is skipped.
            (1, xff("1.1.1.1, 203.0.113.7"), "203.0.113.7"),
            (2, xff("1.1.1.1, 203.0.113.7, 10.1.0.1"), "203.0.113.7"),
            (3, xff("1.1.1.1, 203.0.113.7, 10.1.0.1"), "1.1.1.1"),
            // Several lines are one list, in order.
            (
                2,
                vec![
                    ("x-forwarded-for", "1.1.1.1, 203.0.113.7"),
                    ("x-forwarded-for", "10.1.0.1"),
                ],
                "203.0.113.7",
            ),
            // Empty entries count for nothing.
            (1, xff("203.0.113.7, "), "203.0.113.7"),
            (2, xff("203.0.113.7,, 10.1.0.1"), "203.0.113.7"),
            // Ports, brackets and IPv6.
            (1, xff("203.0.113.7:4711"), "203.0.113.7"),
            (1, xff("2001:db8::1"), "2001:db8::1"),
            (1, xff("[2001:db8::1]:4711"), "2001:db8::1"),
            // Garbage left of the trusted entries is never read.
            (1, xff("not an address, 203.0.113.7"), "203.0.113.7"),
        ];
        assert_resolves(Source::XForwardedFor, cases);
    }

    #[test]
    fn x_forwarded_for_falls_back_to_the_peer_when_short_or_malformed() {
        let xff = |v| vec![("x-forwarded-for", v)];
        let cases: &[(u8, Headers)] = &[
            (1, vec![]),
            (1, xff("")),
            (1, xff(" , ")),
            // Fewer entries than trusted proxies: the request did not come through all of
            // them, so even the leftmost entry may be the client's own.
            (2, xff("203.0.113.7")),
            (3, xff("1.1.1.1, 203.0.113.7")),
            (1, xff("unknown")),
            (1, xff("client.example")),
            (1, xff("203.0.113.300")),
            (1, xff("1.1.1.1, fe80::1%eth0")),
            (1, xff("[2001:db8::1")),
            (1, xff("[2001:db8::1]x")),
        ];
        assert_falls_back(Source::XForwardedFor, cases);
    }

    #[test]
    fn x_real_ip_is_used_when_there_is_exactly_one_valid_one() {
        let cases: &[(Headers, &str)] = &[
            (vec![("x-real-ip", "203.0.113.7")], "203.0.113.7"),
            (vec![("x-real-ip", " 2001:db8::7 ")], "2001:db8::7"),
            (vec![], PEER),
            (vec![("x-real-ip", "unknown")], PEER),
            (vec![("x-real-ip", "1.1.1.1, 203.0.113.7")], PEER),
            (
                vec![("x-real-ip", "1.1.1.1"), ("x-real-ip", "203.0.113.7")],
                PEER,
            ),
            // Another header is not read.
            (vec![("x-forwarded-for", "203.0.113.7")], PEER),
        ];
        for (pairs, want) in cases {
            assert_eq!(resolve(Source::XRealIp, 1, pairs), *want, "{pairs:?}");
        }
    }

    #[test]
    fn forwarded_takes_the_for_of_the_element_the_outermost_trusted_proxy_wrote() {
        let fwd = |v| vec![("forwarded", v)];
        let cases: &[(u8, Headers, &str)] = &[
            (1, fwd("for=192.0.2.60"), "192.0.2.60"),
            (
                1,
                fwd("for=192.0.2.60;proto=http;by=203.0.113.43"),
                "192.0.2.60",
            ),
            (1, fwd("proto=https; FOR=192.0.2.60"), "192.0.2.60"),
            (1, fwd("for=\"192.0.2.60:4711\""), "192.0.2.60"),
            (
                1,
                fwd("for=\"[2001:db8:cafe::17]:4711\""),
                "2001:db8:cafe::17",
            ),
            (1, fwd("for=\"[2001:db8:cafe::17]\""), "2001:db8:cafe::17"),
            (1, fwd("for=\"[2001:db8::1]:_hidden\""), "2001:db8::1"),
            (1, fwd("for=1.1.1.1, for=192.0.2.60"), "192.0.2.60"),
            (
                2,
                fwd("for=1.1.1.1, for=192.0.2.60, for=10.1.0.1"),
                "192.0.2.60",
            ),
            (
                2,
                vec![
                    ("forwarded", "for=1.1.1.1, for=192.0.2.60"),
                    ("forwarded", "for=10.1.0.1;proto=https"),
                ],
                "192.0.2.60",
            ),
            // A comma or semicolon inside a quoted string does not split.
            (
                2,
                fwd("for=192.0.2.60;x=\"a,b;c\", for=10.1.0.1"),
                "192.0.2.60",
            ),
        ];
        assert_resolves(Source::Forwarded, cases);
    }

    #[test]
    fn forwarded_falls_back_to_the_peer_for_unknown_obfuscated_or_malformed_nodes() {
        let fwd = |v| vec![("forwarded", v)];
        let cases: &[(u8, Headers)] = &[
            (1, vec![]),
            (1, fwd("for=unknown")),
            (1, fwd("for=_hidden")),
            (1, fwd("for=\"_SEVKISEK\"")),
            (1, fwd("proto=https;by=10.1.0.1")),
            (1, fwd("for=192.0.2.60;for=192.0.2.61")),
            (1, fwd("for=\"192.0.2.60")),
            (1, fwd("for=\"1.2.3.4\\\"\"")),
            (1, fwd("for")),
            (2, fwd("for=192.0.2.60")),
            (1, fwd("for=[2001:db8::1]]")),
            // An unterminated quote in the client's part spoils the whole line: the split
            // into elements is no longer known.
            (1, fwd("for=\"1.1.1.1, for=192.0.2.60")),
        ];
        assert_falls_back(Source::Forwarded, cases);
    }

    #[test]
    fn non_utf8_bytes_in_the_trusted_entry_fall_back_to_the_peer() {
        let mut map = HeaderMap::new();
        map.append(
            X_FORWARDED_FOR,
            http::HeaderValue::from_bytes(b"1.1.1.1, 2\xff3.0.113.7").unwrap(),
        );
        let config = ClientAddress {
            source: Source::XForwardedFor,
            trusted_hops: NonZeroU8::MIN,
        };
        assert_eq!(
            config.resolve(PEER.parse().unwrap(), &map).to_string(),
            PEER
        );
    }

    #[test]
    fn keys_are_ipv4_as_is_and_ipv6_by_its_64() {
        let cases = [
            ("203.0.113.7", "203.0.113.7"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::"),
            ("2001:db8:1:3::1", "2001:db8:1:3::"),
            ("::1", "::"),
        ];
        for (ip, key) in cases {
            assert_eq!(rate_limit_key(ip.parse().unwrap()).to_string(), key, "{ip}");
        }
    }
}
