//! Zero-copy views over packet bytes for the NAT hot path.
//!
//! Each header type (`EthernetFrame`, `ArpPacket`, `Ipv4Packet`, `TcpPacket`, `UdpPacket`,
//! `Icmpv4Packet`) wraps any buffer `T: AsRef<[u8]>` — an mbuf's data, a `&mut [u8]`, a `Vec<u8>` —
//! and reads or writes fields in place. Nothing is parsed up front, copied or allocated: a getter is
//! a bounds-checked load of the bytes named in that header's private `field` module, and setters
//! (available when `T: AsMut<[u8]>` too) store in network byte order directly into the buffer.
//!
//! Validation happens once, in `new_checked` (or `check_len` after `new_unchecked`): it proves that
//! every fixed field and every length-derived range the getters use lies inside the buffer, so
//! after it succeeds no getter or setter can panic. The returned [`Error`] is a small `Copy` enum so
//! the data plane can use it to index per-reason drop counters.
//!
//! [`checksum`] has the Internet checksum (RFC 1071) and the RFC 1624 incremental updates used when
//! NAT rewrites addresses and ports.
//!
//! Limitations, on purpose:
//! - Ethernet II only; 802.1Q tags are not parsed (the `VLAN` ethertype is exposed so callers can
//!   count and drop or punt such frames).
//! - ARP is Ethernet/IPv4 only; anything else is `Unsupported`.
//! - IPv4 options are exposed as raw bytes; fragments are recognised (`is_fragment`) but not
//!   reassembled. No IPv6.
//! - TCP options are not parsed.
//! - Views do not check checksums on construction; call `verify_checksum` where it matters.
#![forbid(unsafe_code)]

mod arp;
pub mod checksum;
mod ethernet;
mod icmpv4;
mod ipv4;
mod tcp;
mod udp;

pub use arp::{ArpPacket, arp_op};
pub use ethernet::{EthernetAddress, EthernetFrame, ParseEthernetAddressError, ethertype};
pub use icmpv4::{Icmpv4Packet, icmp_type};
pub use ipv4::{Ipv4Packet, ip_proto};
pub use std::net::Ipv4Addr;
pub use tcp::{TcpPacket, tcp_flags};
pub use udp::UdpPacket;

use core::fmt;

/// Why a buffer is not a valid header.
///
/// `Copy` and allocation-free so the data plane can turn it into a drop-counter index on the hot
/// path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The buffer is shorter than the header (or than the header length the packet claims).
    Truncated,
    /// The IP version nibble is not 4.
    BadVersion,
    /// A header-length field is below the protocol minimum (IPv4 IHL < 5, TCP data offset < 5).
    BadHeaderLength,
    /// The IPv4 total length is smaller than the header or larger than the buffer.
    BadTotalLength,
    /// A length field other than IPv4's is inconsistent (UDP length < 8 or past the buffer).
    BadLength,
    /// Well-formed but of a kind this crate does not handle (e.g. non-Ethernet/IPv4 ARP).
    Unsupported,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "truncated packet",
            Error::BadVersion => "bad ip version",
            Error::BadHeaderLength => "bad header length",
            Error::BadTotalLength => "bad ipv4 total length",
            Error::BadLength => "bad length field",
            Error::Unsupported => "unsupported packet",
        })
    }
}

impl std::error::Error for Error {}

/// Result of validating a view.
pub type Result<T> = core::result::Result<T, Error>;

/// Big-endian loads and stores on fixed-size sub-slices.
///
/// Each caller passes a slice taken with one of the `field` ranges, so the length always matches
/// and the array conversion cannot fail; the `unwrap_or` default only exists so there is no
/// panicking path in release code.
pub(crate) mod be {
    #[inline]
    pub fn u16(b: &[u8]) -> u16 {
        u16::from_be_bytes(b.try_into().unwrap_or([0; 2]))
    }

    #[inline]
    pub fn u32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b.try_into().unwrap_or([0; 4]))
    }

    #[inline]
    pub fn set_u16(b: &mut [u8], v: u16) {
        b.copy_from_slice(&v.to_be_bytes());
    }

    #[inline]
    pub fn set_u32(b: &mut [u8], v: u32) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_short_and_lowercase() {
        let all = [
            Error::Truncated,
            Error::BadVersion,
            Error::BadHeaderLength,
            Error::BadTotalLength,
            Error::BadLength,
            Error::Unsupported,
        ];
        for e in all {
            let s = e.to_string();
            assert!(!s.is_empty() && s.len() < 32, "{s:?}");
            assert_eq!(s, s.to_lowercase());
        }
        // Usable as a boxed std error (what anyhow-based binaries do with it).
        let boxed: Box<dyn std::error::Error> = Box::new(Error::Truncated);
        assert_eq!(boxed.to_string(), "truncated packet");
    }

    /// Whatever bytes arrive, `new_checked` either rejects them or yields a view whose every
    /// accessor works (a panic here would take down a worker core).
    #[test]
    fn arbitrary_bytes_never_panic_after_new_checked() {
        let mut rng = checksum::tests::XorShift::new(0xf022);
        let mut buf = [0u8; 80];
        for round in 0..20_000 {
            for b in buf.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            // Bias the first bytes towards plausible headers so the deep paths are reached.
            if round % 2 == 0 {
                buf[0] = 0x45 + (round % 11) as u8;
                buf[2] = 0;
                buf[3] = (rng.next_u64() % 90) as u8;
                buf[12] = (buf[12] & 0x0f) | (((round % 16) as u8) << 4);
                buf[4] = 0;
                buf[5] = (rng.next_u64() % 90) as u8;
            } else if round % 4 == 1 {
                buf[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
            }
            let len = (rng.next_u64() % 81) as usize;
            let data = &mut buf[..len];
            let ip4 = Ipv4Addr::new(192, 0, 2, 1);

            if let Ok(p) = EthernetFrame::new_checked(&*data) {
                assert_eq!(p.payload().len() + 14, len);
                let _ = (p.dst_addr(), p.src_addr(), p.ethertype());
            }
            if let Ok(p) = ArpPacket::new_checked(&*data) {
                let _ = (
                    p.operation(),
                    p.sender_hardware_addr(),
                    p.target_protocol_addr(),
                );
            }
            if let Ok(mut p) = Ipv4Packet::new_checked(&mut *data) {
                assert_eq!(
                    usize::from(p.header_len()) + p.payload().len(),
                    usize::from(p.total_len())
                );
                let _ = (
                    p.options(),
                    p.verify_checksum(),
                    p.is_fragment(),
                    p.src_addr(),
                );
                p.fill_checksum();
                assert!(p.verify_checksum());
                p.payload_mut().fill(0);
            }
            if let Ok(p) = Ipv4Packet::new_checked_header(&*data) {
                assert!(p.payload().len() + usize::from(p.header_len()) <= len);
            }
            if let Ok(mut p) = TcpPacket::new_checked(&mut *data) {
                assert_eq!(usize::from(p.header_len()) + p.payload().len(), len);
                p.fill_checksum(ip4, ip4);
                assert!(p.verify_checksum(ip4, ip4));
            }
            if let Ok(mut p) = UdpPacket::new_checked(&mut *data) {
                assert_eq!(p.payload().len() + 8, usize::from(p.len()));
                p.fill_checksum(ip4, ip4);
                assert!(p.verify_checksum(ip4, ip4));
            }
            if let Ok(mut p) = Icmpv4Packet::new_checked(&mut *data) {
                let _ = (p.is_error(), p.is_query(), p.next_hop_mtu(), p.data());
                p.fill_checksum();
                assert!(p.verify_checksum());
            }
        }
    }
}
