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

#[cfg(test)]
mod tests;
