//! The frame decoder and the record deframer on arbitrary bytes: never a
//! panic, never an allocation beyond the named limits, and every decoded
//! control frame re-encodes to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::channel::Deframer;
use revtun_proto::frame::{self, Frame};
use revtun_proto::record::{keys, Side};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match frame::decode(data, at) {
            Ok((f, next)) => {
                assert!(next > at && next <= data.len());
                if !matches!(f, Frame::Data { .. } | Frame::Services(_)) {
                    let mut again = Vec::new();
                    frame::encode(&f, &mut again);
                    assert_eq!(again, &data[at..next]);
                }
                at = next;
            }
            Err(_) => break,
        }
    }
    // Raw bytes as a record stream: must fail authentication or need more.
    let (_, opener) = keys(&[1u8; 64], Side::Host, 16);
    let mut d = Deframer::new(opener);
    d.push(&data[..data.len().min(1 << 20)]);
    let _ = d.next_record();
});
