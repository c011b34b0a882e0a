//! One logging set-up for every Kiln binary (feature `logging`), and
//! [`redact`] for connection strings in log lines and errors.
//!
//! - `KILN_LOG` sets the filter (`RUST_LOG` is read when `KILN_LOG` is
//!   unset), in `tracing_subscriber`'s `EnvFilter` syntax; default
//!   [`DEFAULT_FILTER`].
//! - `KILN_LOG_FORMAT=json` writes one JSON object per line; anything else,
//!   or nothing, writes plain lines.
//!
//! Logs go to standard error, so standard output stays for results.

/// What is logged when neither `KILN_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn,aws=warn,hyper=warn,tower_http=info";

/// Installs the global subscriber (once per process; later calls do nothing).
#[cfg(feature = "logging")]
pub fn init() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KILN_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json_format(std::env::var("KILN_LOG_FORMAT").ok().as_deref()) {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(feature = "logging")]
fn json_format(value: Option<&str>) -> bool {
    value.is_some_and(|f| f.eq_ignore_ascii_case("json"))
}

/// A URL with its password hidden: `amqp://guest:***@host:5672/%2f`.
/// URLs without credentials are returned as they are.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact("postgres://kiln:p@ss@db/kiln"),
            "postgres://kiln:***@db/kiln"
        );
        assert_eq!(redact("postgres://db/kiln"), "postgres://db/kiln");
        assert_eq!(redact("amqp://host/v"), "amqp://host/v");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[cfg(feature = "logging")]
    #[test]
    fn json_is_chosen_by_the_format_variable() {
        assert!(json_format(Some("json")));
        assert!(json_format(Some("JSON")));
        assert!(!json_format(Some("text")));
        assert!(!json_format(None));
    }
}
