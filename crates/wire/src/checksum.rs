//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are carried as `u32` "partial sums": the one's-complement total of 16-bit big-endian words,
//! not yet folded to 16 bits and not complemented. Partial sums of separate pieces can be added
//! together (a pseudo-header, a header, a payload) as long as every piece except the last has even
//! length, because an odd piece would shift the byte alignment of the next one. [`finish`] turns the
//! total into the value that goes in a checksum field.
//!
//! A buffer whose checksum field is correct sums (with the field included) to `0xffff`, so
//! `finish(sum(buf)) == 0` is the verification test.
//!
//! # NAT rewriting
//!
//! Changing an address or port does not require summing the packet again: RFC 1624 eqn. 3,
//! `HC' = ~(~HC + ~m + m')`, updates a checksum `HC` for a 16-bit field going from `m` to `m'`.
//! [`adjust16`], [`adjust32`] and [`adjust_addr`] implement it. Unlike the older RFC 1141 form they
//! never produce `0xffff` ("negative zero") for a non-zero packet, so the result is bit-identical to
//! a full recomputation.
//!
//! An address also appears in the TCP/UDP pseudo-header, so rewriting the IPv4 source address means
//! adjusting both the IPv4 header checksum and the TCP/UDP checksum with the same old/new pair.
//!
//! **UDP special case.** A UDP checksum field of `0` means "no checksum" (RFC 768), and a computed
//! checksum of `0` is transmitted as `0xffff`. The adjust helpers are pure arithmetic and know
//! nothing of this, so callers must:
//! - skip the adjustment entirely when the stored UDP checksum is `0` (leave it absent);
//! - store `0xffff` when an adjustment of a UDP checksum yields `0`.
//!
//! TCP and ICMP have no such rule; a checksum of `0` is stored as is.

use std::net::Ipv4Addr;

/// One's-complement sum of `data` as big-endian 16-bit words.
///
/// An odd final byte is summed as if followed by a zero byte (RFC 1071). The result is reduced
/// to at most `0xffff` so that tens of thousands of partial sums can be added in a `u32` without
/// overflow; it still needs [`fold`] or [`finish`] after such additions.
///
/// Eight bytes are added per step into a 64-bit accumulator with end-around carry
/// (2^64 ≡ 1 mod 0xffff, so the carry is simply added back), which is exact for any length.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        acc = add_carry(acc, u64::from_be_bytes(word));
    }
    // The tail is summed as if zero-padded to a full word, which keeps its 16-bit alignment (it
    // starts at a multiple of 8) and places an odd last byte in the high half of its 16-bit word, as
    // RFC 1071 requires. It is read in fixed-size pieces rather than copied into a padded buffer:
    // a variable-length copy is a call to memcpy and a store-forwarding stall on every IPv4 header
    // (20 bytes = two words and a 4-byte tail) the data path verifies.
    acc = add_carry(acc, tail_word(chunks.remainder()));

    // 2^32 ≡ 2^16 ≡ 1 (mod 0xffff): folding halves preserves the one's-complement value.
    acc = (acc >> 32) + (acc & 0xffff_ffff);
    while acc > 0xffff {
        acc = (acc >> 16) + (acc & 0xffff);
    }
    acc as u32
}

/// Whether 20 bytes (an IPv4 header without options, checksum field included) sum to all ones,
/// i.e. their checksum verifies. The same answer as `checksum(h) == 0`, in about a third of the
/// instructions: five 4-byte loads in native byte order, which the one's-complement sum allows
/// (RFC 1071 section 2 (B): swapping the bytes of every word swaps the bytes of the sum, and all
/// ones is its own swap).
#[inline]
pub fn verify20(h: &[u8; 20]) -> bool {
    let word = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    // Five 32-bit words: the sum fits in 35 bits.
    let mut acc = word(0) + word(4) + word(8) + word(12) + word(16);
    acc = (acc >> 32) + (acc & 0xffff_ffff);
    acc = (acc >> 16) + (acc & 0xffff);
    acc = (acc >> 16) + (acc & 0xffff);
    acc == 0xffff
}

/// The up to 7 bytes of `rest` as the high bytes of a big-endian word (the rest zero).
#[inline]
fn tail_word(rest: &[u8]) -> u64 {
    let mut word = 0u64;
    let mut at = 0usize;
    if let Some(four) = rest.first_chunk::<4>() {
        word |= u64::from(u32::from_be_bytes(*four)) << 32;
        at = 4;
    }
    if let Some(two) = rest.get(at..).and_then(|r| r.first_chunk::<2>()) {
        word |= u64::from(u16::from_be_bytes(*two)) << (48 - 8 * at);
        at += 2;
    }
    if let Some(&one) = rest.get(at) {
        word |= u64::from(one) << (56 - 8 * at);
    }
    word
}

#[inline]
fn add_carry(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    // s < b when it wrapped, so adding the carry back cannot overflow again.
    s + u64::from(carry)
}

/// Folds a partial sum to 16 bits with end-around carry (not complemented).
#[inline]
pub fn fold(sum: u32) -> u16 {
    // Two rounds suffice: after the first the value is at most 0x1fffe.
    let s = (sum >> 16) + (sum & 0xffff);
    let s = (s >> 16) + (s & 0xffff);
    s as u16
}

/// Folds and complements a partial sum: the value to store in a checksum field.
#[inline]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// The Internet checksum of `data`, ready to store.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data))
}

/// Partial sum of the IPv4 pseudo-header used by TCP and UDP checksums (RFC 793, RFC 768):
///
/// ```text
/// +--------+--------+--------+--------+
/// |           Source Address          |
/// +--------+--------+--------+--------+
/// |         Destination Address       |
/// +--------+--------+--------+--------+
/// |  zero  |  PTCL  |    TCP Length   |
/// +--------+--------+--------+--------+
/// ```
///
/// `length` is the length of the TCP segment or UDP datagram, header included.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u32 {
    let s = u32::from(src);
    let d = u32::from(dst);
    (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + u32::from(protocol) + u32::from(length)
}

/// Incremental update of `checksum` for a 16-bit field changing from `old` to `new`
/// (RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`). See the module docs for UDP.
#[inline]
pub fn adjust16(checksum: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    !fold(s)
}

/// Incremental update of `checksum` for a 32-bit field (two adjacent 16-bit words, e.g. an IPv4
/// address or a TCP sequence number) changing from `old` to `new`. See the module docs for UDP.
#[inline]
pub fn adjust32(checksum: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!checksum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    !fold(s)
}

/// Incremental update of `checksum` for an IPv4 address changing from `old` to `new`: used for the
/// IPv4 header checksum and, through the pseudo-header, for the TCP/UDP checksum.
#[inline]
pub fn adjust_addr(checksum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    adjust32(checksum, u32::from(old), u32::from(new))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Small deterministic PRNG (xorshift64*) so the property tests are reproducible.
    pub(crate) struct XorShift(u64);

    impl XorShift {
        pub(crate) fn new(seed: u64) -> Self {
            XorShift(seed | 1)
        }
        pub(crate) fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(crate) fn next_u16(&mut self) -> u16 {
            (self.next_u64() >> 48) as u16
        }
        pub(crate) fn next_u32(&mut self) -> u32 {
            (self.next_u64() >> 32) as u32
        }
    }

    #[test]
    fn verify20_agrees_with_the_checksum_on_valid_and_damaged_headers() {
        let mut rng = XorShift::new(0x20_2012);
        let mut valid = 0;
        for round in 0..200_000u32 {
            let mut h = [0u8; 20];
            for b in h.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            h[0] = 0x45;
            // Half the headers get a correct checksum, some of those then one flipped bit; the
            // rest (and headers of all ones or all zeros past the first byte, the fold's edge
            // cases) are verified as they are.
            match round % 4 {
                0 | 1 => {
                    h[10] = 0;
                    h[11] = 0;
                    let c = reference_checksum(&h);
                    h[10..12].copy_from_slice(&c.to_be_bytes());
                    if round % 4 == 1 {
                        let bit = (rng.next_u64() % 160) as usize;
                        h[bit / 8] ^= 1 << (bit % 8);
                    }
                }
                2 if round % 1000 == 2 => h[1..].fill(if round % 2000 == 2 { 0xff } else { 0 }),
                _ => {}
            }
            let expected = reference_checksum(&h) == 0;
            assert_eq!(verify20(&h), expected, "{h:02x?}");
            valid += usize::from(expected);
        }
        // Every round with round % 4 == 0 is valid; a flipped bit never is.
        assert!(valid >= 50_000, "only {valid} valid headers were tried");
    }

    /// Textbook RFC 1071 loop, 16 bits at a time, as an oracle for the fast `sum`.
    fn reference_checksum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            acc += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
            i += 2;
        }
        if i < data.len() {
            acc += u32::from(data[i]) << 8;
        }
        while acc > 0xffff {
            acc = (acc >> 16) + (acc & 0xffff);
        }
        !(acc as u16)
    }

    fn put16(buf: &mut [u8], word: usize, v: u16) {
        buf[word * 2..word * 2 + 2].copy_from_slice(&v.to_be_bytes());
    }

    fn get16(buf: &[u8], word: usize) -> u16 {
        u16::from_be_bytes([buf[word * 2], buf[word * 2 + 1]])
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: these bytes sum to 0x2ddf0, which folds to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn fold_and_finish_edges() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_ffff), 1);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(finish(0xffff), 0);
        assert_eq!(finish(0), 0xffff);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn fast_sum_matches_reference_for_all_lengths_and_alignments() {
        let mut rng = XorShift::new(0x5eed);
        let mut buf = [0u8; 300];
        for b in buf.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        for start in 0..4 {
            for len in 0..(buf.len() - start) {
                let data = &buf[start..start + len];
                assert_eq!(
                    checksum(data),
                    reference_checksum(data),
                    "start {start} len {len}"
                );
            }
        }
        // All-ones data makes every addition carry: exercises the end-around carry path.
        let ones = [0xffu8; 1001];
        assert_eq!(checksum(&ones), reference_checksum(&ones));
        assert!(sum(&ones) <= 0xffff);
    }

    #[test]
    fn partial_sums_compose() {
        let mut rng = XorShift::new(7);
        let mut buf = [0u8; 97];
        for b in buf.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        for split in (0..buf.len()).step_by(2) {
            let (a, b) = buf.split_at(split);
            assert_eq!(finish(sum(a) + sum(b)), checksum(&buf));
        }
    }

    #[test]
    fn checksum_field_verifies() {
        let mut rng = XorShift::new(99);
        for len in (4..64).step_by(2) {
            let mut buf = vec![0u8; len];
            for b in buf.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            put16(&mut buf, 1, 0);
            let c = checksum(&buf);
            put16(&mut buf, 1, c);
            assert_eq!(
                checksum(&buf),
                0,
                "a correct checksum makes the total 0xffff"
            );
        }
    }

    #[test]
    fn pseudo_header_matches_bytes() {
        let src = Ipv4Addr::new(10, 99, 0, 1);
        let dst = Ipv4Addr::new(203, 0, 113, 200);
        let bytes = [10, 99, 0, 1, 203, 0, 113, 200, 0, 17, 0x01, 0x2c];
        assert_eq!(fold(pseudo_header_v4(src, dst, 17, 300)), fold(sum(&bytes)));
    }

    #[test]
    fn rfc1624_section4_example() {
        // RFC 1624 section 4: HC = 0xdd2f, a field goes from 0x5555 to 0x3285. The correct new
        // checksum is 0x0000; RFC 1141's formula gives 0xffff here.
        assert_eq!(adjust16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    /// Random 20-byte headers with a checksum at word 5: the incremental update of each field
    /// change must equal recomputing the checksum from scratch.
    #[test]
    fn adjust16_equals_full_recompute() {
        let mut rng = XorShift::new(0xc0ffee);
        let specials = [0x0000, 0xffff, 0x0001, 0xfffe, 0x8000, 0x7fff];
        for i in 0..20_000 {
            let mut hdr = [0u8; 20];
            for w in 0..10 {
                put16(&mut hdr, w, rng.next_u16());
            }
            // Keep a non-zero word so the packet is never all zero: RFC 1624 eqn. 3 and a full
            // recomputation only disagree for an all-zero packet, which IPv4 cannot produce.
            put16(&mut hdr, 0, 0x4500);
            put16(&mut hdr, 5, 0);
            // Any word but 0 (kept non-zero) and 5 (the checksum).
            let field = 1 + (i % 8);
            let field = if field >= 5 { field + 1 } else { field };
            if i % 4 == 0 {
                put16(&mut hdr, field, specials[(i / 4) % specials.len()]);
            }
            let hc = checksum(&hdr);
            let old = get16(&hdr, field);
            let new = if i % 3 == 0 {
                specials[(i / 3) % specials.len()]
            } else {
                rng.next_u16()
            };
            put16(&mut hdr, field, new);
            assert_eq!(
                adjust16(hc, old, new),
                checksum(&hdr),
                "old {old:#x} new {new:#x}"
            );
        }
    }

    /// RFC 1624's edge cases: a checksum of 0x0000 before or after the change.
    #[test]
    fn adjust16_zero_checksum_edges() {
        let mut rng = XorShift::new(1624);
        for _ in 0..5_000 {
            let mut hdr = [0u8; 20];
            for w in 0..10 {
                put16(&mut hdr, w, rng.next_u16());
            }
            put16(&mut hdr, 0, 0x4500);
            put16(&mut hdr, 5, 0);
            // Choose word 9 so that the data sums to 0xffff, i.e. the checksum is 0x0000.
            put16(&mut hdr, 9, 0);
            let fill = !fold(sum(&hdr));
            put16(&mut hdr, 9, fill);
            assert_eq!(checksum(&hdr), 0x0000);

            // From a zero checksum to anything.
            let old = get16(&hdr, 3);
            let new = rng.next_u16();
            put16(&mut hdr, 3, new);
            assert_eq!(adjust16(0x0000, old, new), checksum(&hdr));

            // From anything back to a zero checksum.
            let hc = checksum(&hdr);
            put16(&mut hdr, 3, old);
            assert_eq!(adjust16(hc, new, old), 0x0000);

            // Writing 0x0000 over 0xffff (and back) is the same value in one's complement.
            put16(&mut hdr, 4, 0xffff);
            let hc = checksum(&hdr);
            put16(&mut hdr, 4, 0x0000);
            assert_eq!(adjust16(hc, 0xffff, 0x0000), checksum(&hdr));
            assert_eq!(adjust16(checksum(&hdr), 0x0000, 0xffff), hc);
        }
    }

    #[test]
    fn adjust32_and_adjust_addr_equal_full_recompute() {
        let mut rng = XorShift::new(0xadd7);
        for i in 0..20_000 {
            let mut hdr = [0u8; 20];
            for w in 0..10 {
                put16(&mut hdr, w, rng.next_u16());
            }
            put16(&mut hdr, 0, 0x4500);
            put16(&mut hdr, 5, 0);
            let at = if i % 2 == 0 { 12 } else { 16 };
            let old = u32::from_be_bytes(hdr[at..at + 4].try_into().unwrap());
            let new = match i % 5 {
                0 => 0,
                1 => u32::MAX,
                2 => old ^ 0xffff,
                _ => rng.next_u32(),
            };
            let hc = checksum(&hdr);
            hdr[at..at + 4].copy_from_slice(&new.to_be_bytes());
            let want = checksum(&hdr);
            assert_eq!(adjust32(hc, old, new), want);
            assert_eq!(
                adjust_addr(hc, Ipv4Addr::from(old), Ipv4Addr::from(new)),
                want
            );
        }
    }

    #[test]
    fn adjusting_then_reverting_restores_the_checksum() {
        let mut rng = XorShift::new(42);
        for _ in 0..10_000 {
            let hc = rng.next_u16() % 0xffff; // 0xffff only occurs for all-zero data
            let old = rng.next_u32();
            let new = rng.next_u32();
            assert_eq!(adjust32(adjust32(hc, old, new), new, old), hc);
        }
    }
}
