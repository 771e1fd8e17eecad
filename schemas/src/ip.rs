//! IP addresses as they travel (network-order bytes in protobuf) and as the lake stores
//! them (text, so that DuckDB, Spark and pandas read them without help).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Network-order bytes (4 or 16) to an address; `None` for any other length.
pub fn from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// An address to network-order bytes (4 or 16).
pub fn to_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Writes the text form of network-order `bytes` into `out` (cleared first), without
/// allocating when `out` has capacity. Returns false (and leaves `out` empty) when the
/// length is neither 4 nor 16. IPv4-mapped IPv6 addresses are written as IPv6
/// (`::ffff:10.0.0.1`), exactly as the kernel reported them.
pub fn write_text(bytes: &[u8], out: &mut String) -> bool {
    out.clear();
    if let Ok(octets) = <[u8; 4]>::try_from(bytes) {
        // Most flows are IPv4: written digit by digit, without `fmt`'s machinery (which
        // was ~8 % of ingest's decoding thread).
        for (i, octet) in octets.into_iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            if octet >= 100 {
                out.push(char::from(b'0' + octet / 100));
            }
            if octet >= 10 {
                out.push(char::from(b'0' + octet / 10 % 10));
            }
            out.push(char::from(b'0' + octet % 10));
        }
        return true;
    }
    match from_bytes(bytes) {
        Some(ip) => {
            let _ = write!(out, "{ip}");
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6_and_rejects_other_lengths() {
        for text in [
            "10.1.2.3",
            "fd00::1",
            "::ffff:10.0.0.1",
            "2001:db8::8:800:200c:417a",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = String::new();
            assert!(write_text(&to_bytes(ip), &mut out));
            assert_eq!(out.parse::<IpAddr>().unwrap(), ip);
        }
        let mut out = String::from("stale");
        for octets in [
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [9, 10, 99, 100],
            [1, 20, 109, 250],
        ] {
            assert!(write_text(&octets, &mut out));
            assert_eq!(out, Ipv4Addr::from(octets).to_string());
        }
        assert!(!write_text(&[1, 2, 3], &mut out));
        assert!(out.is_empty());
        assert_eq!(from_bytes(&[]), None);
    }
}
