use super::*;

fn all_frames() -> Vec<Vec<u8>> {
    let frames = [
        Frame::Settings(Settings {
            version: 1,
            stream_window: 1 << 20,
            tunnel_window: 1 << 24,
            max_streams: 1024,
        }),
        Frame::Services(vec!["http", "rtsp.main"]),
        Frame::Open {
            stream: 1,
            service: "http",
        },
        Frame::Window {
            stream: 0,
            increment: 5,
        },
        Frame::Window {
            stream: 3,
            increment: 7,
        },
        Frame::End { stream: 3 },
        Frame::Reset {
            stream: 3,
            code: Reason::REFUSED,
        },
        Frame::Ping(42),
        Frame::Pong(42),
        Frame::GoAway(Reason::SHUTDOWN),
    ];
    let mut out: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut v = Vec::new();
            encode(f, &mut v);
            v
        })
        .collect();
    let mut d = Vec::new();
    encode_data(9, b"hello", &mut d);
    out.push(d);
    out
}

#[test]
fn round_trip_every_kind() {
    for bytes in all_frames() {
        let (frame, next) = decode(&bytes, 0).expect("decodes");
        assert_eq!(next, bytes.len());
        if let Frame::Data { stream, payload } = &frame {
            assert_eq!(*stream, 9);
            assert_eq!(&bytes[payload.clone()], b"hello");
            continue;
        }
        let mut again = Vec::new();
        encode(&frame, &mut again);
        assert_eq!(again, bytes);
    }
}

#[test]
fn every_split_is_truncated_never_a_panic() {
    for bytes in all_frames() {
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 0).is_err(), "cut {cut} of {bytes:?}");
        }
    }
}

#[test]
fn lengths_zero_one_max_max_plus_one_u32_max() {
    let hdr = |len: u32| {
        let mut v = vec![kind::DATA];
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    };
    // 0 and 1: fine with the body present.
    let mut zero = hdr(0);
    assert!(matches!(decode(&zero, 0), Ok((Frame::Data { .. }, 9))));
    zero.truncate(9);
    let mut one = hdr(1);
    one.push(7);
    assert!(matches!(decode(&one, 0), Ok((Frame::Data { .. }, 10))));
    // max: header alone is truncated (not too long); max + 1 and u32::MAX are refused from the header.
    assert_eq!(
        decode(&hdr(MAX_FRAME_PAYLOAD as u32), 0),
        Err(FrameError::Truncated)
    );
    assert_eq!(
        decode(&hdr(MAX_FRAME_PAYLOAD as u32 + 1), 0),
        Err(FrameError::TooLong(MAX_FRAME_PAYLOAD as u32 + 1))
    );
    assert_eq!(
        decode(&hdr(u32::MAX), 0),
        Err(FrameError::TooLong(u32::MAX))
    );
}

#[test]
fn malformed_bodies() {
    let mk = |ty: u8, stream: u32, body: &[u8]| {
        let mut v = vec![0u8; FRAME_HEADER_LEN];
        write_header(&mut v, ty, stream, body.len());
        v.extend_from_slice(body);
        v
    };
    let cases = [
        mk(kind::DATA, 0, b"x"),
        mk(kind::OPEN, 1, b""),
        mk(kind::OPEN, 1, b"bad name"),
        mk(kind::OPEN, 0, b"http"),
        mk(kind::WINDOW, 1, &0u32.to_be_bytes()),
        mk(kind::WINDOW, 1, &[1, 2]),
        mk(kind::END, 1, b"x"),
        mk(kind::RESET, 1, b""),
        mk(kind::PING, 0, &[1]),
        mk(kind::PING, 1, &[0; 8]),
        mk(kind::SETTINGS, 0, &[1; 12]),
        mk(kind::SERVICES, 0, &[5, b'a']),
        mk(kind::GOAWAY, 3, &[0]),
    ];
    for c in cases {
        assert!(
            matches!(decode(&c, 0), Err(FrameError::Malformed(_))),
            "{c:?}"
        );
    }
    assert_eq!(decode(&mk(99, 0, b""), 0), Err(FrameError::UnknownType(99)));
}

#[test]
fn open_names_are_services_or_site_slash_service() {
    for ok in [
        "svc",
        "cam.front",
        "store-42/svc",
        &format!("{}/{}", "s".repeat(63), "x".repeat(64)),
    ] {
        assert!(valid_open_name(ok), "{ok}");
        let mut out = Vec::new();
        encode(
            &Frame::Open {
                stream: 1,
                service: ok,
            },
            &mut out,
        );
        assert!(decode(&out, 0).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "a/",
        "/b",
        "a/b/c",
        "Site/svc",
        "-s/svc",
        "s/sv c",
        &"x".repeat(65),
    ] {
        assert!(!valid_open_name(bad), "{bad}");
    }
}
