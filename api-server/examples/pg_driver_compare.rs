//! The Postgres driver comparison of issue 12: the api-server's own sqlx pool against
//! tokio-postgres under two maintained pools, on the same statements, in one run,
//! interleaved, with the CPU each side spends per operation.
//!
//! `make bench-driver` starts a throwaway Postgres (scripts/dev-services.sh), runs this
//! against it and removes it; by hand, with a Postgres running:
//!   cargo run --release -p api-server --example pg_driver_compare -- \
//!     --postmaster-pid-file "$DEV_SERVICES_DIR/pg/postmaster.pid"
//! (connection from `DATABASE_URL`, else the PG* variables). `--help` lists the knobs.
//!
//! Contenders (every one caches its prepared statements per connection):
//! - `sqlx`: the api-server's request pool exactly as it runs, `api_server::db::Db` built by
//!   `Db::connect_lazy` from `DatabaseConfig` (test_before_acquire(false), the idle-ping
//!   policy, the query timeout, the bounded release that runs sqlx's ping), called through
//!   `api_server::db::users::{insert, get}`.
//! - `sqlx-plain`: the same sqlx pool options (test_before_acquire(false), the same session
//!   settings) queried directly, without `Db`: what sqlx costs by itself, so the wrapper's
//!   share (its spawned, bounded release) can be told from sqlx's.
//! - `deadpool`: deadpool-postgres + tokio-postgres, `RecyclingMethod::Fast` (no round trip
//!   on checkout or return), statements from `Client::prepare_cached`.
//! - `bb8`: bb8 + tokio-postgres, `test_on_check_out(false)`, both statements prepared when a
//!   connection opens (bb8-postgres's manager has no statement cache, so the manager is
//!   written here, ten lines).
//!
//! The tokio-postgres contenders open their sessions with the same settings as the sqlx
//! pool (application_name, statement_timeout, lock_timeout,
//! idle_in_transaction_session_timeout from `DatabaseConfig`'s defaults), and bound each
//! call by the same query timeout.
//!
//! Workloads: `insert`, the api-server's plain `INSERT ... RETURNING` of POST /users (a
//! UUIDv7 id, a unique e-mail per operation), and `select`, its point read by id, of random
//! ids among `--seed-rows` users inserted first. The schema comes from the api-server's own
//! migrations. `--tasks` tasks (64, like wrk -c64) share a pool of each `--pools` size on a
//! 2-worker multi-thread runtime; every round warms up, then measures for `--secs`. The
//! rounds of one workload and pool size are interleaved (the contender order rotates every
//! repetition), so a noisy neighbour hits every contender alike.
//!
//! Measured per round: operations completed in the window, their latency (acquire included),
//! this process's CPU (getrusage: user + system), Postgres's CPU (utime + stime of the
//! postmaster and every child, plus what the postmaster reaped from children that exited,
//! from /proc), and the machine's busy share (/proc/stat). CPU per operation is the figure
//! to trust on a shared machine; throughput moves with whatever else runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use api_server::config::DatabaseConfig;
use api_server::db::{Db, users};
use api_server::domain::{Email, NewUser, User, UserName};
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use nix::sys::resource::{UsageWho, getrusage};
use rand::Rng as _;
use tokio::time::Instant;
use tokio_postgres::{NoTls, Row, Statement};
use uuid::Uuid;

const INSERT: &str = "INSERT INTO users (id, name, email) VALUES ($1, $2, $3) \
                      RETURNING id, name, email, created_at, updated_at, version";
const SELECT: &str =
    "SELECT id, name, email, created_at, updated_at, version FROM users WHERE id = $1";

/// Linux reports /proc times in USER_HZ, which is 100 on every architecture it runs on.
const TICKS_PER_SEC: u64 = 100;

#[derive(Parser, Debug)]
#[command(about = "sqlx vs tokio-postgres (deadpool, bb8) on the api-server's statements")]
struct Args {
    /// The postmaster.pid of the Postgres under test (its CPU is read from /proc).
    #[arg(long, env = "PG_POSTMASTER_PID_FILE")]
    postmaster_pid_file: PathBuf,
    /// Postgres URL; without it one is made from PGHOST, PGPORT, PGDATABASE, PGUSER.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Measured seconds per round.
    #[arg(long, default_value_t = 8)]
    secs: u64,
    /// Warm-up seconds per round (connections opened, statements prepared), not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Rounds per contender, workload and pool size.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    reps: u32,
    /// Concurrent tasks (like wrk's connections).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    tasks: u32,
    /// Pool sizes (32, and 10: the operator's default DB_POOL_MAX).
    #[arg(long, value_delimiter = ',', default_value = "32,10")]
    pools: Vec<u32>,
    #[arg(long, value_delimiter = ',', default_value = "insert,select")]
    workloads: Vec<Workload>,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sqlx,sqlx-plain,deadpool,bb8"
    )]
    contenders: Vec<Contender>,
    /// Users inserted before the rounds (the point reads pick among them).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    seed_rows: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Workload {
    Insert,
    Select,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Contender {
    Sqlx,
    SqlxPlain,
    Deadpool,
    Bb8,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Self::Sqlx => "sqlx 0.8 PgPool (api-server's Db)",
            Self::SqlxPlain => "sqlx 0.8 PgPool, plain (no Db wrapper)",
            Self::Deadpool => "deadpool-postgres + tokio-postgres (Fast)",
            Self::Bb8 => "bb8 + tokio-postgres",
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// bb8's connection: the client and both statements, prepared when it opened.
struct Bb8Conn {
    client: tokio_postgres::Client,
    insert: Statement,
    select: Statement,
}

struct Bb8Manager {
    config: tokio_postgres::Config,
}

impl bb8::ManageConnection for Bb8Manager {
    type Connection = Bb8Conn;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Bb8Conn, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(connection);
        let insert = client.prepare(INSERT).await?;
        let select = client.prepare(SELECT).await?;
        Ok(Bb8Conn {
            client,
            insert,
            select,
        })
    }

    async fn is_valid(&self, conn: &mut Bb8Conn) -> Result<(), tokio_postgres::Error> {
        conn.client.simple_query("").await.map(drop)
    }

    fn has_broken(&self, conn: &mut Bb8Conn) -> bool {
        conn.client.is_closed()
    }
}

enum Pool {
    Sqlx(Db),
    SqlxPlain(sqlx::PgPool),
    Deadpool(deadpool_postgres::Pool),
    Bb8(bb8::Pool<Bb8Manager>),
}

/// What every contender is built from.
struct Setup {
    url: String,
    /// The api-server's request-pool settings (its defaults), for the sqlx pool and to copy
    /// into the tokio-postgres sessions.
    defaults: DatabaseConfig,
}

impl Setup {
    fn pg_config(&self) -> anyhow::Result<tokio_postgres::Config> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .context("DATABASE_URL for tokio-postgres")?;
        let d = &self.defaults;
        config
            .application_name("api-server")
            .options(format!(
                "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
                d.statement_timeout_ms, d.lock_timeout_ms, d.idle_in_transaction_timeout_ms
            ))
            .connect_timeout(d.acquire_timeout());
        Ok(config)
    }

    async fn pool(&self, contender: Contender, size: u32) -> anyhow::Result<Pool> {
        Ok(match contender {
            Contender::Sqlx => {
                let mut config = DatabaseConfig::from_url(&self.url);
                config.pool_max = size;
                Pool::Sqlx(Db::connect_lazy(&config)?)
            }
            Contender::SqlxPlain => {
                let mut config = DatabaseConfig::from_url(&self.url);
                config.pool_max = size;
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(config.pool_max)
                    .min_connections(config.pool_min)
                    .acquire_timeout(config.acquire_timeout())
                    .test_before_acquire(false)
                    .connect_lazy_with(config.request_options()?);
                Pool::SqlxPlain(pool)
            }
            Contender::Deadpool => {
                let manager = deadpool_postgres::Manager::from_config(
                    self.pg_config()?,
                    NoTls,
                    deadpool_postgres::ManagerConfig {
                        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                    },
                );
                let pool = deadpool_postgres::Pool::builder(manager)
                    .max_size(size as usize)
                    .runtime(deadpool_postgres::Runtime::Tokio1)
                    .wait_timeout(Some(self.defaults.acquire_timeout()))
                    .create_timeout(Some(self.defaults.acquire_timeout()))
                    .build()?;
                Pool::Deadpool(pool)
            }
            Contender::Bb8 => {
                let pool = bb8::Pool::builder()
                    .max_size(size)
                    .min_idle(Some(self.defaults.pool_min))
                    .test_on_check_out(false)
                    .connection_timeout(self.defaults.acquire_timeout())
                    .build_unchecked(Bb8Manager {
                        config: self.pg_config()?,
                    });
                Pool::Bb8(pool)
            }
        })
    }
}

impl Pool {
    async fn close(self) {
        match self {
            Self::Sqlx(db) => db.close().await,
            Self::SqlxPlain(pool) => pool.close().await,
            Self::Deadpool(pool) => pool.close(),
            Self::Bb8(pool) => drop(pool),
        }
    }

    async fn insert(&self, query_timeout: Duration) -> Result<User, BoxError> {
        let id = Uuid::now_v7();
        // Validated like a request body, by every contender alike.
        let user = NewUser {
            name: UserName::parse("Bench User")?,
            email: Email::parse(&format!("{}@bench.example.com", id.simple()))?,
        };
        match self {
            Self::Sqlx(db) => Ok(users::insert(db, id, &user, false).await?),
            Self::SqlxPlain(pool) => Ok(tokio::time::timeout(
                query_timeout,
                sqlx::query_as::<_, User>(INSERT)
                    .bind(id)
                    .bind(user.name.as_str())
                    .bind(user.email.as_str())
                    .fetch_one(pool),
            )
            .await??),
            Self::Deadpool(pool) => {
                let client = pool.get().await?;
                let row = tokio::time::timeout(query_timeout, async {
                    let statement = client.prepare_cached(INSERT).await?;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                        [&id, &user.name.as_str(), &user.email.as_str()];
                    client.query_one(&statement, &params).await
                })
                .await??;
                user_from(&row)
            }
            Self::Bb8(pool) => {
                let conn = pool.get().await?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                    [&id, &user.name.as_str(), &user.email.as_str()];
                let row = tokio::time::timeout(
                    query_timeout,
                    conn.client.query_one(&conn.insert, &params),
                )
                .await??;
                user_from(&row)
            }
        }
    }

    async fn select(&self, id: Uuid, query_timeout: Duration) -> Result<User, BoxError> {
        let found = match self {
            Self::Sqlx(db) => users::get(db, id).await?,
            Self::SqlxPlain(pool) => {
                tokio::time::timeout(
                    query_timeout,
                    sqlx::query_as::<_, User>(SELECT)
                        .bind(id)
                        .fetch_optional(pool),
                )
                .await??
            }
            Self::Deadpool(pool) => {
                let client = pool.get().await?;
                let row = tokio::time::timeout(query_timeout, async {
                    let statement = client.prepare_cached(SELECT).await?;
                    client.query_opt(&statement, &[&id]).await
                })
                .await??;
                row.as_ref().map(user_from).transpose()?
            }
            Self::Bb8(pool) => {
                let conn = pool.get().await?;
                let row = tokio::time::timeout(
                    query_timeout,
                    conn.client.query_opt(&conn.select, &[&id]),
                )
                .await??;
                row.as_ref().map(user_from).transpose()?
            }
        };
        found.ok_or_else(|| format!("user {id} not found").into())
    }
}

/// A `users` row as the api-server's `User` (sqlx's `FromRow` does the same for sqlx).
fn user_from(row: &Row) -> Result<User, BoxError> {
    Ok(User {
        id: row.try_get::<_, Uuid>(0)?,
        name: row.try_get::<_, String>(1)?,
        email: row.try_get::<_, String>(2)?,
        created_at: row.try_get::<_, DateTime<Utc>>(3)?,
        updated_at: row.try_get::<_, DateTime<Utc>>(4)?,
        version: row.try_get::<_, i64>(5)?,
    })
}

/// Cumulative counters at one instant.
#[derive(Clone, Copy)]
struct Snapshot {
    /// This process: user + system, µs.
    self_us: u64,
    /// Postgres: clock ticks.
    pg_ticks: u64,
    /// The machine: busy and total jiffies of all CPUs.
    busy: u64,
    total: u64,
}

fn snapshot(postmaster: u32) -> anyhow::Result<Snapshot> {
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    let (busy, total) = machine_jiffies()?;
    Ok(Snapshot {
        self_us: us(usage.user_time()) + us(usage.system_time()),
        pg_ticks: postgres_ticks(postmaster)?,
        busy,
        total,
    })
}

/// Fields 3.. of /proc/<pid>/stat (after the command name), or None once it has exited.
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // Field 3 (state) is a letter: count it as 0.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime of the postmaster and its live children, plus cutime + cstime of the
/// postmaster (what the children that exited spent), so the sum only grows as backends
/// come and go. Indexes: field N of proc(5) is `fields[N - 3]`.
fn postgres_ticks(postmaster: u32) -> anyhow::Result<u64> {
    let pm = stat_fields(&postmaster.to_string()).context("the postmaster is not running")?;
    let mut sum = pm[11] + pm[12] + pm[13] + pm[14];
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(f) = stat_fields(pid)
            && f.get(1) == Some(&u64::from(postmaster))
        {
            sum += f[11] + f[12];
        }
    }
    Ok(sum)
}

/// (busy, total) jiffies from the `cpu` line of /proc/stat (idle and iowait are not busy).
fn machine_jiffies() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// One measured round.
struct Round {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
    secs: f64,
    self_us: u64,
    pg_us: u64,
    machine_busy: f64,
}

struct Bench {
    args: Args,
    setup: Setup,
    postmaster: u32,
    ids: Arc<Vec<Uuid>>,
}

impl Bench {
    async fn round(
        &self,
        workload: Workload,
        contender: Contender,
        size: u32,
    ) -> anyhow::Result<Round> {
        let pool = Arc::new(self.setup.pool(contender, size).await?);
        let query_timeout = self.setup.defaults.query_timeout();
        let start = Instant::now();
        let measure_from = start + Duration::from_secs(self.args.warmup);
        let until = measure_from + Duration::from_secs(self.args.secs);
        let mut tasks = Vec::new();
        for _ in 0..self.args.tasks {
            let pool = pool.clone();
            let ids = self.ids.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut completed, mut errors, mut first_error) = (0u64, 0u64, None);
                // Bounded in time, and in count as a backstop.
                for _ in 0..10_000_000u64 {
                    let began = Instant::now();
                    if began >= until {
                        break;
                    }
                    let result = match workload {
                        Workload::Insert => pool.insert(query_timeout).await,
                        Workload::Select => {
                            let id = ids[rand::rng().random_range(0..ids.len())];
                            pool.select(id, query_timeout).await
                        }
                    };
                    let ended = Instant::now();
                    // Throughput and CPU: what completed inside the window. Latency and
                    // errors: every operation begun inside it, however late it ended, so
                    // an unfair pool's starved waiters show in the tail.
                    if ended >= measure_from && ended <= until && result.is_ok() {
                        completed += 1;
                    }
                    if began < measure_from {
                        continue;
                    }
                    match result {
                        Ok(_) => latencies
                            .push(u32::try_from((ended - began).as_micros()).unwrap_or(u32::MAX)),
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| error.to_string());
                        }
                    }
                }
                (latencies, completed, errors, first_error)
            }));
        }
        tokio::time::sleep_until(measure_from).await;
        let before = snapshot(self.postmaster)?;
        let measured_from = Instant::now();
        tokio::time::sleep_until(until).await;
        let after = snapshot(self.postmaster)?;
        let secs = measured_from.elapsed().as_secs_f64();
        let mut round = Round {
            ops: 0,
            errors: 0,
            first_error: None,
            latencies_us: Vec::new(),
            secs,
            self_us: after.self_us - before.self_us,
            pg_us: (after.pg_ticks - before.pg_ticks) * 1_000_000 / TICKS_PER_SEC,
            machine_busy: (after.busy - before.busy) as f64
                / (after.total - before.total).max(1) as f64,
        };
        for task in tasks {
            let (latencies, completed, errors, first_error) = task.await?;
            round.latencies_us.extend(latencies);
            round.ops += completed;
            round.errors += errors;
            if round.first_error.is_none() {
                round.first_error = first_error;
            }
        }
        if let Ok(pool) = Arc::try_unwrap(pool) {
            pool.close().await;
        }
        // Let the closed sessions' backends exit before the next round.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(round)
    }
}

fn postmaster_pid(file: &Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no pid in {}", file.display()))
}

fn database_url(args: &Args) -> String {
    if let Some(url) = &args.database_url {
        return url.clone();
    }
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    format!(
        "postgres://{}@{}:{}/{}?sslmode={}",
        var("PGUSER", "postgres"),
        var("PGHOST", "127.0.0.1"),
        var("PGPORT", "5432"),
        var("PGDATABASE", "postgres"),
        var("PGSSLMODE", "prefer"),
    )
}

/// The schema from the api-server's migrations, an empty `users`, then `rows` users.
async fn prepare_schema(url: &str, rows: u32) -> anyhow::Result<Vec<Uuid>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("connecting to Postgres")?;
    api_server::schema::MIGRATOR.run(&pool).await?;
    sqlx::query("TRUNCATE users").execute(&pool).await?;
    let ids: Vec<Uuid> = (0..rows).map(|_| Uuid::now_v7()).collect();
    for chunk in ids.chunks(10_000) {
        let names = vec!["Seed User".to_owned(); chunk.len()];
        let emails: Vec<String> = chunk
            .iter()
            .map(|id| format!("{}@seed.example.com", id.simple()))
            .collect();
        sqlx::query(
            "INSERT INTO users (id, name, email) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])",
        )
        .bind(chunk)
        .bind(&names)
        .bind(&emails)
        .execute(&pool)
        .await?;
    }
    sqlx::query("VACUUM ANALYZE users").execute(&pool).await?;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    println!("- Postgres: {version}");
    pool.close().await;
    Ok(ids)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn machine_facts() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("nproc {cpus}, {model}")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.secs == 0 || args.secs > 600 || args.warmup > 60 {
        bail!("--secs must be 1..=600 and --warmup at most 60");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let url = database_url(&args);
    let postmaster = postmaster_pid(&args.postmaster_pid_file)?;
    println!("## pg_driver_compare");
    println!();
    println!("- machine: {}", machine_facts());
    println!("- load average before: {}", load_average());
    let ids = prepare_schema(&url, args.seed_rows).await?;
    println!(
        "- {} tasks, 2 tokio workers, {} s warm-up + {} s measured per round, {} rounds each, \
         interleaved; {} seeded users",
        args.tasks, args.warmup, args.secs, args.reps, args.seed_rows
    );
    let bench = Bench {
        setup: Setup {
            url,
            defaults: DatabaseConfig::from_url("postgres://localhost"),
        },
        postmaster,
        ids: Arc::new(ids),
        args,
    };
    let args = &bench.args;
    let mut results: BTreeMap<(Workload, u32, Contender), Vec<Round>> = BTreeMap::new();
    for &workload in &args.workloads {
        for &size in &args.pools {
            for rep in 0..args.reps {
                let mut order = args.contenders.clone();
                let n = order.len().max(1);
                order.rotate_left(rep as usize % n);
                for contender in order {
                    let round = bench.round(workload, contender, size).await?;
                    eprintln!(
                        "pg_driver_compare: {workload:?} pool {size} rep {rep} {contender:?}: \
                         {:.0} ops/s, {:.1} µs/op here, {:.1} µs/op Postgres, {} errors, \
                         machine {:.0}% busy",
                        round.ops as f64 / round.secs,
                        round.self_us as f64 / round.ops.max(1) as f64,
                        round.pg_us as f64 / round.ops.max(1) as f64,
                        round.errors,
                        round.machine_busy * 100.0,
                    );
                    if let Some(error) = &round.first_error {
                        eprintln!("pg_driver_compare:   first error: {error}");
                    }
                    results
                        .entry((workload, size, contender))
                        .or_default()
                        .push(round);
                }
            }
        }
    }
    println!("- load average after: {}", load_average());
    println!();
    print!("{}", tables(&results));
    Ok(())
}

/// One markdown table per workload and pool size. CPU per op is over all rounds together,
/// with the range of the rounds' own figures beside it.
fn tables(results: &BTreeMap<(Workload, u32, Contender), Vec<Round>>) -> String {
    let mut out = String::new();
    type Rows<'a> = Vec<(Contender, &'a Vec<Round>)>;
    let mut groups: BTreeMap<(Workload, u32), Rows<'_>> = BTreeMap::new();
    for ((w, s, c), rounds) in results {
        groups.entry((*w, *s)).or_default().push((*c, rounds));
    }
    for ((workload, size), rows) in groups {
        let what = match workload {
            Workload::Insert => "INSERT ... RETURNING (POST /users)",
            Workload::Select => "SELECT by id (GET /users/{id}, uncached)",
        };
        let _ = writeln!(out, "### {what}, pool {size}\n");
        let _ = writeln!(
            out,
            "| contender | ops/s | p50 ms | p99 ms | mean ms | max ms | bench CPU µs/op (rounds) | Postgres CPU µs/op (rounds) | total µs/op | errors | machine busy |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let mut base_total = None;
        for (contender, rounds) in rows {
            let ops: u64 = rounds.iter().map(|r| r.ops).sum();
            let secs: f64 = rounds.iter().map(|r| r.secs).sum();
            let self_us: u64 = rounds.iter().map(|r| r.self_us).sum();
            let pg_us: u64 = rounds.iter().map(|r| r.pg_us).sum();
            let errors: u64 = rounds.iter().map(|r| r.errors).sum();
            let busy = rounds.iter().map(|r| r.machine_busy).sum::<f64>() / rounds.len() as f64;
            let mut lat: Vec<u32> = rounds
                .iter()
                .flat_map(|r| r.latencies_us.iter().copied())
                .collect();
            lat.sort_unstable();
            let per = |us: u64| us as f64 / ops.max(1) as f64;
            let range = |f: &dyn Fn(&Round) -> u64| {
                let v: Vec<f64> = rounds
                    .iter()
                    .map(|r| f(r) as f64 / r.ops.max(1) as f64)
                    .collect();
                let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                let max = v.iter().copied().fold(0.0, f64::max);
                format!("{min:.1}-{max:.1}")
            };
            let total = per(self_us) + per(pg_us);
            let vs = match base_total {
                None => {
                    base_total = Some(total);
                    String::new()
                }
                Some(base) => format!(" ({:+.0}%)", (total / base - 1.0) * 100.0),
            };
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} ({}) | {:.1} ({}) | {:.1}{} | {} | {:.0}% |",
                contender.label(),
                ops as f64 / secs,
                percentile(&lat, 0.50),
                percentile(&lat, 0.99),
                lat.iter().map(|&l| f64::from(l)).sum::<f64>() / lat.len().max(1) as f64 / 1000.0,
                percentile(&lat, 1.0),
                per(self_us),
                range(&|r| r.self_us),
                per(pg_us),
                range(&|r| r.pg_us),
                total,
                vs,
                errors,
                busy * 100.0,
            );
        }
        let _ = writeln!(out);
    }
    out
}
