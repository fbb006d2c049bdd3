//! Command-line pieces shared by the host data plane and the site agent.

use crate::video::host::VideoConfig;
use revtun_proto::tunnel::Config;
use std::time::Duration;

/// glommio's registered buffer memory per executor. Its 10 MiB default was
/// most of an idle process's resident memory (an idle site agent: 18 MiB
/// RSS; 9.5 MiB with 2 MiB here). Measured with `revtun-perf throughput`:
/// 2 MiB keeps the full single-stream rate (12.2-12.4 Gbit/s, as with
/// 10 MiB), 256 KiB cost about a fifth of it, so glommio's socket I/O
/// draws on this pool too.
pub const GLOMMIO_IO_MEMORY: usize = 2 << 20;

/// Tunnel flags (both ends).
#[derive(Debug, Clone, clap::Args)]
pub struct TunnelArgs {
    /// Receive window per stream at first, bytes.
    #[arg(long, default_value_t = Config::default().stream_window)]
    pub stream_window: u32,
    /// Receive window per tunnel at first, bytes.
    #[arg(long, default_value_t = Config::default().tunnel_window)]
    pub tunnel_window: u32,
    /// Largest a stream's receive window grows to (it doubles while it,
    /// not the path, limits the stream); the most a stalled stream holds.
    #[arg(long, default_value_t = Config::default().max_stream_window)]
    pub max_stream_window: u32,
    /// Largest the tunnel's receive window grows to; the most a tunnel's
    /// receive side holds.
    #[arg(long, default_value_t = Config::default().max_tunnel_window)]
    pub max_tunnel_window: u32,
    /// Streams the peer may have open at once.
    #[arg(long, default_value_t = Config::default().max_streams)]
    pub max_streams: u32,
    /// Heartbeat: send a ping after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Declare the tunnel dead when nothing arrived for this long.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub dead_after: Duration,
    /// Stream opens and resets the peer may send per second before the
    /// tunnel is closed (0 = no limit).
    #[arg(long, default_value_t = Config::default().max_churn_per_sec)]
    pub max_stream_churn: u32,
    /// Streams this end opens per second at most (clients beyond get a
    /// reset); keep it under half the peer's --max-stream-churn (0 = no limit).
    #[arg(long, default_value_t = Config::default().max_opens_per_sec)]
    pub max_stream_opens: u32,
}

impl TunnelArgs {
    /// The protocol configuration.
    pub fn config(&self) -> Config {
        Config {
            stream_window: self.stream_window.max(1),
            tunnel_window: self.tunnel_window.max(1),
            max_stream_window: self.max_stream_window.max(self.stream_window.max(1)),
            max_tunnel_window: self.max_tunnel_window.max(self.tunnel_window.max(1)),
            max_streams: self.max_streams.max(1),
            ping_interval: self.heartbeat,
            dead_after: self.dead_after.max(self.heartbeat),
            max_churn_per_sec: self.max_stream_churn,
            max_pings_per_sec: Config::default().max_pings_per_sec,
            max_opens_per_sec: self.max_stream_opens,
        }
    }
}

/// Redirector (video) flags of the host data plane.
#[derive(Debug, Clone, clap::Args)]
pub struct VideoArgs {
    /// Live camera streams per site; more are refused with RTSP 453.
    #[arg(long, default_value_t = VideoConfig::default().max_streams_per_site)]
    pub max_site_streams: usize,
    /// Bit rate a site's live streams may use together before new streams
    /// are refused with RTSP 453 (e.g. 40M; 0 = no limit).
    #[arg(long, default_value = "0", value_parser = revtun_proto::duration::parse_rate)]
    pub max_site_bandwidth: u64,
    /// Bytes queued per viewer before it skips to the next keyframe.
    #[arg(long, default_value_t = VideoConfig::default().viewer_max_bytes)]
    pub viewer_queue_bytes: usize,
    /// Age of a viewer's oldest queued frame before it skips to the next keyframe.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub viewer_queue_age: Duration,
    /// A viewer whose socket takes nothing for this long is disconnected.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub viewer_stuck: Duration,
    /// A camera stream stays open this long after its last viewer left.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub video_linger: Duration,
    /// Serve RTSP viewers without credentials (every camera of every site
    /// to anyone who reaches the port). Off by default.
    #[arg(long)]
    pub allow_anonymous_viewers: bool,
    /// RTSP connections at once, all sources (further capped to half the
    /// descriptors left after a reserve of 256).
    #[arg(long, default_value_t = VideoConfig::default().sessions.total)]
    pub max_rtsp_sessions: usize,
    /// RTSP connections at once from one source address (an IPv6 /64
    /// counts as one); 0 = no limit.
    #[arg(long, default_value_t = VideoConfig::default().sessions.per_source)]
    pub max_rtsp_sessions_per_addr: usize,
    /// Viewers playing one camera at once; more get RTSP 453. 0 = no limit.
    #[arg(long, default_value_t = VideoConfig::default().sessions.per_camera)]
    pub max_viewers_per_camera: usize,
    /// Before PLAY, each RTSP request must arrive whole within this time
    /// of the connection or the previous reply, and each reply be taken
    /// by the client within it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub rtsp_request_timeout: Duration,
    /// UDP port RTP goes out from to UDP viewers (`server_port`; 0 picks
    /// one); opened beside the RTSP listener, on its address.
    #[arg(long, default_value_t = 8000)]
    pub rtp_port: u16,
    /// UDP port of RTCP (sender reports out, receiver reports in).
    #[arg(long, default_value_t = 8001)]
    pub rtcp_port: u16,
    /// Serve RTP inside the RTSP connection only: no UDP sockets, a UDP
    /// SETUP gets 461 (players then fall back to TCP).
    #[arg(long)]
    pub tcp_only_viewers: bool,
    /// Largest RTP payload in one UDP datagram; larger NAL units are
    /// split into fragmentation units.
    #[arg(long, default_value_t = 1400, value_parser = clap::value_parser!(u16).range(200..=65000))]
    pub rtp_mtu: u16,
    /// A UDP viewer that sends no RTSP request and no RTCP receiver
    /// report for this long is dropped.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub rtp_timeout: Duration,
    /// Serve multicast viewers (`RTP/AVP;multicast`) from this IPv4 range,
    /// e.g. 239.255.0.0/24: one group per camera per shard, sent once
    /// whatever the number of viewers, released when the last one leaves.
    #[arg(long, value_name = "CIDR", value_parser = parse_multicast_range)]
    pub multicast_range: Option<String>,
    /// TTL of multicast packets (1: the local network only).
    #[arg(long, default_value_t = 1)]
    pub multicast_ttl: u8,
    /// Destination UDP port of multicast RTP (RTCP: the next one; the
    /// audio track's RTP and RTCP: the two after), which multicast viewers
    /// bind; not the host's own --rtp-port.
    #[arg(long, default_value_t = 8002, value_parser = clap::value_parser!(u16).range(1..65533))]
    pub multicast_port: u16,
}

fn parse_multicast_range(s: &str) -> Result<String, String> {
    revtun_proto::transport::parse_multicast_range(s).map(|_| s.to_string())
}

impl VideoArgs {
    /// The redirector configuration.
    pub fn config(&self) -> VideoConfig {
        VideoConfig {
            viewer_max_bytes: self.viewer_queue_bytes.max(64 * 1024),
            viewer_max_age: self.viewer_queue_age,
            viewer_stuck: self.viewer_stuck.max(Duration::from_millis(100)),
            max_streams_per_site: self.max_site_streams,
            max_site_bps: self.max_site_bandwidth,
            linger: self.video_linger,
            allow_anonymous: self.allow_anonymous_viewers,
            sessions: crate::video::sessions::SessionLimits {
                total: self.max_rtsp_sessions.max(1),
                per_source: self.max_rtsp_sessions_per_addr,
                per_camera: self.max_viewers_per_camera,
            },
            request_timeout: self.rtsp_request_timeout.max(Duration::from_millis(100)),
            rtp_mtu: usize::from(self.rtp_mtu),
            rtp_timeout: self.rtp_timeout.max(Duration::from_secs(1)),
            ..VideoConfig::default()
        }
    }
}

/// Parses a duration flag.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    revtun_proto::duration::parse(s)
}

/// `NAME=HOST:PORT`, for `--service`.
pub fn parse_service(s: &str) -> Result<(String, String), String> {
    let (name, target) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=HOST:PORT"))?;
    if !revtun_proto::frame::valid_service_name(name) {
        return Err(format!(
            "service name {name:?} must be 1-64 of A-Z a-z 0-9 . _ -"
        ));
    }
    if !target.contains(':') {
        return Err(format!("service target {target:?} is not HOST:PORT"));
    }
    Ok((name.to_string(), target.to_string()))
}

pub use revtun_proto::expose::{parse_expose, Expose};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert_eq!(
            parse_service("web=127.0.0.1:80"),
            Ok(("web".into(), "127.0.0.1:80".into()))
        );
        assert!(parse_service("web").is_err());
        assert!(parse_service("we b=h:1").is_err());
        let e = parse_expose("site-a/web=127.0.0.1:8080").expect("parses");
        assert_eq!(e.to_string(), "site-a/web=127.0.0.1:8080");
        assert!(parse_expose("site-a=127.0.0.1:1").is_err());
        assert!(parse_expose("Site/web=127.0.0.1:1").is_err());
        assert!(parse_expose("s/web=nowhere").is_err());
    }
}
