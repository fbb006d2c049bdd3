//! The keyfile parser on arbitrary bytes: errors are fine, panics are not,
//! and whatever parses must serialise and parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::keyfile::Keyfile;

fuzz_target!(|data: &[u8]| {
    if let Ok(kf) = Keyfile::parse(data) {
        let again = Keyfile::parse(kf.to_text().as_bytes()).expect("serialised keyfile parses");
        assert_eq!(kf, again);
    }
});
