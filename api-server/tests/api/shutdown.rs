//! The real binary under SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::eventually;
use crate::services::{PgServer, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_request_stream_fails_no_request_and_exits_0() {
    let pg = tokio::task::spawn_blocking(PgServer::shared).await.unwrap();
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let database = pg.create_database();
    let mut child = Command::new(env!("CARGO_BIN_EXE_api-server"))
        .env("DATABASE_URL", pg.url(&database))
        .env("REDIS_URL", redis.url())
        .env("PORT", "0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("SHUTDOWN_DELAY_SECONDS", "1")
        .env("SHUTDOWN_TIMEOUT_SECONDS", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The port is in the "listening" log line (PORT=0 picks a free one).
    let stdout = child.stdout.take().unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(log) = serde_json::from_str::<Value>(&line)
                && log["message"] == "listening"
            {
                let _ = port_tx.send(log["port"].as_u64().unwrap());
            }
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the binary logs its port");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // Like a load balancer: send nothing before readiness (the port is bound before the
    // schema is migrated), and stop sending new requests once readiness fails.
    eventually(
        Duration::from_secs(30),
        "the binary to be ready",
        || async {
            client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let draining = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (client, base, draining, done) =
                (client.clone(), base.clone(), draining.clone(), done.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut n = 0;
                while !draining.load(Ordering::Relaxed) {
                    let body = json!({ "name": "s", "email": format!("s{w}-{n}@example.com") });
                    match client
                        .post(format!("{base}/users"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 201 => {
                            let id = r.json::<Value>().await.unwrap()["id"]
                                .as_str()
                                .unwrap()
                                .to_owned();
                            match client.get(format!("{base}/users/{id}")).send().await {
                                Ok(r) if r.status() == 200 => {}
                                other => failures.push(format!("GET: {other:?}")),
                            }
                        }
                        other => failures.push(format!("POST: {other:?}")),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                failures
            })
        })
        .collect();
    let monitor = {
        let (client, base, draining) = (client.clone(), base.clone(), draining.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                    && r.status() == 503
                {
                    draining.store(true, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eventually(Duration::from_secs(10), "a stream of requests", || async {
        done.load(Ordering::Relaxed) > 100
    })
    .await;

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    tokio::time::timeout(Duration::from_secs(5), monitor)
        .await
        .expect("/readyz turned 503")
        .unwrap();
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    pg.drop_database(&database);

    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(status.code(), Some(0), "exit status {status}");
}
