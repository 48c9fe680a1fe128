//! Where peers reach a worker's object store.

/// Where peers reach a worker's object store: the host it names, else the
/// IP the head sees its session come from (else loopback, for a worker in
/// the head's own process).
pub(crate) fn object_address(host: &str, port: u32, peer: &str) -> String {
    if port == 0 {
        return String::new();
    }
    let host = if !host.is_empty() {
        if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() }
    } else {
        let ip = peer.parse::<std::net::SocketAddr>().map(|a| a.ip()).or_else(|_| peer.parse::<std::net::IpAddr>());
        match ip {
            Ok(ip) if ip.is_ipv6() => format!("[{ip}]"),
            Ok(ip) => ip.to_string(),
            Err(_) => "127.0.0.1".to_string(),
        }
    };
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::object_address;

    #[test]
    fn object_addresses_use_the_named_host_else_the_peer_ip() {
        assert_eq!(object_address("", 7000, "10.1.2.3"), "10.1.2.3:7000");
        assert_eq!(object_address("", 7000, "10.1.2.3:5555"), "10.1.2.3:7000");
        assert_eq!(object_address("", 7000, "::1"), "[::1]:7000");
        assert_eq!(object_address("node7.example", 7000, "10.1.2.3"), "node7.example:7000");
        assert_eq!(object_address("fe80::1", 7000, ""), "[fe80::1]:7000");
        assert_eq!(object_address("", 7000, ""), "127.0.0.1:7000", "a worker in the head's process");
        assert_eq!(object_address("", 0, "10.1.2.3"), "", "no store service");
    }
}
