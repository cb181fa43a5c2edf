//! The client address of a request: the connection's peer, or behind trusted proxies the address
//! the outermost trusted proxy saw, from `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// The client's address. With `trusted_hops` = 0 this is `peer`, whatever the headers say. With
/// n > 0, every request is taken to have passed n proxies that each appended the address they
/// saw, so the n-th entry from the right of all `X-Forwarded-For` values together is the address
/// the outermost trusted proxy saw; entries further left were written by the client and are
/// ignored. A request with fewer entries, or an unparseable one in that place, did not come the
/// configured way: it is counted by `peer`.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_hops: u32) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| value.to_str().unwrap_or(""))
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let Some(index) = entries.len().checked_sub(trusted_hops as usize) else {
        return peer;
    };
    parse_entry(entries[index]).unwrap_or(peer)
}

/// `192.0.2.1`, `2001:db8::1`, or either with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`),
/// as some proxies write them.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_static(value));
        }
        headers
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        assert_eq!(client_address(PEER, &headers(&["192.0.2.9"]), 0), PEER);
    }

    #[test]
    fn the_entry_as_many_places_from_the_right_as_there_are_proxies_is_the_client() {
        let spoofed = headers(&["203.0.113.66, 192.0.2.9"]);
        assert_eq!(
            client_address(PEER, &spoofed, 1),
            "192.0.2.9".parse::<IpAddr>().expect("ip")
        );
        // Two header lines are one list, in order.
        let split = headers(&["203.0.113.66", "192.0.2.9, 10.0.0.2"]);
        assert_eq!(
            client_address(PEER, &split, 2),
            "192.0.2.9".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            client_address(PEER, &headers(&["[2001:db8::5]:4711"]), 1),
            "2001:db8::5".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn too_few_or_unparseable_entries_fall_back_to_the_peer() {
        assert_eq!(client_address(PEER, &headers(&["192.0.2.9"]), 2), PEER);
        assert_eq!(client_address(PEER, &HeaderMap::new(), 1), PEER);
        assert_eq!(client_address(PEER, &headers(&["unknown"]), 1), PEER);
    }
}
