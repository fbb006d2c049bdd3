//! Table tests for the keyfile parser: truncated, garbled, wrong version.

use super::*;
use time::macros::datetime;

fn sample() -> Keyfile {
    Keyfile {
        site: "site-a".into(),
        endpoints: vec![
            Endpoint {
                host: "127.0.0.1".into(),
                port: 5500,
            },
            Endpoint {
                host: "::1".into(),
                port: 6000,
            },
        ],
        created: datetime!(2026-11-25 13:00:00 UTC),
        expires: datetime!(2026-11-26 13:00:00 UTC),
        ca_fingerprint: format!("sha256:{}", "ab".repeat(32)),
        token: Token {
            id: [1; 16],
            secret: [2; 32],
        },
        ca_cert_pem: "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n".into(),
    }
}

#[test]
fn round_trip() {
    let kf = sample();
    let text = kf.to_text();
    assert_eq!(Keyfile::parse(text.as_bytes()), Ok(kf));
    assert!(text.contains("endpoint: [::1]:6000"));
}

#[test]
fn debug_never_shows_the_secret() {
    let shown = format!("{:?}", sample());
    assert!(!shown.contains(&"02".repeat(32)));
}

#[test]
fn every_truncation_fails_cleanly() {
    let text = sample().to_text();
    let full = Keyfile::parse(text.as_bytes());
    assert!(full.is_ok());
    for cut in 0..text.len() {
        let result = Keyfile::parse(&text.as_bytes()[..cut]);
        // A cut inside the trailing newline of the last line still parses;
        // every other cut must fail with an error, never a panic.
        if cut + 1 == text.len() {
            continue;
        }
        assert!(result.is_err(), "truncation at {cut} parsed: {result:?}");
    }
}

fn with_line(field: &str, replacement: &str) -> String {
    sample()
        .to_text()
        .lines()
        .map(|l| {
            if l.starts_with(field) {
                replacement.to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn without_line(field: &str) -> String {
    sample()
        .to_text()
        .lines()
        .filter(|l| !l.starts_with(field))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn table() {
    type Check = fn(&KeyfileError) -> bool;
    let cases: Vec<(&str, String, Check)> = vec![
        ("empty", String::new(), |e| *e == KeyfileError::NotAKeyfile),
        ("binary", "\u{0}\u{1}garbage".into(), |e| {
            *e == KeyfileError::NotAKeyfile
        }),
        (
            "wrong version",
            with_line("revtun-keyfile", "revtun-keyfile: 2"),
            |e| *e == KeyfileError::Version("2".into()),
        ),
        ("not a keyfile", "hello: world\n".into(), |e| {
            *e == KeyfileError::NotAKeyfile
        }),
        ("no site", without_line("site"), |e| {
            *e == KeyfileError::Missing("site")
        }),
        ("no endpoint", without_line("endpoint"), |e| {
            *e == KeyfileError::Missing("endpoint")
        }),
        ("no token", without_line("token"), |e| {
            *e == KeyfileError::Missing("token")
        }),
        ("no expires", without_line("expires"), |e| {
            *e == KeyfileError::Missing("expires")
        }),
        (
            "no cert",
            sample()
                .to_text()
                .split("-----BEGIN")
                .next()
                .unwrap_or_default()
                .to_string(),
            |e| *e == KeyfileError::Missing("ca-certificate"),
        ),
        ("cert cut", without_line("-----END"), |e| {
            *e == KeyfileError::CertTruncated
        }),
        ("bad site", with_line("site", "site: Bad/Name"), |e| {
            matches!(e, KeyfileError::Invalid { field: "site", .. })
        }),
        (
            "bad endpoint port",
            with_line("endpoint: 127", "endpoint: 127.0.0.1:99999"),
            |e| {
                matches!(
                    e,
                    KeyfileError::Invalid {
                        field: "endpoint",
                        ..
                    }
                )
            },
        ),
        ("bad time", with_line("expires", "expires: tomorrow"), |e| {
            matches!(
                e,
                KeyfileError::Invalid {
                    field: "expires",
                    ..
                }
            )
        }),
        (
            "expires before created",
            with_line("expires", "expires: 2020-01-01T00:00:00Z"),
            |e| {
                matches!(
                    e,
                    KeyfileError::Invalid {
                        field: "expires",
                        ..
                    }
                )
            },
        ),
        (
            "bad fingerprint",
            with_line("ca-fingerprint", "ca-fingerprint: md5:00"),
            |e| {
                matches!(
                    e,
                    KeyfileError::Invalid {
                        field: "ca-fingerprint",
                        ..
                    }
                )
            },
        ),
        ("garbled token", with_line("token", "token: rvt1-zz"), |e| {
            matches!(e, KeyfileError::Invalid { field: "token", .. })
        }),
        (
            "duplicate site",
            format!("{}\nsite: other", sample().to_text()),
            |e| matches!(e, KeyfileError::Duplicate { field: "site", .. }),
        ),
        (
            "garbled line",
            format!("{}\nnonsense", sample().to_text()),
            |e| matches!(e, KeyfileError::Garbled { .. }),
        ),
        ("too large", "#".repeat(MAX_KEYFILE_LEN + 1), |e| {
            matches!(e, KeyfileError::TooLarge(_))
        }),
    ];
    for (name, text, check) in cases {
        match Keyfile::parse(text.as_bytes()) {
            Ok(kf) => panic!("case {name:?} parsed: {kf:?}"),
            Err(e) => assert!(check(&e), "case {name:?}: unexpected error {e:?}"),
        }
    }
}

#[test]
fn garbled_token_line_is_not_echoed() {
    let text = format!("{}\nrvt1-{}", sample().to_text(), "9".repeat(64));
    let err = Keyfile::parse(text.as_bytes())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(!err.contains("9999"), "{err}");
}

#[test]
fn endpoints() {
    assert_eq!(
        Endpoint::parse("h"),
        Ok(Endpoint {
            host: "h".into(),
            port: 5500
        })
    );
    assert_eq!(
        Endpoint::parse("[::1]:7"),
        Ok(Endpoint {
            host: "::1".into(),
            port: 7
        })
    );
    assert!(Endpoint::parse("::1").is_err());
    assert!(Endpoint::parse("h:0").is_err());
    assert!(Endpoint::parse(":5").is_err());
    assert!(Endpoint::parse("a b:5").is_err());
}
