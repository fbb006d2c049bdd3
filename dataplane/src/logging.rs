//! Logging setup shared by the data-plane binaries.

/// Logs to stderr with `level` as the filter (ANSI colours only on a
/// terminal). Exits with status 2 and a one-line reason on a bad filter.
pub fn init(bin: &str, level: &str) {
    let filter = match tracing_subscriber::EnvFilter::try_new(level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{bin}: bad --log-level {level:?}: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
