//! The address other machines should use to reach this one.

use std::net::{IpAddr, Ipv4Addr};

/// First IPv4 address, not loopback, of an interface that is not down
/// (virtual interfaces often report an unknown state), if any.
pub fn outward_ipv4() -> Option<Ipv4Addr> {
    let interfaces = if_addrs::get_if_addrs().ok()?;
    interfaces.iter().filter(|i| !i.is_loopback() && i.oper_status != if_addrs::IfOperStatus::Down).find_map(|i| match i.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    })
}
