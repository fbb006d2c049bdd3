//! Logging setup shared by the binaries (control, data plane, site).

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`,
    /// `fields`), for log shippers.
    Json,
}

impl LogFormat {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Changes the filter of the running subscriber (set by [`init`]).
type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static SET_LEVEL: std::sync::OnceLock<SetLevel> = std::sync::OnceLock::new();

/// Logs to stderr with `level` as the filter, in `format` (ANSI colours
/// only for text on a terminal). Exits with status 2 and a one-line
/// reason on a bad filter. The filter can be changed later
/// ([`set_level`], on reload).
pub fn init(bin: &str, level: &str, format: LogFormat) {
    let filter = match tracing_subscriber::EnvFilter::try_new(level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{bin}: bad --log-level {level:?}: {e}");
            std::process::exit(2);
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    fn setter<L, S>(h: tracing_subscriber::reload::Handle<L, S>) -> SetLevel
    where
        L: From<tracing_subscriber::EnvFilter> + Send + Sync + 'static,
        S: 'static,
    {
        Box::new(move |level: &str| {
            let f = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            h.reload(f).map_err(|e| e.to_string())
        })
    }
    match format {
        LogFormat::Text => {
            let b = builder
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter_reloading();
            let _ = SET_LEVEL.set(setter(b.reload_handle()));
            b.init()
        }
        LogFormat::Json => {
            let b = builder
                .json()
                .with_current_span(false)
                .with_filter_reloading();
            let _ = SET_LEVEL.set(setter(b.reload_handle()));
            b.init()
        }
    }
}

/// Replaces the log filter of this process (a reload's `--log-level`).
pub fn set_level(level: &str) -> Result<(), String> {
    match SET_LEVEL.get() {
        Some(set) => set(level),
        None => Err("logging is not initialised".into()),
    }
}
