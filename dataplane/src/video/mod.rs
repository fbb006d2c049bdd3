//! The video redirectors: the site side pulls a camera's RTSP stream and
//! sends access units through the tunnel once; the host side serves RTSP
//! viewers and fans each access unit out without copying it per viewer.

pub mod auth;
pub mod feed;
pub mod host;
pub mod mesh;
pub mod sessions;
pub mod site;
pub mod udp;
pub mod wire;
pub mod writer;
