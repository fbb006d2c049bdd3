//! Site redirector: when the host opens stream `cam.NAME`, connect to the
//! camera (RTSP, RTP interleaved over TCP), group its packets into access
//! units (keyframes and parameter sets found once, here) and send one feed
//! message per access unit on the stream.
//!
//! A camera URL may carry credentials (`rtsp://user:pass@host/path`): on a
//! 401 the request is retried once with Digest (preferred) or Basic
//! authorization, which then goes on every request of the session. The
//! password never appears in logs or errors.

use crate::tunnel::{Pipe, PipeHandler};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use revtun_proto::rtp::{self, Assembler};
use revtun_proto::rtsp::{self, Response};
use revtun_proto::rtsp_auth::{self, Authenticator, Credentials};
use revtun_proto::video::{self, FLAG_DISCONTINUITY, FLAG_KEY, FLAG_PARAMS};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Service-name prefix of cameras on the tunnel.
pub const CAMERA_PREFIX: &str = "cam.";
/// Largest buffered camera input before a whole frame must have parsed.
const MAX_PENDING: usize = 4 * 1024 * 1024;
/// Default time allowed for the camera's connect, each answer and each
/// read after PLAY (`revtun-site run --camera-timeout`).
pub const CAMERA_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `fut`, giving up with `what`'s message after `limit`.
async fn bounded<T>(
    limit: Duration,
    what: impl FnOnce() -> String,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match glommio::timer::timeout(limit, async { Ok(fut.await) }).await {
        Ok(r) => r,
        Err(_) => Err(what()),
    }
}

/// Tunnel handlers for the configured cameras (`NAME -> rtsp://...`);
/// `timeout` bounds every wait on a camera.
pub fn handlers(
    cameras: &HashMap<String, String>,
    timeout: Duration,
) -> HashMap<String, PipeHandler> {
    cameras
        .iter()
        .map(|(name, url)| {
            let (name2, url) = (name.clone(), url.clone());
            let h: PipeHandler = Rc::new(move |pipe: Pipe| {
                let (name, url) = (name2.clone(), url.clone());
                glommio::spawn_local(async move {
                    match feed(&pipe, &name, &url, timeout).await {
                        Ok(()) => tracing::info!(camera = %name, "feed ended"),
                        Err(e) => {
                            tracing::warn!(camera = %name, error = %e, "camera feed failed");
                            let mut msg = Vec::new();
                            video::header(video::KIND_GONE, e.len(), &mut msg);
                            msg.extend_from_slice(e.as_bytes());
                            let _ = pipe.send(&msg).await;
                        }
                    }
                    pipe.finish();
                })
                .detach();
            });
            (format!("{CAMERA_PREFIX}{name}"), h)
        })
        .collect()
}

struct Camera {
    /// The camera's name (for errors).
    name: String,
    sock: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
    session: Option<String>,
    /// Credentials from the URL, if any.
    creds: Option<Credentials>,
    /// Set by the first 401: answers every later request.
    auth: Option<Authenticator>,
    /// Longest wait for an answer or, after PLAY, for the next bytes.
    timeout: Duration,
}

impl Camera {
    /// Sends a request and returns its 200 response. A 401 is answered
    /// once, with the camera's new challenge; a second 401 in a row means
    /// the credentials were refused.
    async fn request(
        &mut self,
        method: &str,
        uri: &str,
        extra: &[(&str, &str)],
    ) -> Result<Response, String> {
        let mut answered = false;
        loop {
            let resp = self.exchange(method, uri, extra).await?;
            if resp.status == 200 {
                return Ok(resp);
            }
            if resp.status != 401 {
                return Err(format!("camera answered {method} with {}", resp.status));
            }
            let name = &self.name;
            let Some(creds) = &self.creds else {
                return Err(format!(
                    "camera {name} requires credentials (401 to {method}); \
                     give them in its URL: rtsp://USER:PASSWORD@HOST:PORT/PATH"
                ));
            };
            if answered {
                let scheme = self.auth.as_ref().map_or("", Authenticator::scheme);
                return Err(format!(
                    "camera {name}: credentials refused for user {:?} \
                     (401 to {method} with {scheme} authorization)",
                    creds.user()
                ));
            }
            let challenges = resp
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("WWW-Authenticate"))
                .map(|(_, v)| v.as_str());
            let challenge = rtsp_auth::choose(challenges).ok_or_else(|| {
                format!(
                    "camera {name} asks for an authentication scheme this client lacks \
                     (401 to {method}; Basic and Digest with MD5 are supported)"
                )
            })?;
            self.auth = Some(Authenticator::new(creds.clone(), challenge));
            answered = true;
        }
    }

    /// Sends one request (with `Authorization` once challenged) and reads
    /// its response, whatever the status.
    async fn exchange(
        &mut self,
        method: &str,
        uri: &str,
        extra: &[(&str, &str)],
    ) -> Result<Response, String> {
        self.cseq += 1;
        let mut req = format!(
            "{method} {uri} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: revtun-site\r\n",
            self.cseq
        );
        if let Some(s) = &self.session {
            req.push_str(&format!("Session: {s}\r\n"));
        }
        if let Some(auth) = &mut self.auth {
            let value = auth.authorization(method, uri, &cnonce()?);
            req.push_str(&format!("Authorization: {value}\r\n"));
        }
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let (limit, name) = (self.timeout, self.name.clone());
        bounded(
            limit,
            || format!("camera {name} did not answer {method} within {limit:?}"),
            async {
                self.sock
                    .write_all(req.as_bytes())
                    .await
                    .map_err(|e| format!("camera write: {e}"))?;
                loop {
                    match rtsp::parse_response(&self.buf) {
                        Ok(Some((resp, used))) => {
                            self.buf.drain(..used);
                            return Ok(resp);
                        }
                        Ok(None) => self.read_more().await?,
                        Err(e) => return Err(format!("camera response: {e}")),
                    }
                }
            },
        )
        .await
    }

    /// Reads more camera bytes; a camera silent for the timeout is given up.
    async fn fill(&mut self) -> Result<(), String> {
        let (limit, name) = (self.timeout, self.name.clone());
        bounded(
            limit,
            || format!("camera {name} sent nothing for {limit:?}"),
            self.read_more(),
        )
        .await
    }

    async fn read_more(&mut self) -> Result<(), String> {
        if self.buf.len() > MAX_PENDING {
            return Err("camera sent too much unparsed data".into());
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let n = self
            .sock
            .read(&mut chunk)
            .await
            .map_err(|e| format!("camera read: {e}"))?;
        if n == 0 {
            return Err("the camera closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// A fresh Digest client nonce: 16 random hex digits.
fn cnonce() -> Result<String, String> {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| "no randomness for the Digest cnonce".to_string())?;
    Ok(revtun_proto::hex::encode(&b))
}

/// Connects to the camera and pumps access units into `pipe` until either
/// side goes away.
async fn feed(pipe: &Pipe, name: &str, url: &str, timeout: Duration) -> Result<(), String> {
    let parsed = rtsp_auth::split_credentials(url).map_err(|e| format!("camera {name}: {e}"))?;
    tracing::info!(camera = %name, url = %rtsp_auth::redact(url), "pulling camera");
    // Requests go to the URL without user info; credentials go in headers.
    let url = parsed.url.as_str();
    let authority = parsed.authority.as_str();
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:554")
    };
    let sock = glommio::timer::timeout(timeout, async {
        TcpStream::connect(addr.as_str())
            .await
            .map_err(|e| glommio::GlommioError::IoError(std::io::Error::other(e.to_string())))
    })
    .await
    .map_err(|e| format!("cannot reach camera {addr}: {e}"))?;
    let _ = sock.set_nodelay(true);
    let mut cam = Camera {
        name: name.to_string(),
        sock,
        buf: Vec::new(),
        cseq: 0,
        session: None,
        creds: parsed.credentials,
        auth: None,
        timeout,
    };
    let desc = cam
        .request("DESCRIBE", url, &[("Accept", "application/sdp")])
        .await?;
    let sdp = String::from_utf8(desc.body.clone()).map_err(|_| "SDP is not UTF-8".to_string())?;
    let track = video::video_track(&sdp).ok_or("the camera offers no H.264 or H.265 video")?;
    for t in video::unrelayed_tracks(&sdp) {
        tracing::warn!(camera = %name, track = %t, "this track of the camera is not relayed (only its H.264/H.265 video is)");
    }
    let base = desc
        .header("Content-Base")
        .map(str::to_string)
        .unwrap_or_else(|| url.to_string());
    let setup_url = video::resolve(&base, track.control.as_deref());
    // RTP over the RTSP connection first; a camera that refuses it (461)
    // is pulled over UDP on the site's network instead (the tunnel still
    // carries TCP).
    let mut udp = None;
    let setup = match cam
        .request(
            "SETUP",
            &setup_url,
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
        )
        .await
    {
        Ok(r) => r,
        Err(e) if e.ends_with(" with 461") => {
            let socks = UdpPull::bind(cam.sock.peer_addr().map_err(|e| e.to_string())?.ip())?;
            let t = format!(
                "RTP/AVP;unicast;client_port={}-{}",
                socks.ports.0, socks.ports.1
            );
            tracing::info!(camera = %name, "the camera refuses RTP over TCP (461): pulling it over UDP");
            let r = cam
                .request("SETUP", &setup_url, &[("Transport", &t)])
                .await?;
            udp = Some(socks);
            r
        }
        Err(e) => return Err(e),
    };
    let session = setup.header("Session").ok_or("no Session in SETUP reply")?;
    cam.session = Some(
        session
            .split(';')
            .next()
            .unwrap_or(session)
            .trim()
            .to_string(),
    );
    // The audio track, beside the video: on channels 2-3, or over UDP
    // for a camera pulled over UDP. One that cannot be set up is left out
    // of the SDP the host gets.
    let mut sdp = sdp;
    if let Some(audio) = video::audio_track(&sdp) {
        let audio_url = video::resolve(&base, audio.control.as_deref());
        let set_up = match udp.as_mut() {
            Some(socks) => match socks.bind_audio() {
                Ok(ports) => {
                    let t = format!("RTP/AVP;unicast;client_port={}-{}", ports.0, ports.1);
                    cam.request("SETUP", &audio_url, &[("Transport", &t)]).await
                }
                Err(e) => Err(e),
            },
            None => {
                cam.request(
                    "SETUP",
                    &audio_url,
                    &[("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3")],
                )
                .await
            }
        };
        match set_up {
            Ok(_) => {
                tracing::info!(camera = %name, encoding = %audio.encoding, over_udp = udp.is_some(), "relaying the camera's audio")
            }
            Err(e) => {
                if let Some(socks) = udp.as_mut() {
                    socks.audio = None;
                }
                sdp = video::without_audio(&sdp);
                tracing::warn!(camera = %name, encoding = %audio.encoding, error = %e, "the camera's audio track is not relayed")
            }
        }
    }
    cam.request("PLAY", &base, &[("Range", "npt=0.000-")])
        .await?;
    let mut msg = Vec::new();
    video::header(video::KIND_SDP, sdp.len(), &mut msg);
    msg.extend_from_slice(sdp.as_bytes());
    pipe.send(&msg).await.map_err(|e| e.to_string())?;
    let mut packer = Packer::new(track.codec);
    if let Some(socks) = udp {
        return socks.pull(&mut cam, &base, &mut packer, pipe).await;
    }
    loop {
        // Everything after PLAY is interleaved data (or a stray response).
        loop {
            if cam.buf.first() == Some(&b'R') {
                match rtsp::parse_response(&cam.buf) {
                    Ok(Some((_, used))) => {
                        cam.buf.drain(..used);
                        continue;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(format!("camera response: {e}")),
                }
            }
            let Some((channel, range, used)) =
                rtp::interleaved(&cam.buf).map_err(|e| e.to_string())?
            else {
                break;
            };
            if channel == 0 {
                let pkt = cam.buf[range].to_vec();
                packer.push(pkt, pipe).await?;
            } else if channel == 2 {
                let pkt = cam.buf[range].to_vec();
                packer.audio(&pkt, pipe).await?;
            }
            cam.buf.drain(..used);
        }
        cam.fill().await?;
    }
}

/// Groups a camera's RTP packets into access units and sends each as one
/// feed message.
struct Packer {
    asm: Assembler,
    seq: u32,
    /// Packets of the unit being assembled, by arrival index (the camera
    /// input buffer moves on, so each packet is kept until its unit leaves).
    held: std::collections::BTreeMap<usize, Vec<u8>>,
    next_idx: usize,
    msg: Vec<u8>,
}

impl Packer {
    fn new(codec: rtp::Codec) -> Packer {
        Packer {
            asm: Assembler::new(codec),
            seq: 0,
            held: std::collections::BTreeMap::new(),
            next_idx: 0,
            msg: Vec::new(),
        }
    }

    /// Sends one audio packet as it is, as one unit.
    async fn audio(&mut self, pkt: &[u8], pipe: &Pipe) -> Result<(), String> {
        let Ok(h) = rtp::parse(pkt) else {
            return Ok(());
        };
        self.msg.clear();
        video::encode_unit(
            video::FLAG_AUDIO,
            h.timestamp,
            self.seq,
            &[pkt],
            &mut self.msg,
        );
        self.seq = self.seq.wrapping_add(1);
        pipe.send(&self.msg).await.map_err(|e| e.to_string())
    }

    /// Takes one RTP packet; sends the access units it completes.
    async fn push(&mut self, pkt: Vec<u8>, pipe: &Pipe) -> Result<(), String> {
        let idx = self.next_idx;
        self.next_idx += 1;
        let units = self
            .asm
            .push(&pkt, idx..idx + 1)
            .map_err(|e| e.to_string())?;
        self.held.insert(idx, pkt);
        if self.held.len() > self.asm.max_packets + 1 {
            return Err("camera sent an access unit beyond the packet limit".into());
        }
        for unit in units {
            let mut flags = 0;
            if unit.keyframe {
                flags |= FLAG_KEY;
            }
            if unit.params {
                flags |= FLAG_PARAMS;
            }
            if unit.discontinuity {
                flags |= FLAG_DISCONTINUITY;
            }
            let taken: Vec<Vec<u8>> = unit
                .packets
                .iter()
                .filter_map(|r| self.held.remove(&r.start))
                .collect();
            let packets: Vec<&[u8]> = taken.iter().map(Vec::as_slice).collect();
            self.msg.clear();
            video::encode_unit(flags, unit.timestamp, self.seq, &packets, &mut self.msg);
            self.seq = self.seq.wrapping_add(1);
            pipe.send(&self.msg).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// How often a camera pulled over UDP is sent OPTIONS on its RTSP
/// connection, so its session does not time out.
const UDP_KEEPALIVE: Duration = Duration::from_secs(20);
/// Nothing arrived for this long: packets waiting for a gap are sent on.
const REORDER_WAIT: Duration = Duration::from_millis(50);

/// The site's UDP sockets for a camera that streams only over UDP: RTP and
/// RTCP, on the site's network; datagrams from any address but the
/// camera's are dropped.
struct UdpPull {
    rtp: Rc<glommio::net::UdpSocket>,
    _rtcp: glommio::net::UdpSocket,
    /// The audio track's RTP socket (and its RTCP one), when set up.
    audio: Option<(Rc<glommio::net::UdpSocket>, glommio::net::UdpSocket)>,
    camera: std::net::IpAddr,
    ports: (u16, u16),
}

/// Datagrams waiting between a UDP socket's reader and the packer.
const UDP_QUEUE: usize = 256;

impl UdpPull {
    fn pair(
        camera: std::net::IpAddr,
    ) -> Result<(glommio::net::UdpSocket, glommio::net::UdpSocket, (u16, u16)), String> {
        let any: std::net::SocketAddr = if camera.is_ipv4() {
            "0.0.0.0:0".parse().map_err(|_| "address".to_string())?
        } else {
            "[::]:0".parse().map_err(|_| "address".to_string())?
        };
        let bind = || {
            glommio::net::UdpSocket::bind(any)
                .map_err(|e| format!("cannot bind a UDP port for the camera: {e}"))
        };
        let (rtp, rtcp) = (bind()?, bind()?);
        let port = |s: &glommio::net::UdpSocket| {
            s.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
        };
        let ports = (port(&rtp)?, port(&rtcp)?);
        Ok((rtp, rtcp, ports))
    }

    fn bind(camera: std::net::IpAddr) -> Result<UdpPull, String> {
        let (rtp, rtcp, ports) = UdpPull::pair(camera)?;
        Ok(UdpPull {
            rtp: Rc::new(rtp),
            _rtcp: rtcp,
            audio: None,
            camera,
            ports,
        })
    }

    /// Binds the audio track's sockets; their ports.
    fn bind_audio(&mut self) -> Result<(u16, u16), String> {
        let (rtp, rtcp, ports) = UdpPull::pair(self.camera)?;
        self.audio = Some((Rc::new(rtp), rtcp));
        Ok(ports)
    }

    /// Receives the camera's RTP until it goes silent for the camera
    /// timeout or the pipe closes: reordered, grouped, sent on.
    async fn pull(
        self,
        cam: &mut Camera,
        base: &str,
        packer: &mut Packer,
        pipe: &Pipe,
    ) -> Result<(), String> {
        // One reader per socket into one bounded queue: waiting on the
        // queue with a timeout loses no datagram (a cancelled receive
        // could).
        let (tx, rx) = glommio::channels::local_channel::new_bounded(UDP_QUEUE);
        let tx = Rc::new(tx);
        let camera = self.camera;
        let reader = |sock: Rc<glommio::net::UdpSocket>, audio: bool| {
            let tx = tx.clone();
            glommio::spawn_local(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let got = sock.recv_from(&mut buf).await;
                    let item = match got {
                        // Someone else's datagram: dropped.
                        Ok((_, from)) if from.ip() != camera => continue,
                        Ok((n, _)) => Ok((audio, buf[..n].to_vec())),
                        Err(e) => Err(e.to_string()),
                    };
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
            })
        };
        let _readers: Vec<glommio::Task<()>> = std::iter::once(reader(self.rtp.clone(), false))
            .chain(self.audio.as_ref().map(|(a, _)| reader(a.clone(), true)))
            .collect();
        let mut reorder = revtun_proto::rtp::Reorder::default();
        let mut last_packet = std::time::Instant::now();
        let mut last_keepalive = std::time::Instant::now();
        loop {
            if last_keepalive.elapsed() >= UDP_KEEPALIVE {
                cam.request("OPTIONS", base, &[]).await?;
                last_keepalive = std::time::Instant::now();
            }
            let got = glommio::timer::timeout(REORDER_WAIT, async { Ok(rx.recv().await) }).await;
            let ready = match got {
                Ok(Some(Ok((false, pkt)))) => {
                    last_packet = std::time::Instant::now();
                    match rtp::parse(&pkt) {
                        Ok(h) => reorder.push(h.seq, pkt),
                        Err(_) => Vec::new(),
                    }
                }
                // Audio goes on as it arrives: each packet is a unit.
                Ok(Some(Ok((true, pkt)))) => {
                    packer.audio(&pkt, pipe).await?;
                    Vec::new()
                }
                Ok(Some(Err(e))) => return Err(format!("camera UDP: {e}")),
                Ok(None) => return Err("camera UDP: the readers ended".into()),
                Err(_) => {
                    if last_packet.elapsed() > cam.timeout {
                        return Err(format!(
                            "camera {} sent nothing over UDP for {:?}",
                            cam.name, cam.timeout
                        ));
                    }
                    reorder.flush()
                }
            };
            for pkt in ready {
                packer.push(pkt, pipe).await?;
            }
        }
    }
}
