//! Which addresses an upstream may resolve to without being allowed by name: the SSRF
//! boundary of docs/design.md's security rules. Anything that reaches the node itself, its local
//! networks, a cloud metadata service, or a range that is not routed on the internet is
//! refused; an IPv6 address that carries an IPv4 one (mapped, compatible, NAT64, 6to4,
//! Teredo) is judged by every IPv4 address it may lead to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// AWS, GCP, Azure and most clouds serve instance metadata (and credentials) here.
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Azure's WireServer: a public-looking address that serves VM configuration and certificates.
const WIRESERVER_V4: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
/// AWS's IPv6 instance metadata endpoint.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// IPv4 ranges that are not public (IANA's special-purpose registry), as (network, prefix
/// length, why). The first match names the reason, so exact addresses come first.
const V4_RANGES: &[(Ipv4Addr, u32, &str)] = &[
    (METADATA_V4, 32, "cloud metadata"),
    (WIRESERVER_V4, 32, "cloud metadata"),
    (Ipv4Addr::new(0, 0, 0, 0), 8, "unspecified"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared (CGNAT)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "deprecated (6to4 relay anycast)",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

/// IPv6 ranges that are not public, checked after the IPv4-carrying forms; anything else
/// outside `2000::/3`, the only range IANA hands out for global unicast, is refused too.
const V6_RANGES: &[(Ipv6Addr, u32, &str)] = &[
    (METADATA_V6, 128, "cloud metadata"),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        "benchmarking",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "private (unique local)",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "private (site-local)",
    ),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// Global unicast: `2000::/3`.
const GLOBAL_UNICAST: (Ipv6Addr, u32) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// The IPv6 forms that carry an IPv4 address, and where.
#[derive(Debug, Clone, Copy)]
enum Carrier {
    /// `::ffff:a.b.c.d` (RFC 4291): a dual-stack socket connects to the IPv4 address.
    Mapped,
    /// `::ffff:0:a.b.c.d` (RFC 2765, SIIT).
    Translated,
    /// `::a.b.c.d` (RFC 4291, deprecated): automatic tunnels send it to the IPv4 address.
    Compatible,
    /// `64:ff9b::a.b.c.d` (RFC 6052): the well-known NAT64 prefix, always a /96.
    Nat64,
    /// `64:ff9b:1::/48` (RFC 8215): local-use NAT64, with any RFC 6052 prefix length.
    LocalNat64,
    /// `2002:AABB:CCDD::/48` (RFC 3056).
    SixToFour,
    /// `2001:0:SSSS:SSSS:…:~CCCC:~CCCC` (RFC 4380): server, and client obfuscated.
    Teredo,
}

const CARRIERS: &[(Ipv6Addr, u32, Carrier)] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        Carrier::Mapped,
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
        96,
        Carrier::Translated,
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        Carrier::Compatible,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        Carrier::Nat64,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        Carrier::LocalNat64,
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        Carrier::SixToFour,
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        Carrier::Teredo,
    ),
];

/// Why `ip` is not a public address (`"loopback"`, `"cloud metadata"`, ...), or `None` when
/// an upstream may use it without being allowed by name.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(net, len, _)| within(u128::from(bits), u128::from(u32::from(*net)), *len, 32))
        .map(|(_, _, why)| *why)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(carrier) = carrier_of(bits) {
        // What is reached is the IPv4 address inside, whichever reading of it applies.
        if let Some(why) = embedded_v4(carrier, bits).into_iter().find_map(v4_reason) {
            return Some(why);
        }
        return match carrier {
            Carrier::Compatible => Some("deprecated (IPv4-compatible)"),
            _ => None,
        };
    }
    if let Some((_, _, why)) = V6_RANGES
        .iter()
        .find(|(net, len, _)| within(bits, u128::from(*net), *len, 128))
    {
        return Some(why);
    }
    let (unicast, len) = GLOBAL_UNICAST;
    (!within(bits, u128::from(unicast), len, 128)).then_some("reserved (not global unicast)")
}

fn carrier_of(bits: u128) -> Option<Carrier> {
    CARRIERS
        .iter()
        .find(|(net, len, _)| within(bits, u128::from(*net), *len, 128))
        .map(|(_, _, carrier)| *carrier)
}

/// Every IPv4 address `bits` may carry as `carrier`.
fn embedded_v4(carrier: Carrier, bits: u128) -> Vec<Ipv4Addr> {
    let v4 = |value: u128| Ipv4Addr::from(value as u32);
    let last_32 = v4(field(bits, 96, 128));
    match carrier {
        Carrier::Mapped | Carrier::Translated | Carrier::Compatible | Carrier::Nat64 => {
            vec![last_32]
        }
        Carrier::SixToFour => vec![v4(field(bits, 16, 48))],
        Carrier::Teredo => vec![v4(field(bits, 32, 64)), v4(!field(bits, 96, 128))],
        Carrier::LocalNat64 => {
            // RFC 6052 layouts /48, /56, /64: bits 64..72 (the "u" octet) are zero and so is
            // the suffix after the address. Every layout the address fits is a possible
            // reading, the /96 one always.
            let mut readings = Vec::with_capacity(4);
            let u_octet_clear = field(bits, 64, 72) == 0;
            if u_octet_clear && field(bits, 88, 128) == 0 {
                readings.push(v4((field(bits, 48, 64) << 16) | field(bits, 72, 88)));
            }
            if u_octet_clear && field(bits, 96, 128) == 0 {
                readings.push(v4((field(bits, 56, 64) << 24) | field(bits, 72, 96)));
            }
            if u_octet_clear && field(bits, 104, 128) == 0 {
                readings.push(v4(field(bits, 72, 104)));
            }
            readings.push(last_32);
            readings
        }
    }
}

/// Bits `from..to` of a 128-bit address, counted from the most significant.
fn field(bits: u128, from: u32, to: u32) -> u128 {
    let width = to.saturating_sub(from);
    let shifted = bits.checked_shr(128u32.saturating_sub(to)).unwrap_or(0);
    let mask = 1u128
        .checked_shl(width)
        .map_or(u128::MAX, |bit| bit.wrapping_sub(1));
    shifted & mask
}

/// Whether the top `len` of `width` bits of `bits` and `net` agree.
fn within(bits: u128, net: u128, len: u32, width: u32) -> bool {
    let host_bits = width.saturating_sub(len);
    (bits ^ net).checked_shr(host_bits).unwrap_or(0) == 0
}

/// The IPv4 address a host name spells in one of the legacy numeric forms `inet_aton` (and so
/// the system resolver) accepts: one to four parts, each decimal, octal (`0177`) or hex (`0x7f`),
/// the last part filling the remaining bytes (`2130706433`, `0x7f.1`, `127.1`), one trailing
/// dot allowed. Such a "name" is an address in disguise and is judged as one.
pub fn numeric_ipv4(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<u32> = host
        .split('.')
        .map(numeric_part)
        .collect::<Option<Vec<u32>>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|p| *p > 0xff) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if last_bits < 32 && *last >= 1 << last_bits {
        return None;
    }
    let high = leading
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, p)| acc | (p << (24 - 8 * i as u32)));
    Some(Ipv4Addr::from(high | last))
}

fn numeric_part(part: &str) -> Option<u32> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() && radix == 16 {
        return Some(0);
    }
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_host_names_are_read_as_the_addresses_they_spell() {
        for (host, ip) in [
            ("2130706433", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("0x7f.0.0.1", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("10.1", "10.0.0.1"),
            ("169.254.43518", "169.254.169.254"),
            ("127.0.0.1.", "127.0.0.1"),
            ("0x", "0.0.0.0"),
        ] {
            assert_eq!(numeric_ipv4(host), Some(ip.parse().unwrap()), "{host}");
        }
        for host in [
            "registry.test",
            "4294967296",
            "256.0.0.1",
            "1.2.3.4.5",
            "08.0.0.1",
            "1..2",
            "",
            "0xg",
            "99999999999999999999",
        ] {
            assert_eq!(numeric_ipv4(host), None, "{host}");
        }
    }

    fn reason(ip: &str) -> Option<&'static str> {
        non_public_reason(ip.parse().unwrap())
    }

    #[test]
    fn refuses_every_non_public_ipv4_range() {
        let refused = [
            ("127.0.0.1", "loopback"),
            ("127.0.0.10", "loopback"),
            ("127.255.255.255", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("169.254.169.254", "cloud metadata"),
            ("168.63.129.16", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.255", "shared (CGNAT)"),
            ("192.0.0.1", "IETF protocol assignments"),
            ("192.0.0.255", "IETF protocol assignments"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.255", "documentation"),
            ("192.88.99.1", "deprecated (6to4 relay anycast)"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("254.1.2.3", "reserved"),
            ("255.255.255.254", "reserved"),
            ("255.255.255.255", "broadcast"),
        ];
        for (ip, why) in refused {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
    }

    #[test]
    fn refuses_every_non_public_ipv6_range() {
        let refused = [
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fd12:3456::1", "private (unique local)"),
            ("fc00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "private (site-local)"),
            ("feff::1", "private (site-local)"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff:fff::1", "documentation"),
            ("2001:2::1", "benchmarking"),
            ("100::1", "discard-only"),
            ("5f00::1", "reserved (not global unicast)"),
            ("4000::1", "reserved (not global unicast)"),
            ("1::1", "reserved (not global unicast)"),
            ("::1:0:0:1", "reserved (not global unicast)"),
        ];
        for (ip, why) in refused {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
    }

    #[test]
    fn ipv4_smuggled_inside_ipv6_is_judged_as_ipv4() {
        let refused = [
            // IPv4-mapped.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:0.0.0.0", "unspecified"),
            // IPv4-translated (SIIT).
            ("::ffff:0:127.0.0.1", "loopback"),
            // IPv4-compatible: refused even with a public address inside.
            ("::127.0.0.1", "loopback"),
            ("::169.254.169.254", "cloud metadata"),
            ("::192.168.0.1", "private"),
            ("::8.8.8.8", "deprecated (IPv4-compatible)"),
            // Well-known NAT64.
            ("64:ff9b::a01:203", "private"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::169.254.169.254", "cloud metadata"),
            // Local-use NAT64, as a /96 and in the /64, /56 and /48 layouts of RFC 6052.
            ("64:ff9b:1::10.0.0.1", "private"),
            ("64:ff9b:1:abcd::127.0.0.1", "loopback"),
            ("64:ff9b:1:0:7f:0:100:0", "loopback"),
            ("64:ff9b:1:c0:a8:101::", "private"),
            ("64:ff9b:1:a9fe:a9:fe00::", "cloud metadata"),
            // 6to4.
            ("2002:7f00:1::", "loopback"),
            ("2002:a9fe:a9fe::1", "cloud metadata"),
            ("2002:c0a8:101:1::1", "private"),
            ("2002:0a00:0001::", "private"),
            // Teredo: server, then the client (obfuscated: every bit flipped).
            ("2001:0:a00:1::808:808", "private"),
            ("2001:0:808:808::80ff:fffe", "loopback"),
            ("2001:0:808:808:0:0:5601:5601", "cloud metadata"),
        ];
        for (ip, why) in refused {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "192.0.1.255",
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "64:ff9b::808:808",
            "64:ff9b:1::808:808",
            "64:ff9b:1:ffff::8.8.4.4",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "2001:0:808:808::f7f7:f7f7",
        ] {
            assert_eq!(reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn bit_fields_never_shift_out_of_range() {
        let all = u128::MAX;
        assert_eq!(field(all, 0, 128), u128::MAX);
        assert_eq!(field(all, 96, 128), u128::from(u32::MAX));
        assert_eq!(field(all, 128, 128), 0);
        assert!(within(all, 0, 0, 128));
        assert!(!within(all, 0, 128, 128));
        assert!(within(5, 5, 200, 128));
    }
}
