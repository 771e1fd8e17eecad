//! Address and port ranges, normalised into the disjoint elements nftables sets need.
//!
//! The kernel's concatenated interval sets (pipapo) reject overlapping elements, and two
//! rules often overlap (`10.0.0.0/8 . 443` and `10.1.2.3 . 443-8443`). [`Rectangles`]
//! collects `address range × port range` pairs and returns an equivalent set of disjoint
//! ones: the port axis is cut at every boundary, the address ranges over each piece are
//! merged, and neighbouring pieces with identical address ranges are joined again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// An inclusive range of addresses of one family, as integers (IPv4 in the low 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub v6: bool,
    pub start: u128,
    pub end: u128,
}

impl AddrRange {
    pub fn from_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(n) => Self {
                v6: false,
                start: u32::from(n.network()).into(),
                end: u32::from(n.broadcast()).into(),
            },
            IpNet::V6(n) => Self {
                v6: true,
                start: u128::from(n.network()),
                end: u128::from(n.broadcast()),
            },
        }
    }

    pub fn from_ip(ip: IpAddr) -> Self {
        Self::from_net(&IpNet::from(ip))
    }

    /// Everything of one family.
    pub fn all(v6: bool) -> Self {
        Self {
            v6,
            start: 0,
            end: if v6 { u128::MAX } else { u32::MAX.into() },
        }
    }

    pub fn first(&self) -> IpAddr {
        self.addr(self.start)
    }

    pub fn last(&self) -> IpAddr {
        self.addr(self.end)
    }

    fn addr(&self, value: u128) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(value))
        } else {
            IpAddr::V4(Ipv4Addr::from(value as u32))
        }
    }
}

/// Merges overlapping and adjacent ranges (per family); the result is sorted.
pub fn merge(mut ranges: Vec<AddrRange>) -> Vec<AddrRange> {
    ranges.sort();
    let mut out: Vec<AddrRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match out.last_mut() {
            Some(last) if last.v6 == range.v6 && range.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(range.end);
            }
            _ => out.push(range),
        }
    }
    out
}

/// `ranges` minus `holes` (both any family); the result is merged and sorted.
pub fn subtract(ranges: Vec<AddrRange>, holes: &[AddrRange]) -> Vec<AddrRange> {
    let holes = merge(holes.to_vec());
    let mut out = Vec::new();
    for range in merge(ranges) {
        let mut pieces = vec![range];
        for hole in holes.iter().filter(|h| h.v6 == range.v6) {
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    if hole.end < p.start || hole.start > p.end {
                        return vec![p];
                    }
                    let mut left = Vec::with_capacity(2);
                    if hole.start > p.start {
                        left.push(AddrRange {
                            end: hole.start - 1,
                            ..p
                        });
                    }
                    if hole.end < p.end {
                        left.push(AddrRange {
                            start: hole.end + 1,
                            ..p
                        });
                    }
                    left
                })
                .collect();
        }
        out.extend(pieces);
    }
    out
}

/// An inclusive port range (1-65535; `0..=65535` = every port).
pub type PortSpan = (u16, u16);

/// `address range × port range` pairs of one family, normalised on demand.
#[derive(Clone, Debug, Default)]
pub struct Rectangles {
    items: Vec<(AddrRange, PortSpan)>,
}

impl Rectangles {
    pub fn push(&mut self, addr: AddrRange, ports: PortSpan) {
        self.items.push((addr, ports));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Disjoint rectangles covering exactly the union of what was pushed, sorted by port
    /// then address. A sweep along the port axis: at each cut point the rectangles that
    /// end are removed from, and those that start are added to, the active set, so the
    /// cost is O(n log n) plus the active addresses per piece (not pieces × items).
    pub fn disjoint(&self) -> Vec<(AddrRange, PortSpan)> {
        let mut starts: Vec<(u32, usize)> = self
            .items
            .iter()
            .enumerate()
            .map(|(i, (_, (a, _)))| (u32::from(*a), i))
            .collect();
        let mut ends: Vec<(u32, usize)> = self
            .items
            .iter()
            .enumerate()
            .map(|(i, (_, (_, b)))| (u32::from(*b) + 1, i))
            .collect();
        starts.sort_unstable();
        ends.sort_unstable();
        let mut cuts: Vec<u32> = starts.iter().chain(&ends).map(|(at, _)| *at).collect();
        cuts.sort_unstable();
        cuts.dedup();

        let mut active: std::collections::BTreeMap<AddrRange, usize> =
            std::collections::BTreeMap::new();
        let (mut next_start, mut next_end) = (0, 0);
        let mut pieces: Vec<(PortSpan, Vec<AddrRange>)> = Vec::new();
        for window in cuts.windows(2) {
            let (lo, hi) = (window[0], window[1] - 1);
            while next_end < ends.len() && ends[next_end].0 <= lo {
                let addr = self.items[ends[next_end].1].0;
                if let Some(count) = active.get_mut(&addr) {
                    *count -= 1;
                    if *count == 0 {
                        active.remove(&addr);
                    }
                }
                next_end += 1;
            }
            while next_start < starts.len() && starts[next_start].0 <= lo {
                *active
                    .entry(self.items[starts[next_start].1].0)
                    .or_default() += 1;
                next_start += 1;
            }
            if active.is_empty() {
                continue;
            }
            let addrs = merge(active.keys().copied().collect());
            let span = (lo as u16, hi as u16);
            match pieces.last_mut() {
                // Join with the previous piece when it is adjacent and covers the same addresses.
                Some((prev, prev_addrs)) if u32::from(prev.1) + 1 == lo && *prev_addrs == addrs => {
                    prev.1 = span.1
                }
                _ => pieces.push((span, addrs)),
            }
        }
        pieces
            .into_iter()
            .flat_map(|(span, addrs)| addrs.into_iter().map(move |a| (a, span)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u128, end: u128) -> AddrRange {
        AddrRange {
            v6: false,
            start,
            end,
        }
    }

    #[test]
    fn merges_and_subtracts() {
        assert_eq!(
            merge(vec![r(5, 9), r(1, 3), r(4, 4), r(20, 30)]),
            vec![r(1, 9), r(20, 30)]
        );
        assert_eq!(
            subtract(vec![r(0, 100)], &[r(10, 19), r(50, 200)]),
            vec![r(0, 9), r(20, 49)]
        );
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        let range = AddrRange::from_net(&net);
        assert_eq!(range.first().to_string(), "10.0.0.0");
        assert_eq!(range.last().to_string(), "10.255.255.255");
    }

    #[test]
    fn overlapping_rectangles_become_disjoint() {
        let mut rects = Rectangles::default();
        rects.push(r(0, 255), (443, 443));
        rects.push(r(10, 10), (400, 500));
        let out = rects.disjoint();
        assert_eq!(
            out,
            vec![
                (r(10, 10), (400, 442)),
                (r(0, 255), (443, 443)),
                (r(10, 10), (444, 500))
            ]
        );
    }

    fn covered(rects: &[(AddrRange, PortSpan)], addr: u128, port: u16) -> usize {
        rects
            .iter()
            .filter(|(a, (lo, hi))| a.start <= addr && addr <= a.end && *lo <= port && port <= *hi)
            .count()
    }

    proptest! {
        /// Every point is covered by the output exactly when it was covered by the input,
        /// and never twice.
        #[test]
        fn disjoint_output_covers_the_same_points_once(
            items in prop::collection::vec(((0u128..40, 0u128..10), (0u16..30, 0u16..10)), 1..12),
            probes in prop::collection::vec((0u128..55, 0u16..45), 50),
        ) {
            let mut rects = Rectangles::default();
            for ((start, len), (port, span)) in &items {
                rects.push(r(*start, start + len), (*port, port + span));
            }
            let out = rects.disjoint();
            for (addr, port) in probes {
                let want = items.iter().any(|((s, l), (p, sp))| *s <= addr && addr <= s + l && *p <= port && port <= p + sp);
                let n = covered(&out, addr, port);
                prop_assert!(n <= 1, "point {addr}:{port} covered {n} times");
                prop_assert_eq!(n == 1, want, "point {}:{}", addr, port);
            }
        }
    }
}
