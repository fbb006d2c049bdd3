//! Viewer credentials at the host's RTSP port, from anonymous clients:
//! `Authorization` values (Digest and Basic), stream-token user names and
//! nonces. Nothing panics; a Digest answer parsed from the input is
//! checked against a key and a nonce table without panicking, and a token
//! user name never passes with a password other than its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::viewer::{self, Nonces, Presented, TokenKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let nonces = Nonces::new(&[7; 32]);
    let key = TokenKey::new(&[9; 32]);
    let _ = nonces.check(text, ip, 1_000_000);
    if let Some(g) = viewer::token_claims(text) {
        assert!(g.allow != viewer::Allow::All);
        assert_ne!(key.password(text), "");
    }
    let _ = viewer::Allow::parse(text);
    match viewer::parse_authorization(text) {
        Some(Presented::Digest(d)) => {
            assert_eq!(d.response.len(), 32);
            let ha1 = viewer::ha1(&d.username, &key.password(&d.username));
            let _ = viewer::digest_ok(&ha1, &d, "DESCRIBE");
            let _ = nonces.check(&d.nonce, ip, 1_000_000);
            let _ = viewer::same_resource(&d.uri, "rtsp://h/s/c");
        }
        Some(Presented::Basic { user, password }) => {
            assert!(!user.is_empty());
            let _ = viewer::password_ok(&[0; 16], &user, &password);
        }
        None => {}
    }
});
