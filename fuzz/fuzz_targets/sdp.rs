//! Session descriptions from cameras: the track finder, the video-only
//! filter the host serves to viewers, and control URL resolution. Nothing
//! panics; the filtered SDP still describes the same video track.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::video;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else { return };
    let track = video::video_track(sdp);
    if let Some(filtered) = video::video_only_sdp(sdp) {
        let again = video::video_track(&filtered);
        assert_eq!(again.map(|t| t.codec), track.as_ref().map(|t| t.codec));
    }
    if let Some(t) = track {
        let _ = video::resolve("rtsp://127.0.0.1:554/cam", t.control.as_deref());
    }
    let mut mid = sdp.len() / 2;
    while !sdp.is_char_boundary(mid) {
        mid -= 1;
    }
    let (base, control) = sdp.split_at(mid);
    let _ = video::resolve(base, Some(control));
});
