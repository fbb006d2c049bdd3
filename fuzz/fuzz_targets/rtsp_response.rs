//! Camera input at the site: RTSP responses (DESCRIBE, SETUP, PLAY
//! replies, stray responses after PLAY), parsed back to back as the site
//! does. Nothing panics, consumption stays in bounds, bodies respect the
//! limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::rtsp::{self, MAX_RESPONSE_BODY};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match rtsp::parse_response(&data[at..]) {
            Ok(Some((resp, used))) => {
                assert!(used > 0 && at + used <= data.len());
                assert!(resp.body.len() <= MAX_RESPONSE_BODY);
                let _ = resp.header("Session");
                let _ = resp.header("Content-Base");
                at += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
