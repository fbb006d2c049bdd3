//! Camera authentication table tests.

use super::*;

fn creds(user: &str, password: &str) -> Credentials {
    Credentials::new(user, password).expect("valid credentials")
}

fn digest(realm: &str, nonce: &str) -> DigestChallenge {
    DigestChallenge {
        realm: realm.into(),
        nonce: nonce.into(),
        opaque: None,
        algorithm: false,
        qop_auth: false,
        stale: false,
    }
}

#[test]
fn rfc_2617_worked_example() {
    // RFC 2617 section 3.5: GET /dir/index.html, qop=auth, nc=1.
    let c = creds("Mufasa", "Circle Of Life");
    let r = digest_response(
        &c,
        "testrealm@host.com",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "GET",
        "/dir/index.html",
        Some((1, "0a4f113b")),
    );
    assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    // Without qop (RFC 2069 form); reference value from Python's hashlib.
    let r = digest_response(
        &c,
        "testrealm@host.com",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "GET",
        "/dir/index.html",
        None,
    );
    assert_eq!(r, "670fd8c2df070c60b045671b8b24ff02");
}

#[test]
fn rfc_2617_example_through_the_challenge_parser() {
    let header = r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
    let Some(ch) = choose([header]) else {
        panic!("no usable challenge in {header}")
    };
    let mut a = Authenticator::new(creds("Mufasa", "Circle Of Life"), ch);
    assert_eq!(a.scheme(), "Digest");
    assert_eq!(
        a.authorization("GET", "/dir/index.html", "0a4f113b"),
        r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001, cnonce="0a4f113b""#
    );
    // The next request counts up.
    let second = a.authorization("GET", "/dir/index.html", "0a4f113b");
    assert!(second.contains("nc=00000002"), "{second}");
    assert!(!second.contains("6629fae49393a05397450978507c4ef1"));
}

#[test]
fn each_request_gets_its_own_digest() {
    // Reference values from Python's hashlib.
    let mut ch = digest("GStreamer RTSP Server", "abc");
    let mut a = Authenticator::new(creds("user", "secret"), Challenge::Digest(ch.clone()));
    let d = a.authorization("DESCRIBE", "rtsp://127.0.0.1:8554/test", "c0ffee");
    assert!(d.contains(r#"uri="rtsp://127.0.0.1:8554/test""#), "{d}");
    assert!(
        d.contains(r#"response="89efbc5f6aac84368cbab78dac7fd2c2""#),
        "{d}"
    );
    assert!(!d.contains("qop") && !d.contains("cnonce") && !d.contains("algorithm"));
    let s = a.authorization("SETUP", "rtsp://127.0.0.1:8554/test/stream=0", "c0ffee");
    assert!(
        s.contains(r#"response="3f3a84f1c1f76aa08d80fba0d5207b71""#),
        "{s}"
    );
    ch.qop_auth = true;
    ch.algorithm = true;
    let mut a = Authenticator::new(creds("user", "secret"), Challenge::Digest(ch));
    let d = a.authorization("DESCRIBE", "rtsp://127.0.0.1:8554/test", "c0ffee");
    assert!(
        d.contains(r#"response="2bd3e26154f380ba9d080fdb4791cec9""#),
        "{d}"
    );
    assert!(d.contains("algorithm=MD5") && d.contains("nc=00000001"));
    let s = a.authorization("SETUP", "rtsp://127.0.0.1:8554/test/stream=0", "c0ffee");
    assert!(
        s.contains(r#"response="aa6f08daa7a963f857cd9e34de4e0382""#),
        "{s}"
    );
    assert!(s.contains("nc=00000002"));
}

#[test]
fn basic_authorization() {
    // RFC 7617 section 2.
    let mut a = Authenticator::new(
        creds("Aladdin", "open sesame"),
        Challenge::Basic {
            realm: "WallyWorld".into(),
        },
    );
    assert_eq!(a.scheme(), "Basic");
    assert_eq!(
        a.authorization("DESCRIBE", "rtsp://h/x", "n"),
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
}

#[test]
fn digest_values_are_quoted_safely() {
    let ch = Challenge::Digest(digest(r#"a"b\c"#, "n"));
    let mut a = Authenticator::new(creds(r#"us"er"#, "p"), ch);
    let h = a.authorization("OPTIONS", "*", "c");
    assert!(
        h.starts_with(r#"Digest username="us\"er", realm="a\"b\\c", "#),
        "{h}"
    );
}

#[test]
fn table_of_challenges() {
    let md5 = |realm: &str, nonce: &str| Challenge::Digest(digest(realm, nonce));
    let basic = |realm: &str| Challenge::Basic {
        realm: realm.into(),
    };
    let cases: Vec<(&str, Vec<Challenge>)> = vec![
        ("Basic realm=\"cam\"", vec![basic("cam")]),
        ("basic REALM=cam", vec![basic("cam")]),
        ("Basic", vec![basic("")]),
        (
            "Digest realm=\"IP Camera(12345)\", nonce=\"f00d\", stale=\"FALSE\"",
            vec![md5("IP Camera(12345)", "f00d")],
        ),
        (
            // Several challenges in one header, in any order.
            "Basic realm=\"a\", Digest realm=\"a\",nonce=\"n\" , Negotiate",
            vec![basic("a"), md5("a", "n")],
        ),
        (
            "Digest realm=\"a\", nonce=\"n\", opaque=\"o\", algorithm=md5, qop=\"auth-int, auth\", stale=true",
            vec![Challenge::Digest(DigestChallenge {
                realm: "a".into(),
                nonce: "n".into(),
                opaque: Some("o".into()),
                algorithm: true,
                qop_auth: true,
                stale: true,
            })],
        ),
        (
            "Digest realm=\"with, comma and \\\"quote\\\"\", nonce=\"n\"",
            vec![md5("with, comma and \"quote\"", "n")],
        ),
        // Unsupported: other algorithms, qop without auth, other schemes.
        ("Digest realm=\"a\", nonce=\"n\", algorithm=SHA-256", vec![]),
        ("Digest realm=\"a\", nonce=\"n\", algorithm=MD5-sess", vec![]),
        ("Digest realm=\"a\", nonce=\"n\", qop=\"auth-int\"", vec![]),
        ("Bearer realm=\"a\"", vec![]),
        (
            "Digest realm=\"a\", nonce=\"n\", algorithm=SHA-256, Digest realm=\"a\", nonce=\"m\"",
            vec![md5("a", "m")],
        ),
        // Incomplete Digest challenges.
        ("Digest realm=\"a\"", vec![]),
        ("Digest nonce=\"n\"", vec![]),
        ("Digest realm=\"a\", nonce=\"\"", vec![]),
        // Malformed: the parse stops, keeping what came before.
        ("", vec![]),
        (" , ,, ", vec![]),
        ("=", vec![]),
        ("\"Digest\"", vec![]),
        ("Basic realm=\"a\", Digest realm=\"b", vec![basic("a")]),
        ("Basic realm=\"a\", Digest realm=", vec![basic("a")]),
        ("Basic realm=\"a\", Digest realm=\"b\", realm=\"c\", nonce=\"n\"", vec![basic("a")]),
        ("Digest realm=\"a\\", vec![]),
        ("Digest realm=\"a\u{1}\", nonce=\"n\"", vec![]),
        ("Digest realm=\"a\nb\", nonce=\"n\"", vec![]),
        ("Basic dXNlcjpwYXNz==", vec![]),
        ("Digest realm=\u{e9}, nonce=n", vec![]),
    ];
    for (text, want) in cases {
        assert_eq!(parse_challenges(text), want, "{text:?}");
    }
}

#[test]
fn digest_is_preferred_over_basic_across_headers() {
    let headers = ["Basic realm=\"a\"", "Digest realm=\"a\", nonce=\"n\""];
    assert!(matches!(choose(headers), Some(Challenge::Digest(_))));
    let headers = ["Basic realm=\"first\"", "Basic realm=\"second\""];
    assert_eq!(
        choose(headers),
        Some(Challenge::Basic {
            realm: "first".into()
        })
    );
    assert_eq!(choose(["Bearer x=y", "Digest realm=\"a\""]), None);
    assert_eq!(choose(Vec::<&str>::new()), None);
}

#[test]
fn challenge_parsing_is_bounded() {
    let long = "a".repeat(MAX_VALUE + 1);
    let ok = "a".repeat(MAX_VALUE);
    assert_eq!(
        parse_challenges(&format!("Digest realm=\"{ok}\", nonce={ok}")).len(),
        1
    );
    assert!(parse_challenges(&format!("Digest realm=\"{long}\", nonce=n")).is_empty());
    assert!(parse_challenges(&format!("Digest realm=a, nonce={long}")).is_empty());
    assert!(parse_challenges(&format!("{long} x=y")).is_empty());
    let many_params = format!(
        "Digest realm=a, nonce=n{}",
        (0..MAX_PARAMS)
            .map(|i| format!(", p{i}=v"))
            .collect::<String>()
    );
    assert!(parse_challenges(&many_params).is_empty());
    let many = "Basic realm=a, ".repeat(100);
    assert_eq!(parse_challenges(&many).len(), MAX_CHALLENGES);
}

#[test]
fn challenge_parsing_never_panics_on_garbage() {
    let seeds = [
        r#"Digest realm="a\"b", nonce="n", opaque="o", qop="auth", algorithm=MD5, Basic realm="x""#,
        "Basic realm=\u{1F600}, Digest realm=\"\u{e9}\", nonce=\"\u{0}\"",
    ];
    for s in seeds {
        // Every cut, on character boundaries.
        for (i, _) in s.char_indices() {
            let _ = parse_challenges(&s[..i]);
        }
    }
    // Deterministic pseudo-random strings over the grammar's characters.
    let alphabet: Vec<char> = "Digest Basic realm nonce qop=\"\\,;= \t\u{7f}\u{e9}auth"
        .chars()
        .collect();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..2000 {
        let mut s = String::new();
        for _ in 0..(x % 64) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            s.push(alphabet[x as usize % alphabet.len()]);
        }
        for c in parse_challenges(&s) {
            if let Challenge::Digest(d) = c {
                assert!(!d.nonce.is_empty());
                assert!(!d.realm.contains('\u{7f}'));
            }
        }
    }
}

#[test]
fn camera_urls_split_and_decode() {
    let u = split_credentials("rtsp://user:secret@127.0.0.1:8554/test").expect("valid");
    assert_eq!(u.url, "rtsp://127.0.0.1:8554/test");
    assert_eq!(u.authority, "127.0.0.1:8554");
    assert_eq!(u.credentials, Some(creds("user", "secret")));
    let u = split_credentials("rtsp://ad%40min:p%3Aa%2Fs:s@cam/live?x=1").expect("valid");
    assert_eq!(u.url, "rtsp://cam/live?x=1");
    assert_eq!(u.credentials, Some(creds("ad@min", "p:a/s:s")));
    // An unencoded '@' in the password: the user info ends at the last '@'.
    let u = split_credentials("rtsp://u:p@ss@cam:554/").expect("valid");
    assert_eq!(
        (u.authority.as_str(), u.credentials),
        ("cam:554", Some(creds("u", "p@ss")))
    );
    let u = split_credentials("rtsp://admin@cam").expect("valid");
    assert_eq!(
        (u.url.as_str(), u.credentials),
        ("rtsp://cam", Some(creds("admin", "")))
    );
    let u = split_credentials("rtsp://cam:554/a@b").expect("valid");
    assert_eq!(
        (u.url.as_str(), u.credentials),
        ("rtsp://cam:554/a@b", None)
    );
    let bad: &[(&str, UrlError)] = &[
        ("http://u:p@cam/", UrlError::NotRtsp),
        ("rtsp://u:p@/x", UrlError::NoHost),
        ("rtsp:///x", UrlError::NoHost),
        ("rtsp://u:p%zz@cam/", UrlError::BadEscape),
        ("rtsp://u:p%4@cam/", UrlError::BadEscape),
        ("rtsp://u:%ff@cam/", UrlError::NotUtf8),
        ("rtsp://u:a%0d%0aX:%20y@cam/", UrlError::ControlCharacter),
        ("rtsp://:secret@cam/", UrlError::EmptyUser),
    ];
    for (url, want) in bad {
        let err = split_credentials(url).expect_err(url);
        assert_eq!(&err, want, "{url}");
        let text = err.to_string();
        assert!(!text.contains("secret") && !text.contains(url), "{text}");
    }
}

#[test]
fn redaction_hides_only_the_password() {
    let cases = [
        (
            "rtsp://user:secret@127.0.0.1:8554/test",
            "rtsp://user:***@127.0.0.1:8554/test",
        ),
        ("rtsp://u:p@ss@cam/x", "rtsp://u:***@cam/x"),
        ("rtsp://u:p%40ss@cam", "rtsp://u:***@cam"),
        ("rtsp://admin@cam/x", "rtsp://admin@cam/x"),
        ("rtsp://cam:554/a@b:c", "rtsp://cam:554/a@b:c"),
        ("http://u:secret@x/", "http://u:***@x/"),
        ("u:secret@x", "u:***@x"),
        ("", ""),
        ("rtsp://", "rtsp://"),
        ("rtsp://:secret@", "rtsp://:***@"),
    ];
    for (url, want) in cases {
        assert_eq!(redact(url), want, "{url}");
    }
    let c = creds("user", "secret");
    assert!(!format!("{c:?}").contains("secret"));
}
