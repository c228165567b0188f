//! Fair shares (docs/limits.md, "Fair shares"): no client address and no
//! principal can take more than a bounded share of a listener.
//!
//! - [`AddressSlots`]: at most `server.max_connections_per_address` open
//!   connections per client address. IPv6 clients are counted by /64, the
//!   block one subscriber gets; IPv4-mapped IPv6 addresses count as their
//!   IPv4 address. The trusted proxies' own connections are not capped as
//!   one client: each carries many clients.
//! - [`PrincipalSlots`]: at most `server.max_in_flight_per_principal`
//!   requests in flight per principal, so that one key holding slow requests
//!   cannot take the listener's whole in-flight limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::IpNet;

/// The unit an address is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    /// An IPv4 address.
    V4(u32),
    /// An IPv6 /64.
    V6(u64),
}

impl AddressKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.into()),
                None => Self::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Open connections per address.
#[derive(Debug)]
pub struct AddressSlots {
    cap: usize,
    exempt: Arc<[IpNet]>,
    open: Arc<Mutex<HashMap<AddressKey, usize>>>,
}

/// One open connection of an address; dropping it frees the slot.
#[derive(Debug)]
pub struct AddressSlot {
    key: Option<AddressKey>,
    open: Arc<Mutex<HashMap<AddressKey, usize>>>,
}

impl AddressSlots {
    /// At most `cap` connections per address, except from `exempt` (the
    /// trusted proxies).
    pub fn new(cap: usize, exempt: Arc<[IpNet]>) -> Self {
        Self {
            cap,
            exempt,
            open: Arc::default(),
        }
    }

    /// A slot for a connection from `ip`, or `None` when the address has
    /// its share.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<AddressSlot> {
        // As the client address is judged (client_addr.rs): an IPv4 peer on
        // a dual-stack listener arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return Some(AddressSlot {
                key: None,
                open: Arc::clone(&self.open),
            });
        }
        let key = AddressKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            key: Some(key),
            open: Arc::clone(&self.open),
        })
    }

    /// Connections open from `ip`'s address (for tests and metrics).
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&AddressKey::of(ip)).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

/// Requests in flight per principal.
#[derive(Debug)]
pub struct PrincipalSlots {
    cap: usize,
    open: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

/// One request in flight of a principal; dropping it frees the slot.
#[derive(Debug)]
pub struct PrincipalSlot {
    id: Arc<str>,
    open: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl PrincipalSlots {
    /// At most `cap` requests in flight per principal.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            open: Arc::default(),
        }
    }

    /// A slot for a request of `principal`, or `None` when it has its share.
    pub fn try_acquire(&self, principal: &Arc<str>) -> Option<PrincipalSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(Arc::clone(principal)).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(PrincipalSlot {
            id: Arc::clone(principal),
            open: Arc::clone(&self.open),
        })
    }
}

impl Drop for PrincipalSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_gets_its_share_and_no_more() {
        let slots = AddressSlots::new(2, Arc::from([]));
        let a = slots.try_acquire(ip("10.0.0.1")).unwrap();
        let _b = slots.try_acquire(ip("10.0.0.1")).unwrap();
        assert!(slots.try_acquire(ip("10.0.0.1")).is_none());
        // Another address is not affected.
        assert!(slots.try_acquire(ip("10.0.0.2")).is_some());
        drop(a);
        assert!(slots.try_acquire(ip("10.0.0.1")).is_some());
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let slots = AddressSlots::new(1, Arc::from([]));
        let _a = slots.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(slots.try_acquire(ip("2001:db8:1:2:ffff::9")).is_none());
        assert!(slots.try_acquire(ip("2001:db8:1:3::1")).is_some());
        let _v4 = slots.try_acquire(ip("192.0.2.7")).unwrap();
        assert!(slots.try_acquire(ip("::ffff:192.0.2.7")).is_none());
    }

    #[test]
    fn a_principal_gets_its_share_of_requests() {
        let slots = PrincipalSlots::new(2);
        let alice: Arc<str> = "key:alice".into();
        let a = slots.try_acquire(&alice).unwrap();
        let _b = slots.try_acquire(&alice).unwrap();
        assert!(slots.try_acquire(&alice).is_none());
        assert!(slots.try_acquire(&"key:bob".into()).is_some());
        drop(a);
        assert!(slots.try_acquire(&alice).is_some());
    }

    #[test]
    fn trusted_proxies_are_not_capped_and_slots_are_forgotten() {
        let proxies: Arc<[IpNet]> = Arc::from(["10.1.0.0/16".parse::<IpNet>().unwrap()]);
        let slots = AddressSlots::new(1, proxies);
        let mut held: Vec<_> = (0..5)
            .map(|_| slots.try_acquire(ip("10.1.2.3")).unwrap())
            .collect();
        // The same proxy seen through a dual-stack listener.
        held.extend((0..5).map(|_| slots.try_acquire(ip("::ffff:10.1.2.3")).unwrap()));
        assert_eq!(slots.open(ip("10.1.2.3")), 0);
        drop(held);
        let a = slots.try_acquire(ip("10.0.0.1")).unwrap();
        drop(a);
        assert!(slots.open.lock().unwrap().is_empty());
    }
}
