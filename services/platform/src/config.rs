//! Typed configuration shared by every service. Every key is a flag and an environment
//! variable; `.env.example` at the repository root documents them all.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::SecretString;

/// Settings every HTTP service needs.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpConfig {
    /// Address the HTTP server binds to.
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes; larger bodies get a 413 problem.
    #[arg(long, env = "HTTP_BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub body_limit_bytes: usize,
    /// A request that takes longer than this is answered with 503 and abandoned.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests and background work before exiting.
    /// Within the chart's 30 s termination grace, after its 5 s preStop pause.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long open keep-alive connections are still served, each answer
    /// carrying `Connection: close`, before idle ones are closed. A client busy on a
    /// connection then learns of the close from an answer instead of finding the connection
    /// gone as it sends its next request (which it could not safely repeat). Part of
    /// `shutdown_grace`.
    #[arg(long, env = "SHUTDOWN_DRAIN", default_value = "1s", value_parser = parse_duration)]
    pub shutdown_drain: Duration,
    #[command(flatten)]
    pub connections: ConnectionLimits,
}

/// What one TCP connection may cost the server: the defence against a client, buggy or hostile,
/// that opens connections and sends nothing, sends its headers a byte at a time, sends huge
/// headers, or opens thousands of connections.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ConnectionLimits {
    /// How long a connection may take to send a request's complete headers, counted from the
    /// moment the server waits for them: from the accept for the first request, from the end of
    /// the previous answer on a keep-alive connection (so it is also the idle timeout). The
    /// platform's own HTTP clients drop idle pooled connections sooner (after 5 s).
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; larger gets 431.
    #[arg(long, env = "HTTP_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Open connections the process serves at once; past it, new connections wait in the
    /// kernel's accept queue until one closes.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Open connections one client IP may hold; its next ones are answered 503 with
    /// `Retry-After` and closed. 0 turns the limit off, the default, because behind the gateway
    /// every request of every partner comes from the gateway's few addresses, and behind a
    /// NodePort or a load balancer from the nodes' (the chart leaves it off too).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 0)]
    pub max_connections_per_client: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(15),
            max_header_bytes: 32 * 1024,
            max_connections: 1024,
            max_connections_per_client: 0,
        }
    }
}

/// Settings of the PostgreSQL connection pool.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL (one database, one schema per bounded context).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Upper bound of pooled connections per process.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,
    /// Apply pending migrations at start-up (safe with several replicas: they serialise on a lock).
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
    /// How long start-up waits for a database that does not answer yet, retrying with backoff
    /// (the chart's in-cluster PostgreSQL starts beside the services); 0 fails at once.
    #[arg(long, env = "DATABASE_STARTUP_WAIT", default_value = "0s", value_parser = parse_duration)]
    pub database_startup_wait: Duration,
}

/// Settings of the Apache Pulsar client.
#[derive(Debug, Clone, clap::Args)]
pub struct PulsarConfig {
    /// Pulsar broker URL.
    #[arg(long, env = "PULSAR_URL", default_value = "pulsar://127.0.0.1:6650")]
    pub pulsar_url: String,
    /// Pulsar namespace (`tenant/namespace`) every topic lives in.
    #[arg(long, env = "PULSAR_NAMESPACE", default_value = "public/default")]
    pub pulsar_namespace: String,
    /// Prefix put before every topic name; lets test runs and tenants share one broker.
    #[arg(long, env = "PULSAR_TOPIC_PREFIX", default_value = "")]
    pub pulsar_topic_prefix: String,
    /// A token for Pulsar's token authentication (a JWT the broker's `tokenSecretKey` or
    /// `tokenPublicKey` verifies); anonymous when unset. Never printed.
    #[arg(long, env = "PULSAR_AUTH_TOKEN", hide_env_values = true)]
    pub pulsar_auth_token: Option<SecretString>,
    /// PEM file of the CA certificates a `pulsar+ssl://` broker's certificate is checked
    /// against; the system's roots when unset.
    #[arg(long, env = "PULSAR_TLS_TRUST_CERTS_FILE")]
    pub pulsar_tls_trust_certs_file: Option<PathBuf>,
}

/// Parses `250ms`, `5s`, `2m`, `1h`, `7d` or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(split) => raw.split_at(split),
        None => (raw, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration such as 500ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => return Err(format!("unknown duration unit `{other}` in `{raw}`")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{raw}` is not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    /// Tests and the payments worker build their config with `ConnectionLimits::default()`:
    /// it must be what a service started without flags gets.
    #[test]
    fn default_connection_limits_are_the_flag_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            limits: ConnectionLimits,
        }
        let variables = [
            "HTTP_HEADER_READ_TIMEOUT",
            "HTTP_MAX_HEADER_BYTES",
            "HTTP_MAX_CONNECTIONS",
            "HTTP_MAX_CONNECTIONS_PER_CLIENT",
        ];
        if let Some(set) = variables.iter().find(|v| std::env::var_os(v).is_some()) {
            panic!("{set} is set in the environment; the flag defaults cannot be read");
        }
        let bare = Flags::try_parse_from(["service"]).unwrap().limits;
        let defaults = ConnectionLimits::default();
        assert_eq!(bare.header_read_timeout, defaults.header_read_timeout);
        assert_eq!(bare.max_header_bytes, defaults.max_header_bytes);
        assert_eq!(bare.max_connections, defaults.max_connections);
        assert_eq!(
            bare.max_connections_per_client,
            defaults.max_connections_per_client
        );
    }
}
