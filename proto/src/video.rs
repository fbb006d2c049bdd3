//! The video feed carried on one tunnel stream from the site redirector to
//! the host redirector, and the bits of SDP both ends need.
//!
//! Messages: `len: u32 BE | kind: u8 | body` (len counts kind and body,
//! at most [`MAX_MESSAGE`]).
//! - `SDP` (first): the camera's session description, UTF-8.
//! - `UNIT`: one access unit: `flags: u8` (1 keyframe, 2 parameter sets,
//!   4 discontinuity), `rtp_timestamp: u32`, `sequence: u32` (per feed,
//!   gaps show drops), `count: u16`, then `count` times `len: u16 | RTP
//!   packet`. The original RTP packets are kept byte for byte.
//! - `GONE`: the camera went away; reason text.

use crate::rtp::Codec;
use std::ops::Range;

/// Largest message (an 8 Mbit/s keyframe is well under 1 MiB).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Message kinds.
pub const KIND_SDP: u8 = 1;
/// An access unit.
pub const KIND_UNIT: u8 = 2;
/// The camera went away.
pub const KIND_GONE: u8 = 3;

/// Unit flags.
pub const FLAG_KEY: u8 = 1;
/// Parameter sets present.
pub const FLAG_PARAMS: u8 = 2;
/// Loss before or inside the unit.
pub const FLAG_DISCONTINUITY: u8 = 4;
/// The unit is one packet of the camera's audio track, not video.
pub const FLAG_AUDIO: u8 = 8;

/// Appends a message header for a body of `body_len` bytes.
pub fn header(kind: u8, body_len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&((body_len + 1) as u32).to_be_bytes());
    out.push(kind);
}

/// Encodes an access unit from its RTP packets.
pub fn encode_unit(flags: u8, timestamp: u32, sequence: u32, packets: &[&[u8]], out: &mut Vec<u8>) {
    let body = 1 + 4 + 4 + 2 + packets.iter().map(|p| 2 + p.len()).sum::<usize>();
    header(KIND_UNIT, body, out);
    out.push(flags);
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&(packets.len() as u16).to_be_bytes());
    for p in packets {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
}

/// A malformed feed message. Ends the feed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// Length over [`MAX_MESSAGE`] or zero.
    #[error("feed message length {0} out of bounds")]
    Length(u32),
    /// Body does not match its kind.
    #[error("malformed feed message")]
    Malformed,
}

/// Size of the message at the front of `buf` (header included), once known.
pub fn message_size(buf: &[u8]) -> Result<Option<usize>, FeedError> {
    let Some(h) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if len == 0 || len as usize > MAX_MESSAGE {
        return Err(FeedError::Length(len));
    }
    Ok(Some(4 + len as usize))
}

/// A decoded access unit; packet ranges index the message given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Flags.
    pub flags: u8,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Feed sequence.
    pub sequence: u32,
    /// Packet ranges within the message.
    pub packets: Vec<Range<usize>>,
}

/// Decodes a UNIT message (whole message, header included).
pub fn decode_unit(msg: &[u8]) -> Result<Unit, FeedError> {
    let b = msg.get(5..).ok_or(FeedError::Malformed)?;
    if msg.get(4) != Some(&KIND_UNIT) || b.len() < 11 {
        return Err(FeedError::Malformed);
    }
    let count = usize::from(u16::from_be_bytes([b[9], b[10]]));
    let mut at = 5 + 11;
    let mut packets = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let l = msg.get(at..at + 2).ok_or(FeedError::Malformed)?;
        let n = usize::from(u16::from_be_bytes([l[0], l[1]]));
        if msg.len() < at + 2 + n || n < 12 {
            return Err(FeedError::Malformed);
        }
        packets.push(at + 2..at + 2 + n);
        at += 2 + n;
    }
    if at != msg.len() {
        return Err(FeedError::Malformed);
    }
    Ok(Unit {
        flags: b[0],
        timestamp: u32::from_be_bytes([b[1], b[2], b[3], b[4]]),
        sequence: u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
        packets,
    })
}

/// What the redirectors read from an SDP: the first video track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoTrack {
    /// Codec from `a=rtpmap`.
    pub codec: Codec,
    /// The track's control attribute (relative or absolute URL), if any.
    pub control: Option<String>,
}

/// An SDP split into its session lines and its media sections (each from
/// its `m=` line), lines trimmed, empty lines dropped. [`video_track`] and
/// [`video_only_sdp`] both read this one split, so the track the site
/// relays and the track viewers are told about are always the same one.
fn sections(sdp: &str) -> (Vec<&str>, Vec<Vec<&str>>) {
    let mut session = Vec::new();
    let mut media: Vec<Vec<&str>> = Vec::new();
    // Lines holding control characters are dropped here, for every user
    // of the SDP alike (they would reach players, URLs and logs).
    let lines = sdp
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().any(char::is_control));
    for line in lines {
        if line.starts_with("m=") {
            media.push(vec![line]);
        } else if let Some(cur) = media.last_mut() {
            cur.push(line);
        } else {
            session.push(line);
        }
    }
    (session, media)
}

/// The codec of a media section: its first H.264 or H.265 `a=rtpmap`.
fn section_codec(sec: &[&str]) -> Option<Codec> {
    sec.iter().find_map(|line| {
        let map = line.strip_prefix("a=rtpmap:")?;
        let enc = map.split_whitespace().nth(1)?.to_ascii_uppercase();
        if enc.starts_with("H264/") {
            Some(Codec::H264)
        } else if enc.starts_with("H265/") {
            Some(Codec::H265)
        } else {
            None
        }
    })
}

/// The first video section with an H.264 or H.265 payload, and its codec.
fn chosen<'a>(media: &'a [Vec<&'a str>]) -> Option<(&'a [&'a str], Codec)> {
    media.iter().find_map(|sec| {
        let codec = section_codec(sec)?;
        sec.first()
            .is_some_and(|m| m.starts_with("m=video"))
            .then_some((sec.as_slice(), codec))
    })
}

/// Finds the first H.264 or H.265 video track of an SDP.
pub fn video_track(sdp: &str) -> Option<VideoTrack> {
    let (_, media) = sections(sdp);
    let (sec, codec) = chosen(&media)?;
    let control = sec
        .iter()
        .find_map(|l| l.strip_prefix("a=control:"))
        .map(str::to_string);
    Some(VideoTrack { codec, control })
}

/// The first audio section (AAC, Opus, G.711 ... as the camera sends
/// it, static payload types too): relayed beside the video, packet by
/// packet.
fn chosen_audio<'a>(media: &'a [Vec<&'a str>]) -> Option<&'a [&'a str]> {
    media
        .iter()
        .find(|sec| sec.first().is_some_and(|m| m.starts_with("m=audio")))
        .map(Vec::as_slice)
}

/// The camera's audio track the redirectors relay, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTrack {
    /// The track's control attribute, if any.
    pub control: Option<String>,
    /// Its encoding from `a=rtpmap` (`MPEG4-GENERIC/48000/2`).
    pub encoding: String,
}

impl AudioTrack {
    /// The track's RTP clock rate: the rate in its encoding
    /// (`opus/48000/2`), or the static payload type's (RFC 3551: PCMU and
    /// PCMA 8,000 Hz). `None` when neither says.
    pub fn clock_rate(&self) -> Option<u32> {
        if let Some(pt) = self.encoding.strip_prefix("payload type ") {
            return match pt.trim() {
                "0" | "3" | "4" | "5" | "7" | "8" | "9" | "12" | "13" | "15" | "18" => Some(8_000),
                "6" => Some(16_000),
                "10" | "11" => Some(44_100),
                "14" => Some(90_000),
                _ => None,
            };
        }
        self.encoding
            .split('/')
            .nth(1)?
            .trim()
            .parse()
            .ok()
            .filter(|r| *r > 0)
    }
}

/// Finds the audio track relayed beside the video.
pub fn audio_track(sdp: &str) -> Option<AudioTrack> {
    let (_, media) = sections(sdp);
    let sec = chosen_audio(&media)?;
    let control = sec
        .iter()
        .find_map(|l| l.strip_prefix("a=control:"))
        .map(str::to_string);
    let encoding = sec
        .iter()
        .find_map(|l| l.strip_prefix("a=rtpmap:")?.split_whitespace().nth(1))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let pt = sec
                .first()
                .and_then(|m| m.split_whitespace().nth(3))
                .unwrap_or("?");
            format!("payload type {pt}")
        });
    Some(AudioTrack { control, encoding })
}

/// The SDP viewers get: the session lines and only the media sections
/// the redirectors relay (the first H.264/H.265 video track as `track0`,
/// and the first audio track, if any, as `track1`), so players do not set
/// up tracks that never arrive. `None` when the SDP has no video track.
pub fn video_only_sdp(sdp: &str) -> Option<String> {
    let (session, media) = sections(sdp);
    let (sec, _) = chosen(&media)?;
    let audio = chosen_audio(&media).unwrap_or(&[]);
    let mut out = String::new();
    // The site's control URLs (absolute ones name the camera's own
    // address) become relative to the host's URL; a relayed track
    // without one gets one, so players can set each up.
    let mut part = |lines: &[&str], control: &str, add: bool| {
        let mut had = false;
        for line in lines {
            if line.starts_with("a=control:") {
                out.push_str("a=control:");
                out.push_str(control);
                had = true;
            } else {
                out.push_str(line);
            }
            out.push_str("\r\n");
        }
        if add && !had {
            out.push_str(&format!("a=control:{control}\r\n"));
        }
    };
    part(&session, "*", false);
    part(sec, "track0", true);
    if !audio.is_empty() {
        part(audio, "track1", true);
    }
    Some(out)
}

/// `sdp` without its audio sections: what the site announces when the
/// camera's audio track could not be set up, so viewers are not offered
/// a track that never arrives.
pub fn without_audio(sdp: &str) -> String {
    let (session, media) = sections(sdp);
    let mut out = String::new();
    let kept = media
        .iter()
        .filter(|sec| !sec.first().is_some_and(|m| m.starts_with("m=audio")))
        .flatten();
    for line in session.iter().chain(kept) {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

/// The tracks of an SDP that are not relayed (every media section but
/// the one [`video_track`] chose), each as its `m=` line and first
/// `a=rtpmap` encoding (`m=audio 0 RTP/AVP 97 (MPEG4-GENERIC/48000/2)`),
/// so the site can name them.
pub fn unrelayed_tracks(sdp: &str) -> Vec<String> {
    let (_, media) = sections(sdp);
    let kept = chosen(&media).map(|(sec, _)| sec.as_ptr());
    let audio = chosen_audio(&media).map(<[&str]>::as_ptr);
    media
        .iter()
        .filter(|sec| Some(sec.as_ptr()) != kept && Some(sec.as_ptr()) != audio)
        .map(|sec| {
            let m = sec.first().copied().unwrap_or("m=?");
            let enc = sec
                .iter()
                .find_map(|l| l.strip_prefix("a=rtpmap:")?.split_whitespace().nth(1));
            match enc {
                Some(e) => format!("{m} ({e})"),
                None => m.to_string(),
            }
        })
        .collect()
}

/// Resolves a track control attribute against the session's base URL.
pub fn resolve(base: &str, control: Option<&str>) -> String {
    match control {
        None | Some("*") => base.to_string(),
        Some(c) if c.starts_with("rtsp://") || c.starts_with("rtsps://") => c.to_string(),
        Some(c) => format!(
            "{}/{}",
            base.trim_end_matches('/'),
            c.trim_start_matches('/')
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn audio_clock_rates_come_from_the_encoding_or_the_static_type() {
        let rate = |enc: &str| {
            AudioTrack {
                control: None,
                encoding: enc.into(),
            }
            .clock_rate()
        };
        assert_eq!(rate("MPEG4-GENERIC/44100/2"), Some(44_100));
        assert_eq!(rate("opus/48000/2"), Some(48_000));
        assert_eq!(rate("PCMU/8000"), Some(8_000));
        assert_eq!(rate("payload type 8"), Some(8_000));
        assert_eq!(rate("payload type 96"), None);
        assert_eq!(rate("L16"), None);
        assert_eq!(rate("X/0"), None);
    }

    #[test]
    fn without_audio_keeps_everything_but_the_audio_sections() {
        let sdp = "v=0\r\ns=x\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 0 RTP/AVP 0\r\na=control:a\r\n";
        let out = without_audio(sdp);
        assert_eq!(
            out,
            "v=0\r\ns=x\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        );
        assert!(audio_track(&out).is_none());
        assert!(video_track(&out).is_some());
    }

    #[test]
    fn viewers_get_only_the_relayed_video_track() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\na=control:*\r\n\
                   m=audio 0 RTP/AVP 0\r\na=control:track1\r\n\
                   m=video 0 RTP/AVP 26\r\na=rtpmap:26 JPEG/90000\r\n\
                   m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:track2\r\n";
        let out = video_only_sdp(sdp).expect("has H.264");
        assert_eq!(
            out,
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\na=control:*\r\n\
             m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:track0\r\n\
             m=audio 0 RTP/AVP 0\r\na=control:track1\r\n"
        );
        // A fleet peer served from a host's feed applies it again to
        // what that host's viewers get: nothing changes.
        assert_eq!(video_only_sdp(&out).as_deref(), Some(out.as_str()));
        assert_eq!(
            audio_track(sdp),
            Some(AudioTrack {
                control: Some("track1".into()),
                encoding: "payload type 0".into()
            })
        );
        // An absolute control URL (the camera's address) becomes relative;
        // control characters never pass.
        let abs = "v=0\r\ns=a\x1b[31m\r\na=control:rtsp://10.0.0.7/x\r\n\
                   m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
                   a=control:rtsp://10.0.0.7:554/x/trackID=1\r\n";
        assert_eq!(
            video_only_sdp(abs).expect("has H.264"),
            "v=0\r\na=control:*\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:track0\r\n"
        );
        assert_eq!(video_only_sdp("v=0\r\nm=audio 0 RTP/AVP 0\r\n"), None);
        assert_eq!(video_only_sdp(""), None);
        // The tracks left out are named.
        assert_eq!(
            unrelayed_tracks(sdp),
            vec!["m=video 0 RTP/AVP 26 (JPEG/90000)"]
        );
        assert!(unrelayed_tracks(abs).is_empty());
    }

    use super::*;

    #[test]
    fn unit_round_trip_and_garbage() {
        let p1 = [0x80u8; 20];
        let p2 = [0x81u8; 13];
        let mut out = Vec::new();
        encode_unit(FLAG_KEY | FLAG_PARAMS, 9000, 7, &[&p1, &p2], &mut out);
        assert_eq!(message_size(&out), Ok(Some(out.len())));
        let u = decode_unit(&out).expect("valid");
        assert_eq!((u.flags, u.timestamp, u.sequence), (3, 9000, 7));
        assert_eq!(&out[u.packets[0].clone()], &p1);
        assert_eq!(&out[u.packets[1].clone()], &p2);
        for cut in 5..out.len() {
            assert!(decode_unit(&out[..cut]).is_err(), "cut {cut}");
        }
        assert!(message_size(&u32::MAX.to_be_bytes()).is_err());
        assert!(message_size(&0u32.to_be_bytes()).is_err());
    }

    #[test]
    fn sdp_video_track_and_control_urls() {
        let sdp = "v=0\r\nm=audio 0 RTP/AVP 0\r\na=control:audio\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:stream=0\r\n";
        let t = video_track(sdp).expect("video");
        assert_eq!(t.codec, Codec::H264);
        assert_eq!(t.control.as_deref(), Some("stream=0"));
        assert_eq!(
            resolve("rtsp://h:1/test/", t.control.as_deref()),
            "rtsp://h:1/test/stream=0"
        );
        assert_eq!(resolve("rtsp://h:1/test", Some("rtsp://x/y")), "rtsp://x/y");
        assert_eq!(resolve("rtsp://h:1/test", None), "rtsp://h:1/test");
        assert!(video_track("v=0\r\nm=video 0 RTP/AVP 26\r\na=rtpmap:26 JPEG/90000\r\n").is_none());
    }

    /// Found by the `sdp` fuzz target: with two H.26x rtpmaps in a section
    /// and lines that only differed in surrounding whitespace, the track
    /// finder and the viewers' SDP filter picked different codecs.
    #[test]
    fn the_filtered_sdp_describes_the_track_that_is_relayed() {
        let sdp = "v=0\r\n m=video 0 RTP/AVP 96 97\r\na=rtpmap:97 H265/90000\r\na=rtpmap:96 H264/90000\r\n\x0bm=audio 0 RTP/AVP 0\r\nm=video 0 RTP/AVP 98\r\na=rtpmap:98 H264/90000\r\n";
        let relayed = video_track(sdp).expect("a video track");
        let shown = video_only_sdp(sdp).expect("a filtered SDP");
        assert_eq!(video_track(&shown).map(|t| t.codec), Some(relayed.codec));
        assert_eq!(
            relayed.codec,
            Codec::H265,
            "the section's first H.26x rtpmap"
        );
        // The audio section is relayed too, as track1.
        assert!(
            shown.contains("m=audio 0 RTP/AVP 0\r\na=control:track1"),
            "{shown}"
        );
    }
}
