//! Pod IP allocation from a CIDR, with deliberate reuse of freed addresses.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpPoolError {
    #[error("invalid pod CIDR {0:?}")]
    InvalidCidr(String),
    #[error("pod CIDR {0} is exhausted")]
    Exhausted(String),
}

/// Hands out addresses of a CIDR. With reuse on, a released address goes to
/// the next pod that starts: the case that makes attribution by IP alone
/// wrong, which the engine must survive.
#[derive(Debug)]
pub struct IpPool {
    cidr: String,
    v6: bool,
    base: u128,
    size: u128,
    next: u128,
    free: VecDeque<IpAddr>,
    in_use: HashSet<IpAddr>,
    /// Never handed out (see [`Self::reserve`]).
    reserved: HashSet<IpAddr>,
    reuse: bool,
}

impl IpPool {
    /// `cidr` like "10.244.1.0/24" or "fd00:10:244:1::/120". The network
    /// address and the first host (the node's gateway) are never handed out.
    pub fn new(cidr: &str, reuse: bool) -> Result<Self, IpPoolError> {
        let bad = || IpPoolError::InvalidCidr(cidr.to_string());
        let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        let (v6, bits, raw) = match addr {
            IpAddr::V4(a) => (false, 32, u128::from(u32::from(a))),
            IpAddr::V6(a) => (true, 128, u128::from(a)),
        };
        if len > bits || bits - len < 2 || bits - len > 64 {
            return Err(bad());
        }
        let host_bits = bits - len;
        let base = raw & !((1u128 << host_bits) - 1);
        // IPv4 also loses its broadcast address.
        let size = (1u128 << host_bits) - if v6 { 0 } else { 1 };
        Ok(Self {
            cidr: cidr.to_string(),
            v6,
            base,
            size,
            next: 2,
            free: VecDeque::new(),
            in_use: HashSet::new(),
            reserved: HashSet::new(),
            reuse,
        })
    }

    pub fn is_ipv6(&self) -> bool {
        self.v6
    }

    fn addr(&self, offset: u128) -> IpAddr {
        let raw = self.base + offset;
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(raw))
        } else {
            IpAddr::V4(Ipv4Addr::from(raw as u32))
        }
    }

    /// The next address: a freed one first when reuse is on, else a never
    /// used one while any remain.
    pub fn allocate(&mut self) -> Result<IpAddr, IpPoolError> {
        loop {
            let ip = if self.reuse && !self.free.is_empty() {
                self.free.pop_front()
            } else if self.next < self.size {
                self.next += 1;
                Some(self.addr(self.next - 1))
            } else {
                self.free.pop_front()
            }
            .ok_or_else(|| IpPoolError::Exhausted(self.cidr.clone()))?;
            if self.reserved.contains(&ip) || self.in_use.contains(&ip) {
                continue;
            }
            self.in_use.insert(ip);
            return Ok(ip);
        }
    }

    /// Takes `ip` out of the pool for good (an address something other than
    /// a Deployment's pod holds). False when it is already in use.
    pub fn reserve(&mut self, ip: IpAddr) -> bool {
        self.free.retain(|f| *f != ip);
        self.reserved.insert(ip)
    }

    pub fn release(&mut self, ip: IpAddr) {
        if self.in_use.remove(&ip) {
            self.free.push_back(ip);
        }
    }

    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_skips_network_gateway_and_broadcast() {
        let mut p = IpPool::new("10.1.2.0/30", false).unwrap();
        assert_eq!(p.allocate().unwrap(), "10.1.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            p.allocate(),
            Err(IpPoolError::Exhausted("10.1.2.0/30".into()))
        );
    }

    #[test]
    fn reuse_hands_a_freed_address_to_the_next_pod() {
        let mut p = IpPool::new("fd00::/120", true).unwrap();
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_eq!(a, "fd00::2".parse::<IpAddr>().unwrap());
        p.release(a);
        assert_eq!(p.allocate().unwrap(), a);
        assert_ne!(p.allocate().unwrap(), b);
    }

    #[test]
    fn reserved_addresses_are_never_handed_out() {
        let mut p = IpPool::new("10.1.2.0/29", false).unwrap();
        assert!(p.reserve("10.1.2.3".parse().unwrap()));
        assert!(!p.reserve("10.1.2.3".parse().unwrap()));
        let got: Vec<IpAddr> = (0..4).map(|_| p.allocate().unwrap()).collect();
        assert!(!got.contains(&"10.1.2.3".parse().unwrap()));
        assert!(p.allocate().is_err());
    }

    #[test]
    fn without_reuse_fresh_addresses_come_first() {
        let mut p = IpPool::new("10.0.0.0/24", false).unwrap();
        let a = p.allocate().unwrap();
        p.release(a);
        assert_ne!(p.allocate().unwrap(), a);
        assert!(IpPool::new("10.0.0.0", false).is_err());
        assert!(IpPool::new("10.0.0.0/31", false).is_err());
    }
}
