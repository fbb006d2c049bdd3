//! RTCP (RFC 3550 section 6): the sender reports the host sends each
//! viewer (the NTP and RTP time of one instant, so players can map RTP
//! timestamps to wall-clock time) and the receiver reports viewers send
//! back (loss). Sans-IO; times passed in.

/// Seconds from 1900 (NTP's epoch) to 1970 (Unix's).
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Packet type of a sender report.
pub const PT_SR: u8 = 200;
/// Packet type of a receiver report.
pub const PT_RR: u8 = 201;
/// Packet type of source descriptions.
pub const PT_SDES: u8 = 202;

/// Longest compound packet looked at.
pub const MAX_COMPOUND: usize = 1500;

/// The 64-bit NTP timestamp of `since_unix` (time since the Unix epoch).
pub fn ntp(since_unix: std::time::Duration) -> u64 {
    let secs = since_unix.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// A compound RTCP packet: a sender report of `ssrc` (`ntp` and
/// `rtp_time` name one instant; `packets` and `octets` sent so far) and
/// an SDES with its CNAME, as RFC 3550 requires of every compound packet.
pub fn sender_report(
    ssrc: u32,
    ntp: u64,
    rtp_time: u32,
    packets: u32,
    octets: u32,
    cname: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(28 + 12 + cname.len());
    out.extend_from_slice(&[0x80, PT_SR, 0, 6]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&ntp.to_be_bytes());
    out.extend_from_slice(&rtp_time.to_be_bytes());
    out.extend_from_slice(&packets.to_be_bytes());
    out.extend_from_slice(&octets.to_be_bytes());
    // SDES: one chunk, CNAME item, end item, padded to 32 bits.
    let name = &cname.as_bytes()[..cname.len().min(255)];
    let chunk_len = 4 + 2 + name.len() + 1;
    let padded = chunk_len.div_ceil(4) * 4;
    let words = (4 + padded) / 4 - 1;
    out.extend_from_slice(&[0x81, PT_SDES]);
    out.extend_from_slice(&(words as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.resize(out.len() + (padded - chunk_len) + 1, 0);
    out
}

/// A parsed sender report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport {
    /// Sender's SSRC.
    pub ssrc: u32,
    /// NTP timestamp.
    pub ntp: u64,
    /// RTP timestamp of the same instant.
    pub rtp_time: u32,
    /// Packets sent.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

/// One report block of a receiver (or sender) report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source reported on.
    pub ssrc: u32,
    /// Fraction lost since the last report, /256.
    pub fraction_lost: u8,
    /// Packets lost in all (24-bit signed, clamped at 0).
    pub cumulative_lost: u32,
}

/// What a compound RTCP packet holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compound {
    /// Sender reports.
    pub senders: Vec<SenderReport>,
    /// Report blocks (from receiver and sender reports).
    pub blocks: Vec<ReportBlock>,
}

/// Parses a compound RTCP packet; `None` if it is not RTCP. Unknown
/// packet types are skipped; at most [`MAX_COMPOUND`] bytes are read.
pub fn parse(buf: &[u8]) -> Option<Compound> {
    let mut buf = &buf[..buf.len().min(MAX_COMPOUND)];
    let mut out = Compound::default();
    let mut first = true;
    while buf.len() >= 4 {
        if buf[0] >> 6 != 2 {
            return None;
        }
        let count = usize::from(buf[0] & 0x1f);
        let pt = buf[1];
        let len = (usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 1) * 4;
        let pkt = buf.get(..len)?;
        if first && !(pt == PT_SR || pt == PT_RR) {
            return None;
        }
        first = false;
        let blocks_at = match pt {
            PT_SR => {
                let b = pkt.get(4..28)?;
                let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                out.senders.push(SenderReport {
                    ssrc: u32_at(0),
                    ntp: (u64::from(u32_at(4)) << 32) | u64::from(u32_at(8)),
                    rtp_time: u32_at(12),
                    packets: u32_at(16),
                    octets: u32_at(20),
                });
                Some(28)
            }
            PT_RR => Some(8),
            _ => None,
        };
        if let Some(at) = blocks_at {
            for i in 0..count {
                let Some(b) = pkt.get(at + 24 * i..at + 24 * (i + 1)) else {
                    break;
                };
                let lost =
                    i32::from_be_bytes([if b[5] & 0x80 != 0 { 0xff } else { 0 }, b[5], b[6], b[7]]);
                out.blocks.push(ReportBlock {
                    ssrc: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    fraction_lost: b[4],
                    cumulative_lost: lost.max(0) as u32,
                });
            }
        }
        buf = &buf[len..];
    }
    (!first).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_report_parses_back() {
        let t = ntp(std::time::Duration::new(1_700_000_000, 500_000_000));
        assert_eq!(t >> 32, 1_700_000_000 + NTP_UNIX_OFFSET);
        assert_eq!(t & 0xffff_ffff, 1 << 31);
        let p = sender_report(7, t, 90_000, 10, 1000, "revtun");
        assert_eq!(p.len() % 4, 0);
        let c = parse(&p).expect("rtcp");
        assert_eq!(
            c.senders,
            vec![SenderReport {
                ssrc: 7,
                ntp: t,
                rtp_time: 90_000,
                packets: 10,
                octets: 1000
            }]
        );
        // The SDES length field covers the packet.
        let sdes = &p[28..];
        assert_eq!(
            (usize::from(u16::from_be_bytes([sdes[2], sdes[3]])) + 1) * 4,
            sdes.len()
        );
    }

    #[test]
    fn receiver_reports_and_garbage() {
        let mut rr = vec![0x81, PT_RR, 0, 7];
        rr.extend_from_slice(&1u32.to_be_bytes());
        rr.extend_from_slice(&9u32.to_be_bytes());
        rr.extend_from_slice(&[64, 0, 0, 12]);
        rr.extend_from_slice(&[0u8; 16]);
        let c = parse(&rr).expect("rr");
        assert_eq!(
            c.blocks,
            vec![ReportBlock {
                ssrc: 9,
                fraction_lost: 64,
                cumulative_lost: 12
            }]
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(parse(&rr[..10]), None);
        assert_eq!(parse(&[]), None);
        // A count larger than the blocks present stops at the end.
        let mut short = rr.clone();
        short[0] = 0x85;
        assert_eq!(parse(&short).map(|c| c.blocks.len()), Some(1));
    }
}
