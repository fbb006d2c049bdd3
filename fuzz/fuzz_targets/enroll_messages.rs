//! Enrollment messages on arbitrary bytes, both directions: never a panic,
//! never a claim to have used more bytes than given, and decoded messages
//! re-encode to the bytes they came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::enroll::{ClientMsg, ServerMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((msg, used))) = ClientMsg::decode(data) {
        assert!(used <= data.len());
        assert_eq!(msg.encode(), &data[..used]);
    }
    if let Ok(Some((msg, used))) = ServerMsg::decode(data) {
        assert!(used <= data.len());
        assert_eq!(msg.encode(), &data[..used]);
    }
});
