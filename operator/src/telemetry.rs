//! Logging: tracing-subscriber with an `EnvFilter` (`RUST_LOG`, default `info`), JSON or text.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Log level used when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,kube=warn";

/// Installs the global subscriber. Safe to call twice (the second call is a no-op), so
/// tests and `main` do not fight over it.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // An already installed subscriber (tests) is fine.
    drop(result);
}
