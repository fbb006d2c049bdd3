//! RTP over RTSP interleaved TCP (RFC 2326 section 10.12, RFC 3550) and
//! the video payload inspection the redirectors need (H.264 per RFC 6184,
//! H.265 per RFC 7798): which packets make one access unit, and whether it
//! is a keyframe or carries parameter sets. Sans-IO, no allocation per
//! packet beyond the caller's.

use std::ops::Range;

/// Interleaved frame header: `$`, channel, 16-bit length.
pub const INTERLEAVED_HEADER: usize = 4;
/// Fixed RTP header length.
pub const RTP_HEADER: usize = 12;

/// Input that is not RTP over interleaved TCP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// The byte where `$` should be is something else.
    #[error("interleaved frame does not start with '$'")]
    NotInterleaved,
    /// Not RTP version 2, or a header longer than the packet.
    #[error("malformed RTP packet: {0}")]
    Malformed(&'static str),
}

/// One interleaved frame at the front of `buf`: `(channel, packet range,
/// bytes used)`, or `None` when more bytes are needed.
pub fn interleaved(buf: &[u8]) -> Result<Option<(u8, Range<usize>, usize)>, RtpError> {
    let Some(h) = buf.get(..INTERLEAVED_HEADER) else {
        return if buf.first().is_some_and(|&b| b != b'$') {
            Err(RtpError::NotInterleaved)
        } else {
            Ok(None)
        };
    };
    if h[0] != b'$' {
        return Err(RtpError::NotInterleaved);
    }
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let end = INTERLEAVED_HEADER + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((h[1], INTERLEAVED_HEADER..end, end)))
}

/// The fields of an RTP header the redirectors use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit (last packet of an access unit for video).
    pub marker: bool,
    /// Payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Payload location within the packet.
    pub payload: Range<usize>,
}

/// Parses an RTP packet's header (version 2, CSRCs, extension, padding).
pub fn parse(pkt: &[u8]) -> Result<RtpHeader, RtpError> {
    if pkt.len() < RTP_HEADER {
        return Err(RtpError::Malformed("shorter than the fixed header"));
    }
    if pkt[0] >> 6 != 2 {
        return Err(RtpError::Malformed("not version 2"));
    }
    let csrc = usize::from(pkt[0] & 0x0f);
    let mut start = RTP_HEADER + 4 * csrc;
    if pkt[0] & 0x10 != 0 {
        let ext = pkt
            .get(start..start + 4)
            .ok_or(RtpError::Malformed("extension header"))?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let mut end = pkt.len();
    if pkt[0] & 0x20 != 0 {
        let pad = usize::from(*pkt.last().unwrap_or(&0));
        end = end.checked_sub(pad).ok_or(RtpError::Malformed("padding"))?;
    }
    if start > end {
        return Err(RtpError::Malformed("header longer than the packet"));
    }
    Ok(RtpHeader {
        marker: pkt[1] & 0x80 != 0,
        payload_type: pkt[1] & 0x7f,
        seq: u16::from_be_bytes([pkt[2], pkt[3]]),
        timestamp: u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
        ssrc: u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]),
        payload: start..end,
    })
}

/// Video codecs the redirectors understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 (RFC 6184).
    H264,
    /// H.265 (RFC 7798).
    H265,
}

/// What a payload carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PayloadInfo {
    /// Starts or contains a keyframe NAL (IDR / IRAP).
    pub keyframe: bool,
    /// Contains parameter sets (SPS/PPS, or VPS/SPS/PPS).
    pub params: bool,
}

fn classify(codec: Codec, nal_type: u8, info: &mut PayloadInfo) {
    match codec {
        Codec::H264 => match nal_type {
            5 => info.keyframe = true,
            7 | 8 => info.params = true,
            _ => {}
        },
        Codec::H265 => match nal_type {
            16..=21 => info.keyframe = true,
            32..=34 => info.params = true,
            _ => {}
        },
    }
}

/// Inspects one RTP payload: single NAL units, aggregation packets
/// (STAP-A / AP) and the first fragment of fragmentation units (FU-A / FU).
/// Truncated aggregates are inspected as far as they go.
pub fn inspect(codec: Codec, payload: &[u8]) -> PayloadInfo {
    let mut info = PayloadInfo::default();
    let Some(&b0) = payload.first() else {
        return info;
    };
    let (nal_type, hdr) = match codec {
        Codec::H264 => (b0 & 0x1f, 1),
        Codec::H265 => ((b0 >> 1) & 0x3f, 2),
    };
    let (aggregate, fragment) = match codec {
        Codec::H264 => (24, 28),
        Codec::H265 => (48, 49),
    };
    if nal_type == aggregate {
        let mut rest = payload.get(hdr..).unwrap_or(&[]);
        while rest.len() >= 2 {
            let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let Some(nal) = rest.get(2..2 + n) else { break };
            if let Some(&h) = nal.first() {
                let t = match codec {
                    Codec::H264 => h & 0x1f,
                    Codec::H265 => (h >> 1) & 0x3f,
                };
                classify(codec, t, &mut info);
            }
            rest = &rest[2 + n..];
        }
    } else if nal_type == fragment {
        if let Some(&fu) = payload.get(hdr) {
            let start = fu & 0x80 != 0;
            let t = match codec {
                Codec::H264 => fu & 0x1f,
                Codec::H265 => fu & 0x3f,
            };
            if start {
                classify(codec, t, &mut info);
            }
        }
    } else {
        classify(codec, nal_type, &mut info);
    }
    info
}

/// A complete access unit: the packets (ranges in the caller's buffer, in
/// arrival order, each a whole RTP packet) and what it carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessUnit {
    /// RTP timestamp shared by its packets.
    pub timestamp: u32,
    /// Packet ranges.
    pub packets: Vec<Range<usize>>,
    /// Holds a keyframe.
    pub keyframe: bool,
    /// Holds parameter sets.
    pub params: bool,
    /// A sequence gap was seen inside or before it (loss upstream).
    pub discontinuity: bool,
}

/// Groups RTP packets into access units: a unit ends at the marker bit, or
/// when a packet with a new timestamp arrives.
#[derive(Debug)]
pub struct Assembler {
    codec: Codec,
    cur: Option<AccessUnit>,
    last_seq: Option<u16>,
    /// Most packets one access unit may hold; beyond it the unit is cut
    /// (and flagged) so memory stays bounded.
    pub max_packets: usize,
}

impl Assembler {
    /// An assembler for `codec`.
    pub fn new(codec: Codec) -> Self {
        Assembler {
            codec,
            cur: None,
            last_seq: None,
            max_packets: 4096,
        }
    }

    /// Adds a packet located at `range` of the caller's buffer. Returns the
    /// units completed by it (at most two: the previous one, when the
    /// timestamp changed, and this one, when the marker is set).
    pub fn push(&mut self, pkt: &[u8], range: Range<usize>) -> Result<Vec<AccessUnit>, RtpError> {
        let h = parse(pkt)?;
        let mut done = Vec::new();
        let gap = self.last_seq.is_some_and(|s| h.seq != s.wrapping_add(1));
        self.last_seq = Some(h.seq);
        if self
            .cur
            .as_ref()
            .is_some_and(|u| u.timestamp != h.timestamp)
        {
            done.extend(self.cur.take());
        }
        let info = inspect(self.codec, &pkt[h.payload.clone()]);
        let unit = self.cur.get_or_insert_with(|| AccessUnit {
            timestamp: h.timestamp,
            ..AccessUnit::default()
        });
        unit.packets.push(range);
        unit.keyframe |= info.keyframe;
        unit.params |= info.params;
        unit.discontinuity |= gap;
        if h.marker || unit.packets.len() >= self.max_packets {
            if !h.marker {
                unit.discontinuity = true;
            }
            done.extend(self.cur.take());
        }
        Ok(done)
    }
}

/// Puts RTP packets received over UDP back in sequence order before they
/// are grouped into access units: a packet that arrives early waits for
/// the ones before it; a gap no later packet fills within [`Reorder::HOLD`]
/// packets (or at [`Reorder::flush`], when nothing arrived for a while)
/// is given up as loss (the assembler marks the unit discontinuous); late
/// and duplicate packets are dropped. Bounded: at most `HOLD` packets wait.
#[derive(Debug, Default)]
pub struct Reorder {
    expected: Option<u16>,
    held: Vec<(u16, Vec<u8>)>,
}

impl Reorder {
    /// Most packets held waiting for a gap to fill.
    pub const HOLD: usize = 32;

    /// Takes packet `seq`; returns the packets now in order.
    pub fn push(&mut self, seq: u16, pkt: Vec<u8>) -> Vec<Vec<u8>> {
        let Some(e) = self.expected else {
            self.expected = Some(seq.wrapping_add(1));
            return vec![pkt];
        };
        let ahead = seq.wrapping_sub(e);
        if ahead >= 0x8000 || self.held.iter().any(|(s, _)| *s == seq) {
            return Vec::new();
        }
        self.held.push((seq, pkt));
        let mut out = self.ready();
        while self.held.len() > Self::HOLD {
            self.skip_gap();
            out.extend(self.ready());
        }
        out
    }

    /// Gives up every gap: all held packets, in order.
    pub fn flush(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !self.held.is_empty() {
            self.skip_gap();
            out.extend(self.ready());
        }
        out
    }

    /// Packets waiting.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn ready(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(e) = self.expected {
            let Some(i) = self.held.iter().position(|(s, _)| *s == e) else {
                break;
            };
            out.push(self.held.swap_remove(i).1);
            self.expected = Some(e.wrapping_add(1));
        }
        out
    }

    fn skip_gap(&mut self) {
        if let Some(e) = self.expected {
            if let Some(d) = self.held.iter().map(|(s, _)| s.wrapping_sub(e)).min() {
                self.expected = Some(e.wrapping_add(d));
            }
        }
    }
}

/// One UDP packet of an access unit, re-packetised once and shared by
/// every UDP viewer: each viewer writes its own 12-byte RTP header (its
/// sequence number and SSRC, this marker, payload type and timestamp),
/// then `prefix`, then the `body` bytes straight from the shared buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket {
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub payload_type: u8,
    /// Media timestamp.
    pub timestamp: u32,
    /// Payload bytes before the body (a fragmentation unit's headers).
    pub prefix: [u8; 3],
    /// How many of `prefix` are used.
    pub prefix_len: u8,
    /// The rest of the payload, in the caller's buffer.
    pub body: Range<usize>,
}

impl UdpPacket {
    /// The prefix in use.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..usize::from(self.prefix_len)]
    }

    /// Payload length (prefix and body).
    pub fn payload_len(&self) -> usize {
        usize::from(self.prefix_len) + self.body.len()
    }
}

/// The RTP packets of `packets` as UDP packets unchanged (audio: its
/// packets fit a datagram as the camera made them). Packets that do not
/// parse are dropped.
pub fn as_is(buf: &[u8], packets: &[Range<usize>]) -> Vec<UdpPacket> {
    packets
        .iter()
        .filter_map(|r| {
            let h = parse(buf.get(r.clone())?).ok()?;
            Some(UdpPacket {
                marker: h.marker,
                payload_type: h.payload_type,
                timestamp: h.timestamp,
                prefix: [0; 3],
                prefix_len: 0,
                body: r.start + h.payload.start..r.start + h.payload.end,
            })
        })
        .collect()
}

/// Splits the RTP packets of one access unit (`packets`, ranges of whole
/// packets in `buf`, as cameras send them over TCP: up to 64 KiB) into
/// packets whose payload is at most `mtu` bytes, for UDP: a NAL unit too
/// large becomes fragmentation units (FU-A for H.264, FU for H.265), an
/// oversized fragmentation unit is fragmented finer, an oversized
/// aggregation packet is split into its NAL units. Timestamps are kept;
/// the marker goes on the last packet made from a marked one. Packets
/// that do not parse are dropped.
pub fn packetize(codec: Codec, buf: &[u8], packets: &[Range<usize>], mtu: usize) -> Vec<UdpPacket> {
    // A fragment carries at least one byte beside its (up to 3) header bytes.
    let mtu = mtu.max(4);
    let mut out = Vec::with_capacity(packets.len());
    for r in packets {
        let Some(pkt) = buf.get(r.clone()) else {
            continue;
        };
        let Ok(h) = parse(pkt) else { continue };
        let abs = r.start + h.payload.start..r.start + h.payload.end;
        let first = out.len();
        let tpl = UdpPacket {
            marker: false,
            payload_type: h.payload_type,
            timestamp: h.timestamp,
            prefix: [0; 3],
            prefix_len: 0,
            body: abs.clone(),
        };
        let p = &buf[abs.clone()];
        if p.len() <= mtu || p.is_empty() {
            out.push(tpl.clone());
        } else {
            let (nal_hdr, aggregate, fragment) = match codec {
                Codec::H264 => (1, 24, 28),
                Codec::H265 => (2, 48, 49),
            };
            let nal_type = match codec {
                Codec::H264 => p[0] & 0x1f,
                Codec::H265 => (p[0] >> 1) & 0x3f,
            };
            if nal_type == aggregate {
                let mut at = abs.start + nal_hdr;
                while at + 2 <= abs.end {
                    let n = usize::from(u16::from_be_bytes([buf[at], buf[at + 1]]));
                    let nal = at + 2..(at + 2 + n).min(abs.end);
                    if !nal.is_empty() {
                        whole_nal(codec, buf, nal.clone(), mtu, &tpl, &mut out);
                    }
                    at = nal.end;
                }
            } else if nal_type == fragment && p.len() > nal_hdr {
                let fu = p[nal_hdr];
                let typ = match codec {
                    Codec::H264 => fu & 0x1f,
                    Codec::H265 => fu & 0x3f,
                };
                let head: Vec<u8> = p[..nal_hdr].to_vec();
                let body = abs.start + nal_hdr + 1..abs.end;
                let flags = (fu & 0x80 != 0, fu & 0x40 != 0);
                fragments(&head, typ, body, flags, mtu, &tpl, &mut out);
            } else {
                whole_nal(codec, buf, abs.clone(), mtu, &tpl, &mut out);
            }
        }
        if h.marker {
            if let Some(last) = out.get_mut(first..).and_then(|s| s.last_mut()) {
                last.marker = true;
            }
        }
    }
    out
}

/// One whole NAL unit (`nal` in `buf`, header included): as is if it
/// fits, else as fragmentation units.
fn whole_nal(
    codec: Codec,
    buf: &[u8],
    nal: Range<usize>,
    mtu: usize,
    tpl: &UdpPacket,
    out: &mut Vec<UdpPacket>,
) {
    if nal.len() <= mtu {
        out.push(UdpPacket {
            body: nal,
            ..tpl.clone()
        });
        return;
    }
    match codec {
        Codec::H264 => {
            let h = buf[nal.start];
            fragments(
                &[(h & 0xe0) | 28],
                h & 0x1f,
                nal.start + 1..nal.end,
                (true, true),
                mtu,
                tpl,
                out,
            );
        }
        Codec::H265 if nal.len() > 2 => {
            let (h0, h1) = (buf[nal.start], buf[nal.start + 1]);
            let typ = (h0 >> 1) & 0x3f;
            fragments(
                &[(h0 & 0x81) | (49 << 1), h1],
                typ,
                nal.start + 2..nal.end,
                (true, true),
                mtu,
                tpl,
                out,
            );
        }
        Codec::H265 => out.push(UdpPacket {
            body: nal,
            ..tpl.clone()
        }),
    }
}

/// Fragmentation units of `body` after `head` (the FU indicator, or the
/// H.265 payload header) and an FU header of type `typ`; the start bit
/// on the first if `flags.0`, the end bit on the last if `flags.1`.
fn fragments(
    head: &[u8],
    typ: u8,
    body: Range<usize>,
    (start, end): (bool, bool),
    mtu: usize,
    tpl: &UdpPacket,
    out: &mut Vec<UdpPacket>,
) {
    let room = mtu.saturating_sub(head.len() + 1).max(1);
    let mut at = body.start;
    loop {
        let stop = (at + room).min(body.end);
        let mut fu = typ;
        if at == body.start && start {
            fu |= 0x80;
        }
        if stop == body.end && end {
            fu |= 0x40;
        }
        let mut prefix = [0u8; 3];
        prefix[..head.len()].copy_from_slice(head);
        prefix[head.len()] = fu;
        out.push(UdpPacket {
            prefix,
            prefix_len: (head.len() + 1) as u8,
            body: at..stop,
            ..tpl.clone()
        });
        if stop >= body.end {
            break;
        }
        at = stop;
    }
}

#[cfg(test)]
mod tests;
