use super::*;

const URL: &str = "rtsp://h:8554/s1/cam1";

fn limits(udp: bool, multicast: bool) -> Limits {
    Limits {
        offered: Offered { udp, multicast },
        udp_ports: (8000, 8001),
        request: Duration::from_secs(10),
        timeout: Duration::from_secs(60),
    }
}

fn session(udp: bool, multicast: bool) -> (Session, Instant) {
    let now = Instant::now();
    (
        Session::new(0xabc, (0x1111, 0x2222), limits(udp, multicast), now),
        now,
    )
}

fn req(method: &str, uri: &str, cseq: u32, extra: &str) -> Request {
    let text = format!("{method} {uri} RTSP/1.0\r\nCSeq: {cseq}\r\n{extra}\r\n");
    let (r, used) = rtsp::parse_request(text.as_bytes())
        .expect("a request")
        .expect("a whole request");
    assert_eq!(used, text.len());
    r
}

/// The reply of a step (and whether it closes), parsed.
fn reply(step: Step) -> (rtsp::Response, bool) {
    let (bytes, close) = match step {
        Step::Reply(b) => (b, false),
        Step::Close(b) => (b, true),
        other => panic!("expected a reply, got {other:?}"),
    };
    let (r, used) = rtsp::parse_response(&bytes)
        .expect("a reply")
        .expect("a whole reply");
    assert_eq!(used, bytes.len());
    (r, close)
}

fn status(step: Step) -> u16 {
    reply(step).0.status
}

/// DESCRIBE and SETUP of the video track over `transport`; the SETUP reply.
fn describe_and_setup(s: &mut Session, now: Instant, transport: &str) -> rtsp::Response {
    let step = s.request(&req("DESCRIBE", URL, 1, ""), now);
    assert_eq!(
        step,
        Step::Describe {
            site: "s1".into(),
            cam: "cam1".into()
        }
    );
    assert_eq!(status(s.described(Ok("v=0\r\n"))), 200);
    let step = s.request(
        &req(
            "SETUP",
            &format!("{URL}/track0"),
            2,
            &format!("Transport: {transport}\r\n"),
        ),
        now,
    );
    let Step::Setup { transport: w, .. } = step else {
        panic!("{step:?}")
    };
    let found = match w {
        Wanted::Multicast => Found::Group {
            ip: Ipv4Addr::new(239, 255, 0, 1),
            ports: (8002, 8003),
            ttl: 1,
            ssrc: 0x3333,
        },
        _ => Found::Unicast,
    };
    reply(s.set_up(Ok(found))).0
}

#[test]
fn options_lists_the_methods_and_pause_is_not_allowed() {
    let (mut s, now) = session(true, false);
    let (r, close) = reply(s.request(&req("OPTIONS", "*", 1, ""), now));
    assert_eq!((r.status, close), (200, false));
    assert_eq!(r.header("Public"), Some(PUBLIC));
    assert_eq!(r.header("CSeq"), Some("1"));
    let (r, _) = reply(s.request(&req("PAUSE", URL, 2, ""), now));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some(ALLOW));
}

#[test]
fn describe_answers_the_sdp_with_a_content_base_or_the_status_found() {
    let (mut s, now) = session(false, false);
    s.request(&req("DESCRIBE", &format!("{URL}/"), 7, ""), now);
    let (r, _) = reply(s.described(Ok("v=0\r\n")));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Base"), Some("rtsp://h:8554/s1/cam1/"));
    assert_eq!(r.header("Content-Type"), Some("application/sdp"));
    assert_eq!(r.body, b"v=0\r\n");
    assert_eq!(s.camera(), Some(("s1", "cam1")));

    let (mut s, now) = session(false, false);
    s.request(&req("DESCRIBE", URL, 1, ""), now);
    assert_eq!(status(s.described(Err(503))), 503);
    assert_eq!(s.camera(), None);
    // Too short a path: 404 without asking the driver.
    assert_eq!(
        status(s.request(&req("DESCRIBE", "rtsp://h/s1", 2, ""), now)),
        404
    );
    // An answer nobody asked for ends the session.
    assert!(reply(s.described(Ok(""))).1);
}

#[test]
fn setup_takes_the_first_transport_offered_in_the_clients_order() {
    let both = "RTP/AVP;unicast;client_port=5000-5001,RTP/AVP/TCP;unicast;interleaved=0-1";
    let (mut s, now) = session(true, false);
    let r = describe_and_setup(&mut s, now, both);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Transport"),
        Some("RTP/AVP;unicast;client_port=5000-5001;server_port=8000-8001;ssrc=00001111")
    );
    assert_eq!(r.header("Session"), Some("0000000000000abc;timeout=60"));
    // TCP only at the host: the same list is answered with TCP.
    let (mut s, now) = session(false, false);
    let r = describe_and_setup(&mut s, now, both);
    assert_eq!(
        r.header("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=00001111")
    );
    assert_eq!(
        s.video().map(|v| v.url.as_str()),
        Some("rtsp://h:8554/s1/cam1/track0")
    );
    // Nothing that fits: 461, nothing set up.
    let (mut s, now) = session(false, false);
    s.request(&req("DESCRIBE", URL, 1, ""), now);
    s.described(Ok(""));
    let step = s.request(
        &req(
            "SETUP",
            URL,
            2,
            "Transport: RTP/AVP;unicast;client_port=5000-5001\r\n",
        ),
        now,
    );
    assert_eq!(status(step), 461);
    assert!(s.video().is_none());
    // No Transport header at all: 461 too.
    assert_eq!(status(s.request(&req("SETUP", URL, 3, ""), now)), 461);
}

#[test]
fn multicast_is_offered_only_when_enabled_and_replies_with_the_group() {
    let (mut s, now) = session(true, true);
    let r = describe_and_setup(&mut s, now, "RTP/AVP;multicast");
    assert_eq!(
        r.header("Transport"),
        Some("RTP/AVP;multicast;destination=239.255.0.1;port=8002-8003;ttl=1;ssrc=00003333")
    );
    let (mut s, now) = session(true, false);
    s.request(&req("DESCRIBE", URL, 1, ""), now);
    s.described(Ok(""));
    let step = s.request(
        &req("SETUP", URL, 2, "Transport: RTP/AVP;multicast\r\n"),
        now,
    );
    assert_eq!(status(step), 461);
    // No group left: the driver's 453, nothing set up.
    let (mut s, now) = session(true, true);
    s.request(&req("DESCRIBE", URL, 1, ""), now);
    s.described(Ok(""));
    s.request(
        &req("SETUP", URL, 2, "Transport: RTP/AVP;multicast\r\n"),
        now,
    );
    assert_eq!(status(s.set_up(Err(453))), 453);
    assert!(s.video().is_none());
}

#[test]
fn setup_without_describe_names_the_camera_from_its_uri() {
    let (mut s, now) = session(false, false);
    let step = s.request(
        &req(
            "SETUP",
            &format!("{URL}/track0"),
            1,
            "Transport: RTP/AVP/TCP;interleaved=4-5\r\n",
        ),
        now,
    );
    assert_eq!(
        step,
        Step::Setup {
            site: "s1".into(),
            cam: "cam1".into(),
            track: Track::Video,
            transport: Wanted::Tcp { channels: (4, 5) }
        }
    );
    assert_eq!(status(s.set_up(Ok(Found::Unicast))), 200);
    assert_eq!(s.camera(), Some(("s1", "cam1")));
    // Unknown camera found by the driver: its status.
    let (mut s, now) = session(false, false);
    s.request(
        &req(
            "SETUP",
            URL,
            1,
            "Transport: RTP/AVP/TCP;interleaved=0-1\r\n",
        ),
        now,
    );
    assert_eq!(status(s.set_up(Err(404))), 404);
    assert_eq!(s.camera(), None);
    assert_eq!(
        status(s.request(
            &req(
                "SETUP",
                "rtsp://h/",
                2,
                "Transport: RTP/AVP/TCP;interleaved=0-1\r\n"
            ),
            now
        )),
        404
    );
}

#[test]
fn the_audio_track_uses_the_same_kind_of_transport_as_the_video() {
    let (mut s, now) = session(true, true);
    describe_and_setup(&mut s, now, "RTP/AVP/TCP;unicast;interleaved=0-1");
    // UDP first in the list, but the video is on TCP: TCP is taken.
    let step = s.request(
        &req(
            "SETUP",
            &format!("{URL}/track1"),
            3,
            "Transport: RTP/AVP;unicast;client_port=6000-6001,RTP/AVP/TCP;interleaved=2-3\r\n",
        ),
        now,
    );
    let Step::Setup {
        track,
        transport: w,
        ..
    } = step
    else {
        panic!("{step:?}")
    };
    assert_eq!((track, w), (Track::Audio, Wanted::Tcp { channels: (2, 3) }));
    let (r, _) = reply(s.set_up(Ok(Found::Unicast)));
    assert_eq!(
        r.header("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=2-3;ssrc=00002222")
    );
    // Only UDP offered for audio beside TCP video: 461.
    let (mut s, now) = session(true, false);
    describe_and_setup(&mut s, now, "RTP/AVP/TCP;unicast;interleaved=0-1");
    let step = s.request(
        &req(
            "SETUP",
            &format!("{URL}/track1"),
            3,
            "Transport: RTP/AVP;unicast;client_port=6000-6001\r\n",
        ),
        now,
    );
    assert_eq!(status(step), 461);
    assert!(s.audio().is_none());
    // Multicast audio beside multicast video: the group's audio ports.
    let (mut s, now) = session(true, true);
    describe_and_setup(&mut s, now, "RTP/AVP;multicast");
    let step = s.request(
        &req(
            "SETUP",
            &format!("{URL}/track1"),
            3,
            "Transport: RTP/AVP;multicast\r\n",
        ),
        now,
    );
    assert!(matches!(
        step,
        Step::Setup {
            track: Track::Audio,
            transport: Wanted::Multicast,
            ..
        }
    ));
    let (r, _) = reply(s.set_up(Ok(Found::Group {
        ip: Ipv4Addr::new(239, 255, 0, 1),
        ports: (8004, 8005),
        ttl: 1,
        ssrc: 0x4444,
    })));
    assert!(r
        .header("Transport")
        .expect("a Transport")
        .contains("port=8004-8005;ttl=1;ssrc=00004444"));
}

#[test]
fn play_needs_the_video_set_up_and_names_the_first_packet_in_rtp_info() {
    let (mut s, now) = session(true, false);
    // Before any SETUP (even after DESCRIBE): 455.
    assert_eq!(status(s.request(&req("PLAY", URL, 1, ""), now)), 455);
    s.request(&req("DESCRIBE", URL, 2, ""), now);
    s.described(Ok(""));
    assert_eq!(status(s.request(&req("PLAY", URL, 3, ""), now)), 455);
    let setup = "Transport: RTP/AVP;unicast;client_port=5000-5001\r\n";
    s.request(&req("SETUP", &format!("{URL}/track0"), 4, setup), now);
    s.set_up(Ok(Found::Unicast));
    let setup = "Transport: RTP/AVP;unicast;client_port=5002-5003\r\n";
    s.request(&req("SETUP", &format!("{URL}/track1"), 5, setup), now);
    s.set_up(Ok(Found::Unicast));
    assert!(s.deadline().is_some());
    let step = s.request(&req("PLAY", URL, 6, ""), now);
    assert_eq!(
        step,
        Step::Play {
            site: "s1".into(),
            cam: "cam1".into()
        }
    );
    let (r, close) = reply(s.played(Ok(Some((4321, 90_000)))));
    assert!(!close);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("RTP-Info"),
        Some("url=rtsp://h:8554/s1/cam1/track0;seq=4321;rtptime=90000,url=rtsp://h:8554/s1/cam1/track1")
    );
    assert_eq!(r.header("Range"), Some("npt=now-"));
    assert_eq!(r.header("Session"), Some("0000000000000abc;timeout=60"));
    assert!(s.playing());
    assert_eq!(s.deadline(), None);
    // Playing: PLAY again is a plain 200, SETUP is refused, keep-alives
    // answer with the session, TEARDOWN closes.
    let (r, _) = reply(s.request(&req("PLAY", URL, 7, ""), now));
    assert_eq!((r.status, r.header("Session")), (200, Some(s.header())));
    assert_eq!(status(s.request(&req("SETUP", URL, 8, setup), now)), 455);
    let (r, _) = reply(s.request(&req("GET_PARAMETER", URL, 9, ""), now));
    assert_eq!((r.status, r.header("Session")), (200, Some(s.header())));
    let (r, close) = reply(s.request(&req("TEARDOWN", URL, 10, ""), now));
    assert_eq!((r.status, close), (200, true));
}

#[test]
fn a_play_the_driver_refuses_ends_the_session_with_its_status() {
    let (mut s, now) = session(false, false);
    describe_and_setup(&mut s, now, "RTP/AVP/TCP;interleaved=0-1");
    s.request(&req("PLAY", URL, 3, ""), now);
    let (r, close) = reply(s.played(Err(453)));
    assert_eq!((r.status, close), (453, true));
    assert!(!s.playing());
    // Multicast: no first packet known, RTP-Info names the URL only.
    let (mut s, now) = session(true, true);
    describe_and_setup(&mut s, now, "RTP/AVP;multicast");
    s.request(&req("PLAY", URL, 3, ""), now);
    let (r, _) = reply(s.played(Ok(None)));
    assert_eq!(
        r.header("RTP-Info"),
        Some("url=rtsp://h:8554/s1/cam1/track0")
    );
}

#[test]
fn requests_before_play_have_a_deadline_each_and_six_times_it_in_all() {
    let (mut s, t0) = session(false, false);
    let ten = Duration::from_secs(10);
    assert_eq!(s.deadline(), Some(t0 + ten));
    s.request(&req("OPTIONS", "*", 1, ""), t0 + 9 * ten / 2);
    assert_eq!(s.deadline(), Some(t0 + 11 * ten / 2));
    s.request(&req("OPTIONS", "*", 2, ""), t0 + 55 * ten / 10);
    assert_eq!(s.deadline(), Some(t0 + 6 * ten));
    // A request the driver refused itself counts the same.
    let (mut s, t0) = session(false, false);
    s.heard(t0 + ten / 2);
    assert_eq!(s.deadline(), Some(t0 + 3 * ten / 2));
}

#[test]
fn concerns_names_the_camera_checked_for_permission() {
    let (mut s, now) = session(false, false);
    let d = req("DESCRIBE", URL, 1, "");
    assert_eq!(s.concerns(&d), Ok(Some(("s1", "cam1"))));
    assert_eq!(s.concerns(&req("OPTIONS", "*", 1, "")), Ok(None));
    assert_eq!(
        s.concerns(&req("DESCRIBE", "rtsp://h/s1/a%20b", 1, "")),
        Err(404)
    );
    assert_eq!(
        s.concerns(&req("DESCRIBE", "rtsp://h/-bad/cam", 1, "")),
        Err(404)
    );
    // PLAY plays what SETUP chose, whatever its URI says.
    s.request(&d, now);
    s.described(Ok(""));
    assert_eq!(
        s.concerns(&req("PLAY", "rtsp://h/s2/other", 2, "")),
        Ok(Some(("s1", "cam1")))
    );
}

#[test]
fn udp_viewers_expire_without_requests_or_reports() {
    let t0 = Instant::now();
    let min = Duration::from_secs(60);
    assert!(!expired(t0, None, t0 + min, min));
    assert!(expired(t0, None, t0 + min + Duration::from_millis(1), min));
    let report = t0 + Duration::from_secs(30);
    assert!(!expired(
        t0,
        Some(report),
        t0 + min + Duration::from_secs(1),
        min
    ));
    assert!(expired(
        t0,
        Some(report),
        report + min + Duration::from_secs(1),
        min
    ));
}

#[test]
fn interleaved_frames_between_requests_are_skipped() {
    let mut buf = vec![b'$', 1, 0, 3, 9, 9, 9];
    buf.extend_from_slice(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n");
    let (r, used) = next_request(&buf).expect("a request").expect("whole");
    assert_eq!((r.method, used), (Method::Options, buf.len()));
    // Half a frame: wait for more.
    assert!(next_request(&buf[..5]).expect("no error").is_none());
    assert!(next_request(b"BOGUS * RTSP/1.0\r\n\r\n").is_err());
}
