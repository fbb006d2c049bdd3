//! `SITE/SERVICE=ADDR:PORT`: a host port for a site's TCP service.

/// `SITE/SERVICE=ADDR:PORT`, for `--expose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expose {
    /// Site name.
    pub site: String,
    /// Service name.
    pub service: String,
    /// Host listen address.
    pub listen: std::net::SocketAddr,
}

/// Parses `SITE/SERVICE=ADDR:PORT`.
pub fn parse_expose(s: &str) -> Result<Expose, String> {
    let (left, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not SITE/SERVICE=ADDR:PORT"))?;
    let (site, service) = left
        .split_once('/')
        .ok_or_else(|| format!("{left:?} is not SITE/SERVICE"))?;
    crate::validate_site_name(site)?;
    if !crate::frame::valid_service_name(service) {
        return Err(format!(
            "service name {service:?} must be 1-64 of A-Z a-z 0-9 . _ -"
        ));
    }
    let listen = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not ADDR:PORT"))?;
    Ok(Expose {
        site: site.to_string(),
        service: service.to_string(),
        listen,
    })
}

impl std::fmt::Display for Expose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}={}", self.site, self.service, self.listen)
    }
}
