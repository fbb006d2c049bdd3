//! Feed messages from the site (the host decodes them from a tunnel
//! stream): framing by `message_size`, access units by `decode_unit`.
//! Nothing panics, every range stays inside the message, and a decoded
//! unit re-encodes to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::video::{self, MAX_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        let size = match video::message_size(&data[at..]) {
            Ok(Some(size)) => size,
            Ok(None) | Err(_) => break,
        };
        assert!(size > 4 && size <= 4 + MAX_MESSAGE);
        let Some(msg) = data.get(at..at + size) else { break };
        if let Ok(unit) = video::decode_unit(msg) {
            assert!(unit.packets.iter().all(|r| r.start <= r.end && r.end <= msg.len()));
            let packets: Vec<&[u8]> = unit.packets.iter().map(|r| &msg[r.clone()]).collect();
            let mut again = Vec::new();
            video::encode_unit(unit.flags, unit.timestamp, unit.sequence, &packets, &mut again);
            assert_eq!(again, msg, "a unit re-encodes to its bytes");
        }
        at += size;
    }
    // The whole input as one message, whatever its header says.
    let _ = video::decode_unit(data);
});
