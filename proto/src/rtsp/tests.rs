//! RTSP parser table tests.

use super::*;

fn req(s: &str) -> Result<Option<(Request, usize)>, RtspError> {
    parse_request(s.as_bytes())
}

#[test]
fn parses_the_requests_viewers_send() {
    let text = "DESCRIBE rtsp://127.0.0.1:8554/site-a/cam1 RTSP/1.0\r\nCSeq: 2\r\nUser-Agent: Lavf\r\nAccept: application/sdp\r\n\r\n";
    let (r, used) = req(text).expect("valid").expect("complete");
    assert_eq!(used, text.len());
    assert_eq!(r.method, Method::Describe);
    assert_eq!(r.cseq(), Some("2"));
    assert_eq!(r.header("user-agent"), Some("Lavf"));
    assert_eq!(r.path(), vec!["site-a", "cam1"]);
    let setup = "SETUP rtsp://h/site-a/cam1/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n";
    let (r, _) = req(setup).expect("valid").expect("complete");
    assert_eq!(r.path(), vec!["site-a", "cam1", "trackID=0"]);
    assert_eq!(
        interleaved_channels(r.header("Transport").unwrap_or("")),
        Some((0, 1))
    );
    assert_eq!(
        interleaved_channels("RTP/AVP;unicast;client_port=5000-5001"),
        None
    );
    assert_eq!(
        interleaved_channels("RTP/AVP/TCP;interleaved=4"),
        Some((4, 5))
    );
}

#[test]
fn partial_input_waits_and_pipelined_requests_split() {
    let one = "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n";
    for cut in 0..one.len() {
        assert_eq!(req(&one[..cut]), Ok(None), "cut {cut}");
    }
    let two = format!("{one}{one}");
    let (_, used) = req(&two).expect("valid").expect("complete");
    assert_eq!(used, one.len());
    let with_body = "SET_PARAMETER rtsp://h/a/b RTSP/1.0\r\nCSeq: 9\r\nContent-Length: 5\r\n\r\nab";
    assert_eq!(req(with_body), Ok(None));
    let (r, _) = req(&format!("{with_body}cde"))
        .expect("valid")
        .expect("complete");
    assert_eq!(r.body, b"abcde");
}

#[test]
fn table_of_bad_requests() {
    let cases: &[(&str, u16)] = &[
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("FROB rtsp://h/a RTSP/1.0\r\nCSeq: 1\r\n\r\n", 501),
        ("OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n", 505),
        ("OPTIONS *  RTSP/1.0\r\n\r\n", 400),
        ("OPTIONS\r\n\r\n", 400),
        ("OPTIONS * RTSP/1.0\r\nNoColon\r\n\r\n", 400),
        ("OPTIONS * RTSP/1.0\r\nContent-Length: x\r\n\r\n", 400),
        ("OPTIONS * RTSP/1.0\r\nContent-Length: 999999\r\n\r\n", 413),
        ("OPTIONS * RTSP/1.0\r\nBad Name: 1\r\n\r\n", 400),
    ];
    for (text, status) in cases {
        match req(text) {
            Err(e) => assert_eq!(e.status(), *status, "{text:?}: {e}"),
            Ok(r) => panic!("{text:?} parsed: {r:?}"),
        }
    }
    let many = format!(
        "OPTIONS * RTSP/1.0\r\n{}\r\n",
        "A: b\r\n".repeat(MAX_HEADERS + 1)
    );
    assert_eq!(req(&many), Err(RtspError::TooManyHeaders));
    let huge = format!("OPTIONS * RTSP/1.0\r\nX: {}", "a".repeat(MAX_HEAD));
    assert_eq!(req(&huge), Err(RtspError::HeadTooLarge));
    assert_eq!(
        parse_request(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']),
        Err(RtspError::Malformed("not UTF-8"))
    );
}

#[test]
fn responses_echo_only_numeric_cseq() {
    let r = response(404, Some("7"), &[("Session", "ab")], b"");
    assert_eq!(
        r,
        b"RTSP/1.0 404 Not Found\r\nCSeq: 7\r\nSession: ab\r\n\r\n"
    );
    let r = response(200, Some("1\r\nX: y"), &[], b"v=0\r\n");
    let text = String::from_utf8_lossy(&r);
    assert!(!text.contains("X: y"));
    assert!(text.ends_with("Content-Length: 5\r\n\r\nv=0\r\n"));
}

#[test]
fn control_characters_in_uris_are_refused() {
    for uri in [
        "rtsp://h/s1/cam\x1b[2J",
        "rtsp://h/s1/cam%0d%0aX-Injected:%201",
        "rtsp://h/s1/%7f",
        "rtsp://h/s1/cam%1B",
    ] {
        let req = format!("DESCRIBE {uri} RTSP/1.0\r\nCSeq: 1\r\n\r\n");
        assert!(
            matches!(parse_request(req.as_bytes()), Err(RtspError::Malformed(_))),
            "{uri:?}"
        );
    }
    let ok = "DESCRIBE rtsp://h/s1/cam%20a RTSP/1.0\r\nCSeq: 1\r\n\r\n";
    assert!(parse_request(ok.as_bytes()).expect("parses").is_some());
}
