//! Hand-off messages from control to a data-plane shard: decoding never
//! panics, and what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::handoff::{Handoff, MAX_HANDOFF_LEN};

fuzz_target!(|data: &[u8]| {
    if let Some(msg) = Handoff::decode(data) {
        let again = msg.encode();
        assert!(again.len() <= MAX_HANDOFF_LEN);
        assert_eq!(&again[..], data, "re-encodes to its bytes");
    }
});
