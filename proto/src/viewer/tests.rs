use super::*;
use crate::rtsp_auth::{digest_response, Credentials};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test")
}

#[test]
fn names_and_permissions() {
    for ok in ["alice", "ops-1", "a.b", "0"] {
        validate_viewer_name(ok).expect("test");
    }
    for bad in ["", "-a", "Alice", "a_b", "a:b", "a@b", &"x".repeat(65)] {
        assert!(validate_viewer_name(bad).is_err(), "{bad}");
    }
    assert_eq!(Allow::parse("*"), Ok(Allow::All));
    assert_eq!(Allow::parse("paris/*"), Ok(Allow::Site("paris".into())));
    let cam = Allow::parse("paris/cam1").expect("test");
    assert!(cam.covers("paris", "cam1"));
    assert!(!cam.covers("paris", "cam2"));
    assert!(!cam.covers("lyon", "cam1"));
    assert!(Allow::Site("paris".into()).covers("paris", "x"));
    for bad in [
        "paris",
        "/cam",
        "Paris/cam",
        "paris/ca m",
        "paris/a/b",
        "paris/",
    ] {
        assert!(Allow::parse(bad).is_err(), "{bad}");
    }
    for a in ["*", "paris/*", "paris/cam1"] {
        assert_eq!(Allow::parse(a).expect("test").to_string(), a);
    }
}

#[test]
fn a_players_digest_answer_checks_and_a_wrong_one_does_not() {
    let n = Nonces::new(&[7; 32]);
    let nonce = n.issue(ip("127.0.0.1"), 1_000_000);
    let uri = "rtsp://127.0.0.1:8554/paris/cam1";
    let creds = Credentials::new("alice", "s3cret").expect("test");
    for nc in [None, Some((1u32, "abcd"))] {
        let resp = digest_response(&creds, REALM, &nonce, "DESCRIBE", uri, nc);
        let mut header = format!(
            "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\""
        );
        if let Some((nc, cn)) = nc {
            header.push_str(&format!(", qop=auth, nc={nc:08x}, cnonce=\"{cn}\""));
        }
        let Some(Presented::Digest(d)) = parse_authorization(&header) else {
            panic!("parses: {header}");
        };
        assert!(digest_ok(&ha1("alice", "s3cret"), &d, "DESCRIBE"));
        assert!(!digest_ok(&ha1("alice", "wrong"), &d, "DESCRIBE"));
        assert!(!digest_ok(&ha1("alice", "s3cret"), &d, "SETUP"));
    }
}

#[test]
fn nonces_expire_and_are_bound_to_the_address() {
    let n = Nonces::new(&[1; 32]);
    let a = ip("127.0.0.1");
    let t = 10 * NONCE_WINDOW_SECS;
    let nonce = n.issue(a, t);
    assert_eq!(n.issue(a, t + 1), nonce, "one nonce per window and address");
    assert_eq!(n.check(&nonce, a, t), NonceState::Fresh);
    assert_eq!(n.check(&nonce, a, t + NONCE_WINDOW_SECS), NonceState::Fresh);
    assert_eq!(
        n.check(&nonce, a, t + 2 * NONCE_WINDOW_SECS),
        NonceState::Stale
    );
    assert_eq!(n.check(&nonce, ip("127.0.0.2"), t), NonceState::Bad);
    assert_eq!(Nonces::new(&[2; 32]).check(&nonce, a, t), NonceState::Bad);
    for junk in ["", "x", &"0".repeat(34), "ééééééééééééééééé"] {
        assert_eq!(n.check(junk, a, t), NonceState::Bad);
    }
}

#[test]
fn tokens_check_and_tampering_fails() {
    let k = TokenKey::new(&[3; 32]);
    let allow = Allow::parse("paris/cam1").expect("test");
    let (user, password) = k.issue(&allow, 5_000).expect("test");
    assert!(user.starts_with(TOKEN_PREFIX));
    assert!(user
        .chars()
        .chain(password.chars())
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    assert_eq!(k.password(&user), password);
    let g = token_claims(&user).expect("test");
    assert_eq!(g.allow, allow);
    assert_eq!(g.expires, 5_000);
    // Another scope under the same password: a different user name, so a
    // different password.
    let (other, _) = k
        .issue(&Allow::parse("paris/*").expect("test"), 5_000)
        .expect("test");
    assert_ne!(k.password(&other), password);
    assert_ne!(TokenKey::new(&[4; 32]).password(&user), password);
    assert!(k.issue(&Allow::All, 1).is_err());
    for junk in ["tok_", "tok_!!", "alice", "tok_AAAA"] {
        assert_eq!(token_claims(junk), None);
    }
}

#[test]
fn basic_and_garbage_authorization() {
    let b = base64::engine::general_purpose::STANDARD.encode("bob:pw:with:colons");
    match parse_authorization(&format!("Basic {b}")) {
        Some(Presented::Basic { user, password }) => {
            assert_eq!(user, "bob");
            assert_eq!(password, "pw:with:colons");
            assert!(password_ok(&ha1("bob", "pw:with:colons"), &user, &password));
        }
        other => panic!("{other:?}"),
    }
    for junk in [
        "",
        "Basic",
        "Basic !!!",
        "Bearer abc",
        "Digest",
        "Digest username=\"a\"",
        "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"short\"",
        "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"00000000000000000000000000000000\", algorithm=SHA-256",
    ] {
        assert_eq!(parse_authorization(junk), None, "{junk}");
    }
}

#[test]
fn signed_uri_must_name_the_requested_resource() {
    assert!(same_resource(
        "rtsp://h:1/paris/cam1",
        "rtsp://h:1/paris/cam1"
    ));
    assert!(same_resource("/paris/cam1/", "rtsp://h:1/paris/cam1"));
    assert!(!same_resource(
        "rtsp://h:1/paris/cam2",
        "rtsp://h:1/paris/cam1"
    ));
}
