//! Structured logs: JSON lines by default (`MEDALLION_LOG_FORMAT=text` for humans, coloured only
//! when stderr is a terminal), filtered by `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls do nothing.
pub fn init_logging() {
    init_logging_at("info");
}

/// As [`init_logging`], with `default_level` when `RUST_LOG` is not set (the demo logs errors
/// only, so its summary screen stays readable).
pub fn init_logging_at(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let text = std::env::var("MEDALLION_LOG_FORMAT").is_ok_and(|format| format == "text");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if text {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
    drop(result);
}
