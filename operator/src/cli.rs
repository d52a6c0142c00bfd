//! Command line: `run` (default), `crd`, `render -f FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::controller::RESYNC_INTERVAL;
use crate::crd::DEFAULT_IMAGE;
use crate::desired::{PodDefaults, redis};
use crate::error::Error;

#[derive(Debug, Parser)]
#[command(
    name = "scalable-api-operator",
    version,
    about = "Turns a ScalableApi into a production-shaped API stack"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Arguments of `run`, also accepted without the subcommand.
    #[command(flatten)]
    pub run: RunArgs,
}

impl Cli {
    /// The subcommand to execute; `run` when none was given.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Run(self.run))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the ScalableApi CustomResourceDefinition as YAML.
    Crd,
    /// Print the children a ScalableApi becomes, without a cluster.
    Render(RenderArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Watch only this namespace (default, or empty: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Watch only these namespaces, comma-separated (needs only a Role in each; not together
    /// with --namespace).
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    #[command(flatten)]
    pub pod: PodArgs,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Take a coordination.k8s.io Lease before reconciling, so replicas are safe.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "scalable-api-operator")]
    pub lease_name: String,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Identity in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Seconds between re-checks of a healthy ScalableApi, in case a watch event was missed.
    #[arg(long, env = "RESYNC_INTERVAL_SECONDS", default_value_t = RESYNC_INTERVAL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_interval_seconds: u64,
}

impl RunArgs {
    /// The re-check interval of a healthy ScalableApi.
    pub fn resync_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.resync_interval_seconds)
    }

    /// The namespace to watch; `None` means all. An empty `WATCH_NAMESPACE` (what a
    /// templated manifest easily produces) means all too, not a namespace named "".
    pub fn watch_namespace(&self) -> Option<&str> {
        self.namespace
            .as_deref()
            .map(str::trim)
            .filter(|ns| !ns.is_empty())
    }
}

impl RunArgs {
    /// The namespaces to watch, from `--namespace` or `--namespaces`; empty means all.
    /// Blank entries are dropped and repeats removed; both flags at once are an error.
    pub fn watch_namespaces(&self) -> Result<Vec<String>, Error> {
        let mut many: Vec<String> = Vec::new();
        for ns in self.namespaces.iter().map(|ns| ns.trim()) {
            if !ns.is_empty() && !many.iter().any(|seen| seen == ns) {
                many.push(ns.to_owned());
            }
        }
        match (self.watch_namespace(), many.is_empty()) {
            (Some(_), false) => Err(Error::NamespaceFlagsConflict),
            (Some(one), true) => Ok(vec![one.to_owned()]),
            (None, _) => Ok(many),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    /// ScalableApi YAML file; `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    #[command(flatten)]
    pub pod: PodArgs,
}

/// Operator-wide choices for the pods of every ScalableApi (`run` and `render`).
#[derive(Debug, Clone, Args)]
pub struct PodArgs {
    /// Image for ScalableApis without spec.image.
    #[arg(long, env = "DEFAULT_API_IMAGE", default_value = DEFAULT_IMAGE)]
    pub default_image: String,
    /// Cache sidecar image for ScalableApis without spec.cache.image.
    #[arg(long, env = "DEFAULT_CACHE_IMAGE", default_value = redis::DEFAULT_IMAGE)]
    pub default_cache_image: String,
    /// runAsUser, runAsGroup and fsGroup of every pod; `platform` sets none of them, for
    /// platforms that assign them (OpenShift's restricted-v2 SCC).
    #[arg(long, env = "POD_UID", default_value = "65532", value_parser = parse_pod_uid)]
    pub pod_uid: PodUid,
}

/// `--pod-uid`: a fixed numeric id, or the platform's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodUid {
    Fixed(i64),
    Platform,
}

fn parse_pod_uid(value: &str) -> Result<PodUid, String> {
    match value {
        "platform" => Ok(PodUid::Platform),
        n => match n.parse::<i64>() {
            Ok(uid) if uid > 0 => Ok(PodUid::Fixed(uid)),
            _ => Err(format!(
                "{n:?} is neither a non-root uid (a number above 0) nor `platform`"
            )),
        },
    }
}

impl PodArgs {
    pub fn pod_defaults(&self) -> PodDefaults {
        PodDefaults {
            api_image: self.default_image.clone(),
            cache_image: self.default_cache_image.clone(),
            uid: match self.pod_uid {
                PodUid::Fixed(uid) => Some(uid),
                PodUid::Platform => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Command {
        let argv = std::iter::once("scalable-api-operator").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .expect("valid command line")
            .into_command()
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_is_the_default() {
        let Command::Run(args) = parse(&["--http-addr", "127.0.0.1:9090"]) else {
            panic!("expected run");
        };
        assert_eq!(args.http_addr.port(), 9090);
        assert!(matches!(parse(&[]), Command::Run(_)));
    }

    #[test]
    fn run_flags_parse() {
        let Command::Run(args) = parse(&[
            "run",
            "--namespace",
            "shop",
            "--leader-election",
            "false",
            "--log-format",
            "text",
            "--lease-name",
            "sapi",
        ]) else {
            panic!("expected run");
        };
        assert_eq!(args.namespace.as_deref(), Some("shop"));
        assert!(!args.leader_election);
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.lease_name, "sapi");
    }

    #[test]
    fn an_empty_namespace_means_all_namespaces() {
        for (given, watched) in [("", None), ("  ", None), ("shop", Some("shop"))] {
            let Command::Run(args) = parse(&["run", "--namespace", given]) else {
                panic!("expected run");
            };
            assert_eq!(args.watch_namespace(), watched, "--namespace {given:?}");
        }
        let Command::Run(args) = parse(&["run"]) else {
            panic!("expected run");
        };
        assert_eq!(args.watch_namespace(), None);
    }

    fn namespaces(args: &[&str]) -> Result<Vec<String>, Error> {
        let Command::Run(args) = parse(args) else {
            panic!("expected run");
        };
        args.watch_namespaces()
    }

    #[test]
    fn namespaces_are_a_comma_separated_list_without_blanks_or_repeats() {
        assert_eq!(
            namespaces(&["run", "--namespaces", "shop, billing,,shop"]).expect("valid"),
            ["shop", "billing"]
        );
        assert_eq!(
            namespaces(&["--namespaces", "a", "--namespaces", "b"]).expect("valid"),
            ["a", "b"]
        );
        assert_eq!(
            namespaces(&["run", "--namespace", "shop"]).expect("valid"),
            ["shop"]
        );
        assert!(
            namespaces(&["run"]).expect("valid").is_empty(),
            "all namespaces"
        );
        assert!(
            namespaces(&["run", "--namespaces", ""])
                .expect("valid")
                .is_empty(),
            "an empty WATCH_NAMESPACES means all too"
        );
    }

    #[test]
    fn namespace_and_namespaces_together_are_an_error_that_names_both() {
        let err = namespaces(&["run", "--namespace", "a", "--namespaces", "b,c"])
            .expect_err("both flags");
        let message = err.to_string();
        assert!(
            message.contains("--namespace ") && message.contains("--namespaces"),
            "{message}"
        );
        // An empty --namespace is no namespace, so it does not conflict.
        assert_eq!(
            namespaces(&["run", "--namespace", "", "--namespaces", "b"]).expect("valid"),
            ["b"]
        );
    }

    #[test]
    fn render_takes_a_file_or_stdin() {
        let Command::Render(args) = parse(&["render", "-f", "-"]) else {
            panic!("expected render");
        };
        assert_eq!(args.file, PathBuf::from("-"));
        assert!(matches!(parse(&["crd"]), Command::Crd));
    }

    #[test]
    fn render_requires_a_file() {
        let argv = ["scalable-api-operator", "render"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
