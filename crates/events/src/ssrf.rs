//! Which destinations a webhook may reach: public unicast addresses only, unless allowlisted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An allowlist entry: an address block in CIDR form (`127.0.0.1/32`, `::1/128`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            if p.is_empty() { max } else { p.parse().map_err(|_| format!("`{s}` has a bad prefix length"))? };
        if prefix > max {
            return Err(format!("`{s}` has a prefix longer than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv6 forms that carry an IPv4 address a packet ends up at are judged as that IPv4 address:
/// IPv4-mapped (`::ffff:10.0.0.1`), IPv4-compatible (`::10.0.0.1`, deprecated but still routed by
/// some stacks) and 6to4 (`2002:0a00:0001::/48` reaches `10.0.0.1` through a relay).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = v6.segments();
    let o = v6.octets();
    // IPv4-translated `::ffff:0:a.b.c.d` (RFC 2765), and NAT64's well-known prefix
    // `64:ff9b::/96`, whose translator reaches exactly the IPv4 address it carries.
    let well_known_nat64 = seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6].iter().all(|&x| x == 0);
    if (seg[..4].iter().all(|&x| x == 0) && seg[4] == 0xffff && seg[5] == 0) || well_known_nat64 {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // IPv4-compatible `::a.b.c.d`; `::` and `::1` are IPv6's own unspecified and loopback.
    if seg[..6].iter().all(|&s| s == 0) && u128::from(v6) > 1 {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// Why an address is refused, or `None` when it is a public unicast address.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.169.254, the cloud metadata address, is in here.
        Some("link-local or cloud metadata")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared address space (carrier-grade NAT)")
    } else if o[0] >= 240 {
        Some("reserved")
    } else if ip.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
        Some("documentation or benchmarking")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignments")
    } else if o[0] == 192 && o[1] == 88 && o[2] == 99 {
        Some("6to4 relay anycast")
    } else {
        None
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        // fd00:ec2::254, AWS's IPv6 metadata address, is unique-local too.
        Some("unique-local")
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        Some("documentation")
    } else if seg[0] == 0x0064 && seg[1] == 0xff9b {
        // NAT64 outside the well-known /96 (judged by its IPv4 above), such as the local-use
        // 64:ff9b:1::/48: which IPv4 address a local translator maps it to is not ours to know.
        Some("NAT64")
    } else if (seg[0] & 0xffc0) == 0xfec0 {
        Some("site-local")
    } else if seg[0] == 0x0100 && seg[1..4].iter().all(|&x| x == 0) {
        Some("discard-only")
    } else if seg[0] == 0 {
        // The rest of ::/8 is reserved; nothing public lives there.
        Some("reserved")
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo (2001::/32) tunnels to a host behind a NAT whose address is obfuscated in the
        // last 32 bits; the packet's real destination cannot be judged from here.
        Some("Teredo tunnel")
    } else {
        None
    }
}

/// The decision for one resolved address: allowlisted addresses pass whatever they are.
pub fn check(ip: IpAddr, allow: &[Cidr]) -> Result<(), String> {
    if allow.iter().any(|c| c.contains(ip)) {
        return Ok(());
    }
    match blocked_reason(ip) {
        Some(why) => Err(format!("{ip} is {why}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_destinations_are_blocked() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:ffff::808:808",
            // IPv4-compatible forms of internal addresses.
            "::127.0.0.1",
            "::10.0.0.1",
            "::169.254.169.254",
            "::0.0.0.2",
            // 6to4 wrapping internal addresses.
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101:1::5",
            // Teredo, whatever it embeds.
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001::1",
            // IPv4-translated and well-known NAT64 forms are judged by the IPv4 they carry.
            "::ffff:0:a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "fec0::1",
            "100::1",
            "::1:2:3:4",
            "192.0.0.8",
            "192.88.99.1",
        ] {
            assert!(blocked_reason(ip(a)).is_some(), "{a} should be blocked");
        }
    }

    #[test]
    fn public_destinations_pass() {
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:2800:220:1:248:1893:25c8:1946",
            "::ffff:8.8.8.8",
            // IPv4-compatible and 6to4 forms of a public address are judged as that address.
            "::8.8.8.8",
            "2002:808:808::1",
            // 2001:db8::/32 is documentation, but 2001:4860:: (outside Teredo's /32) is public.
            "2001:4860:4860::8888",
        ] {
            assert_eq!(blocked_reason(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn allowlist_overrides() {
        let allow: Vec<Cidr> = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        assert!(check(ip("127.0.0.1"), &allow).is_ok());
        assert!(check(ip("::ffff:127.0.0.1"), &allow).is_ok());
        assert!(check(ip("::1"), &allow).is_ok());
        assert!(check(ip("10.0.0.1"), &allow).is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        // An allowlisted IPv4 block also admits the IPv6 forms that carry it.
        assert!(check(ip("::127.0.0.1"), &allow).is_ok());
        assert!(check(ip("2002:7f00:1::1"), &allow).is_ok());
    }

    #[test]
    fn embedded_ipv4_is_named_in_the_reason() {
        assert_eq!(blocked_reason(ip("::10.0.0.1")), Some("private"));
        assert_eq!(blocked_reason(ip("2002:a9fe:a9fe::1")), Some("link-local or cloud metadata"));
        assert_eq!(blocked_reason(ip("2001:0:4136:e378::1")), Some("Teredo tunnel"));
        assert_eq!(blocked_reason(ip("64:ff9b:1::a00:1")), Some("NAT64"));
        assert_eq!(blocked_reason(ip("64:ff9b::a9fe:a9fe")), Some("link-local or cloud metadata"));
        assert_eq!(blocked_reason(ip("64:ff9b::808:808")), None, "well-known NAT64 to a public address");
        assert_eq!(blocked_reason(ip("::ffff:0:a00:1")), Some("private"));
    }
}
