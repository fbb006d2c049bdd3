//! RTSP requests, interleaved RTP and access-unit assembly, camera
//! authentication challenges and URLs on arbitrary bytes: errors map to a
//! status, nothing panics, ranges stay in bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::rtp::{self, Assembler, Codec};
use revtun_proto::{rtsp, rtsp_auth};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(rtsp_auth::Challenge::Digest(d)) = rtsp_auth::choose(text.split("\r\n")) {
            assert!(!d.nonce.is_empty() && d.nonce.len() <= rtsp_auth::MAX_VALUE);
        }
        let _ = rtsp_auth::split_credentials(text);
        let _ = rtsp_auth::redact(text);
    }
    let mut at = 0;
    while at < data.len() {
        match rtsp::parse_request(&data[at..]) {
            Ok(Some((req, used))) => {
                assert!(used > 0 && at + used <= data.len());
                let _ = req.path();
                let _ = req.header("Transport").map(rtsp::interleaved_channels);
                at += used;
            }
            Ok(None) => break,
            Err(e) => {
                assert!(matches!(e.status(), 400 | 413 | 501 | 505));
                break;
            }
        }
    }
    let mut a = Assembler::new(Codec::H264);
    let mut b = Assembler::new(Codec::H265);
    let mut at = 0;
    while let Ok(Some((_, range, used))) = rtp::interleaved(&data[at..]) {
        let pkt = &data[at + range.start..at + range.end];
        for u in a.push(pkt, range.clone()).unwrap_or_default() {
            assert!(u.packets.iter().all(|r| r.end <= data.len()));
        }
        let _ = b.push(pkt, range.clone());
        at += used;
    }
});
