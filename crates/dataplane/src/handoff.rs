//! Which worker owns a packet, and the lock-free rings that carry packets to their owner.
//!
//! Ownership is a pure function of the packet, so every worker computes the same answer with no shared
//! table: a subscriber (inside source address) belongs to `subscriber_owner(addr)`, and an outside port
//! (or ICMP identifier) to `nat::port_owner(port)`, the worker that allocated it from its own port blocks.
//! Where RSS (or rte_flow) already lands packets on their owner, no handoff happens; on devices that
//! cannot steer (af_packet, memif, a NIC hashing on both addresses), a worker that receives a packet it
//! does not own passes it over a single-producer/single-consumer `MbufRing`, one per ordered pair of
//! workers. A full ring drops the packet and counts it rather than waiting.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use dpdk::MbufRing;
use wire::{icmp_type, ip_proto};

/// The worker that owns an inside address when `workers` workers share the load: the address
/// modulo the worker count. Subscribers are numbered sequentially in practice, so consecutive
/// addresses alternate between workers; and for a power-of-two worker count it is a bit mask of
/// the source address, which a NIC can match with rte_flow (`dpdk::flow::Steering::inside`) so
/// that no handoff is needed at all.
#[inline]
pub fn subscriber_owner(addr: u32, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    // The shard uses the same function to hand a destination NAT backend's own flows over.
    nat::subscriber_owner(addr, workers as u16) as usize
}

/// The worker that owns the outside port an inbound IPv4 packet (`ip`, from its header) is addressed
/// to: the destination port for TCP/UDP, the identifier for echo messages, and for ICMP errors the
/// source port of the quoted packet (which is ours). `None` when the packet carries no such port (or is
/// too short to tell): the receiving worker then handles it, and the NAT core counts the drop reason.
#[inline]
pub fn outside_port_of(ip: &[u8]) -> Option<u16> {
    let ihl = ((*ip.first()? & 0x0f) as usize) * 4;
    // Non-initial fragments carry no L4 header.
    let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
    if frag != 0 || ihl < 20 {
        return None;
    }
    let l4 = ip.get(ihl..)?;
    match *ip.get(9)? {
        ip_proto::TCP | ip_proto::UDP => Some(u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?])),
        ip_proto::ICMP => match *l4.first()? {
            // Replies to our echo requests, and (under endpoint-independent filtering) requests to a
            // subscriber's echo mapping: both carry our identifier.
            icmp_type::ECHO_REPLY | icmp_type::ECHO_REQUEST => {
                Some(u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]))
            }
            icmp_type::DEST_UNREACHABLE
            | icmp_type::TIME_EXCEEDED
            | icmp_type::PARAMETER_PROBLEM
            | icmp_type::SOURCE_QUENCH => {
                // The quoted packet is one we sent: its source port (or echo identifier) is ours.
                let inner = l4.get(8..)?;
                let iihl = ((*inner.first()? & 0x0f) as usize) * 4;
                let il4 = inner.get(iihl..)?;
                match *inner.get(9)? {
                    ip_proto::TCP | ip_proto::UDP => {
                        Some(u16::from_be_bytes([*il4.first()?, *il4.get(1)?]))
                    }
                    ip_proto::ICMP => Some(u16::from_be_bytes([*il4.get(4)?, *il4.get(5)?])),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

/// The inside address that owns an outbound IPv4 packet: its source, except for an ICMP error,
/// which may come from a router on the subscriber's side (a BNG's "fragmentation needed", say) and
/// belongs to the session of the packet it quotes, whose destination is the subscriber. `None` when
/// the packet is too short to tell (the receiving worker handles it; the parser names the reason).
#[inline]
pub fn inside_owner_addr(ip: &[u8]) -> Option<u32> {
    let addr = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let src = addr(ip.get(12..16)?);
    let ihl = ((*ip.first()? & 0x0f) as usize) * 4;
    let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff;
    if *ip.get(9)? != ip_proto::ICMP || frag != 0 || ihl < 20 {
        return Some(src);
    }
    match *ip.get(ihl)? {
        icmp_type::DEST_UNREACHABLE
        | icmp_type::TIME_EXCEEDED
        | icmp_type::PARAMETER_PROBLEM
        | icmp_type::SOURCE_QUENCH => Some(ip.get(ihl + 8 + 16..ihl + 8 + 20).map_or(src, addr)),
        _ => Some(src),
    }
}

/// One worker's ends of the handoff mesh.
pub struct Links {
    /// `to[j]`: ring this worker produces into for worker `j` (`None` for itself).
    pub to: Vec<Option<Arc<MbufRing>>>,
    /// Rings other workers produce into for this worker.
    pub from: Vec<Arc<MbufRing>>,
    /// Workers of the mesh that have stopped and sent their last handoffs (shared by all): once
    /// every one has, what is left in a ring will never be read, and its consumer frees and
    /// counts it.
    pub stopped: Arc<AtomicUsize>,
}

impl Links {
    /// A single worker needs no rings.
    pub fn none() -> Links {
        Links {
            to: vec![None],
            from: Vec::new(),
            stopped: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Build the full mesh for `workers` workers: `workers * (workers - 1)` SPSC rings of `capacity`.
pub fn mesh(workers: usize, capacity: u32) -> dpdk::Result<Vec<Links>> {
    let stopped = Arc::new(AtomicUsize::new(0));
    let mut links: Vec<Links> = (0..workers)
        .map(|_| Links {
            to: (0..workers).map(|_| None).collect(),
            from: Vec::new(),
            stopped: stopped.clone(),
        })
        .collect();
    for i in 0..workers {
        for j in 0..workers {
            if i == j {
                continue;
            }
            // Single producer (worker i) and single consumer (worker j): no atomics contended.
            let ring = Arc::new(MbufRing::new(
                &format!("cgnat_ho_{i}_{j}"),
                capacity,
                true,
                true,
            )?);
            links[i].to[j] = Some(ring.clone());
            links[j].from.push(ring);
        }
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inside_icmp_error_belongs_to_the_subscriber_it_quotes() {
        // From a router on the subscriber side (100.64.0.2), quoting a packet to 100.64.0.11.
        let mut p = vec![0u8; 20 + 8 + 28];
        p[0] = 0x45;
        p[9] = ip_proto::ICMP;
        p[12..16].copy_from_slice(&[100, 64, 0, 2]);
        p[20] = icmp_type::DEST_UNREACHABLE;
        p[28] = 0x45;
        p[28 + 16..28 + 20].copy_from_slice(&[100, 64, 0, 11]);
        assert_eq!(inside_owner_addr(&p), Some(0x6440_000b));
        // Any other packet belongs to its source.
        p[20] = icmp_type::ECHO_REQUEST;
        assert_eq!(inside_owner_addr(&p), Some(0x6440_0002));
        p[9] = ip_proto::UDP;
        assert_eq!(inside_owner_addr(&p), Some(0x6440_0002));
        // A truncated error falls back to the source; a truncated header to nothing.
        p[9] = ip_proto::ICMP;
        p[20] = icmp_type::TIME_EXCEEDED;
        assert_eq!(inside_owner_addr(&p[..40]), Some(0x6440_0002));
        assert_eq!(inside_owner_addr(&p[..10]), None);
    }

    #[test]
    fn power_of_two_ownership_is_the_mask_rte_flow_matches() {
        for a in [0x6440_000bu32, 0x6440_000c, 0x0a00_00ff, u32::MAX] {
            assert_eq!(subscriber_owner(a, 4), (a & 3) as usize);
        }
        for p in [0u16, 63, 64, 1024, 65535] {
            assert_eq!(
                nat::port_owner(p, 4) as usize,
                ((p >> nat::BLOCK_PORTS.trailing_zeros()) & 3) as usize
            );
        }
    }

    #[test]
    fn neighbouring_subscribers_land_on_different_workers() {
        assert_ne!(
            subscriber_owner(0x6440_000b, 2),
            subscriber_owner(0x6440_000c, 2)
        );
    }

    #[test]
    fn subscribers_spread_evenly_and_stably() {
        for workers in [1usize, 2, 3, 4, 8] {
            let mut counts = vec![0u32; workers];
            for a in 0x6440_0000u32..0x6440_4000 {
                let o = subscriber_owner(a, workers);
                assert_eq!(o, subscriber_owner(a, workers));
                counts[o] += 1;
            }
            let expect = 0x4000 / workers as u32;
            for c in counts {
                assert!(
                    c > expect * 9 / 10 && c < expect * 11 / 10,
                    "{workers} workers: {c} vs {expect}"
                );
            }
        }
    }

    fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 20];
        b[0] = 0x45;
        b[9] = proto;
        b.extend_from_slice(l4);
        b
    }

    #[test]
    fn outside_port_for_each_kind() {
        assert_eq!(
            outside_port_of(&ipv4(17, &[0, 53, 0x9c, 0x40, 0, 8, 0, 0])),
            Some(40000)
        );
        assert_eq!(
            outside_port_of(&ipv4(6, &[0, 80, 0x04, 0x00, 0, 0, 0, 0])),
            Some(1024)
        );
        assert_eq!(
            outside_port_of(&ipv4(1, &[0, 0, 0, 0, 0x12, 0x34, 0, 1])),
            Some(0x1234)
        );
        // Echo request from outside to a subscriber's echo mapping: the identifier is ours.
        assert_eq!(
            outside_port_of(&ipv4(1, &[8, 0, 0, 0, 0x12, 0x34, 0, 1])),
            Some(0x1234)
        );
        // Other ICMP queries carry no identifier of ours.
        assert_eq!(
            outside_port_of(&ipv4(1, &[13, 0, 0, 0, 0x12, 0x34, 0, 1])),
            None
        );
        // Port unreachable quoting our UDP datagram from outside port 5000.
        let inner = ipv4(17, &[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&inner);
        assert_eq!(outside_port_of(&ipv4(1, &icmp)), Some(5000));
        // Non-initial fragment, truncated, other protocol.
        let mut frag = ipv4(17, &[0, 53, 0, 1, 0, 8, 0, 0]);
        frag[7] = 8;
        assert_eq!(outside_port_of(&frag), None);
        assert_eq!(outside_port_of(&ipv4(17, &[0, 53])), None);
        assert_eq!(outside_port_of(&ipv4(47, &[0; 8])), None);
        assert_eq!(outside_port_of(&[]), None);
    }
}
