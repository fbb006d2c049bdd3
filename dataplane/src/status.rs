//! The host's live status (`revtun-keytool status`): which sites are
//! connected, since when, from where, bytes each way, open streams, live
//! cameras and viewers.
//!
//! Control creates the socket (`STATE_DIR/status.sock`, mode 0600 in the
//! 0700 state directory) and hands its listening descriptor to each data
//! plane it starts (`--status-fd`), so the socket outlives data-plane
//! restarts. Each shard posts its part once a second with its metrics
//! snapshot ([`crate::metrics::Board`]); a plain thread answers one
//! request at a time from the latest posts, so a status request costs the
//! shards nothing.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

/// One connected site, as one shard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelStatus {
    /// Site name.
    pub site: String,
    /// Shard holding the tunnel.
    pub shard: usize,
    /// When the tunnel started, seconds since the Unix epoch.
    pub since: u64,
    /// The site's address as the host sees it.
    pub peer: String,
    /// Bytes read from the tunnel socket.
    pub bytes_in: u64,
    /// Bytes written to it.
    pub bytes_out: u64,
    /// Streams open now.
    pub streams: u64,
}

/// Video of one site on one shard: cameras streaming (origin feeds) and
/// viewers watching (origin and mirrors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoStatus {
    /// Site name.
    pub site: String,
    /// Cameras with a live feed from this site (counted on its shard).
    pub cameras: u64,
    /// Viewers on this shard.
    pub viewers: u64,
}

/// What one shard posts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStatus {
    /// Its tunnels.
    pub tunnels: Vec<TunnelStatus>,
    /// Its video.
    pub video: Vec<VideoStatus>,
    /// Its peer links to other fleet hosts.
    pub peers: Vec<crate::peer::LinkStatus>,
}

/// Longest a status request may take to arrive and be answered.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

fn esc(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The status as JSON: `{"sites": [...], "totals": {...}}`, sites by name.
pub fn render(shards: &[ShardStatus]) -> String {
    let mut tunnels: Vec<&TunnelStatus> = shards.iter().flat_map(|s| &s.tunnels).collect();
    tunnels.sort_by(|a, b| a.site.cmp(&b.site));
    let video = |site: &str| {
        shards
            .iter()
            .flat_map(|s| &s.video)
            .filter(|v| v.site == site)
            .fold((0, 0), |(c, v), x| (c + x.cameras, v + x.viewers))
    };
    let mut sites = Vec::new();
    let mut tot = [0u64; 5];
    for t in &tunnels {
        let (cameras, viewers) = video(&t.site);
        for (i, v) in [t.bytes_in, t.bytes_out, t.streams, cameras, viewers]
            .into_iter()
            .enumerate()
        {
            tot[i] += v;
        }
        sites.push(format!(
            "{{\"site\":{},\"shard\":{},\"since\":{},\"peer\":{},\"bytes_in\":{},\"bytes_out\":{},\"streams\":{},\"cameras\":{cameras},\"viewers\":{viewers}}}",
            esc(&t.site),
            t.shard,
            t.since,
            esc(&t.peer),
            t.bytes_in,
            t.bytes_out,
            t.streams
        ));
    }
    let peers: Vec<String> = shards
        .iter()
        .enumerate()
        .flat_map(|(k, s)| s.peers.iter().map(move |p| (k, p)))
        .map(|(k, p)| {
            format!(
                "{{\"host\":{},\"shard\":{k},\"remote_shard\":{},\"streams\":{},\"bytes_in\":{},\"bytes_out\":{}}}",
                esc(&p.host),
                p.remote_shard.map_or("null".to_string(), |r| r.to_string()),
                p.streams,
                p.bytes.0,
                p.bytes.1
            )
        })
        .collect();
    format!(
        "{{\"peers\":[{}],\"sites\":[{}],\"totals\":{{\"sites\":{},\"bytes_in\":{},\"bytes_out\":{},\"streams\":{},\"cameras\":{},\"viewers\":{}}}}}\n",
        peers.join(","),
        sites.join(","),
        tunnels.len(),
        tot[0],
        tot[1],
        tot[2],
        tot[3],
        tot[4]
    )
}

/// Answers status requests on `listener` forever (a thread): each client
/// sends one line and gets the JSON, within [`REQUEST_DEADLINE`].
pub fn serve(listener: UnixListener, board: Arc<crate::metrics::Board>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("revtun-status".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = answer(c, &board) {
                            tracing::debug!(error = %e, "status request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "status accept failed");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        })?;
    Ok(())
}

fn answer(mut c: UnixStream, board: &crate::metrics::Board) -> std::io::Result<()> {
    c.set_read_timeout(Some(REQUEST_DEADLINE))?;
    c.set_write_timeout(Some(REQUEST_DEADLINE))?;
    // One short line (its content is not needed: there is one request).
    let mut line = [0u8; 64];
    let mut got = 0;
    while got < line.len() && !line[..got].contains(&b'\n') {
        let n = c.read(&mut line[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    c.write_all(render(&board.status()).as_bytes())
}

/// Asks the host whose state directory holds `socket` for its status.
pub fn request(socket: &std::path::Path) -> std::io::Result<String> {
    let mut c = UnixStream::connect(socket)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(b"status\n")?;
    let mut out = String::new();
    c.take(16 << 20).read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_are_summed_across_shards() {
        let a = ShardStatus {
            peers: vec![],
            tunnels: vec![TunnelStatus {
                site: "paris".into(),
                shard: 0,
                since: 10,
                peer: "127.0.0.1:5".into(),
                bytes_in: 3,
                bytes_out: 4,
                streams: 1,
            }],
            video: vec![VideoStatus {
                site: "paris".into(),
                cameras: 1,
                viewers: 2,
            }],
        };
        let b = ShardStatus {
            peers: vec![],
            tunnels: vec![],
            video: vec![VideoStatus {
                site: "paris".into(),
                cameras: 0,
                viewers: 5,
            }],
        };
        let v: serde_json::Value = serde_json::from_str(&render(&[a, b])).expect("json");
        assert_eq!(v["sites"][0]["viewers"], 7);
        assert_eq!(v["sites"][0]["cameras"], 1);
        assert_eq!(v["totals"]["sites"], 1);
        assert_eq!(v["totals"]["bytes_out"], 4);
        assert_eq!(v["sites"][0]["peer"], "127.0.0.1:5");
    }
}
