//! User events through the outbox, read back from a real Kafka broker by a real consumer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_server::config::EventsConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, eventually, spawn_app, spawn_app_with};
use crate::proxy::Mode;
use crate::services::KafkaServer;

/// Partitions of each test topic: more than one, so the key decides where an event goes.
const PARTITIONS: i32 = 3;

fn events(brokers: &str, topic: &str) -> Option<EventsConfig> {
    Some(EventsConfig {
        kafka_brokers: Some(brokers.to_owned()),
        topic: topic.to_owned(),
        ..EventsConfig::default()
    })
}

fn unique_topic(name: &str) -> String {
    format!("{name}.{}", uuid::Uuid::new_v4().simple())
}

async fn broker() -> Arc<KafkaServer> {
    tokio::task::spawn_blocking(KafkaServer::shared)
        .await
        .unwrap()
}

/// Creates `topic`; retried until the broker answers (it accepts connections before its
/// controller is ready).
async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match admin.create_topics([&new], &options).await {
            Ok(results) if results.iter().all(Result::is_ok) => return,
            other => assert!(
                Instant::now() < deadline,
                "cannot create topic {topic}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One message as the consumer saw it.
#[derive(Debug, Clone)]
struct Received {
    partition: i32,
    offset: i64,
    key: String,
    content_type: Option<String>,
    event: Value,
}

/// A consumer of every partition of a topic from its start (assigned, not in a group, so
/// there is no rebalance to wait for).
struct Reader {
    consumer: StreamConsumer,
    seen: Vec<Received>,
}

impl Reader {
    fn new(brokers: &str, topic: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set(
                "group.id",
                format!("test-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            partitions
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&partitions).unwrap();
        Self {
            consumer,
            seen: Vec::new(),
        }
    }

    /// Reads until `done(all seen so far)` holds, or panics after `timeout`.
    async fn until(&mut self, timeout: Duration, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; saw {:#?}",
                self.seen
            );
            let Ok(message) = tokio::time::timeout(left, self.consumer.recv()).await else {
                continue;
            };
            let message = message.unwrap();
            let content_type = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == "content-type")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            self.seen.push(Received {
                partition: message.partition(),
                offset: message.offset(),
                key: String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
                content_type,
                event: serde_json::from_slice(message.payload().unwrap()).unwrap(),
            });
        }
    }

    /// Reads every partition to its end as of now: after the outbox emptied, everything
    /// published is then seen, on whichever partition.
    async fn drain(&mut self, topic: &str) {
        let mut ends = Vec::new();
        for partition in 0..PARTITIONS {
            let (_, high) = self
                .consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap();
            ends.push((partition, high));
        }
        self.until(
            Duration::from_secs(30),
            "the end of every partition",
            |seen| {
                ends.iter().all(|&(partition, high)| {
                    high == 0
                        || seen
                            .iter()
                            .any(|r| r.partition == partition && r.offset + 1 >= high)
                })
            },
        )
        .await;
    }

    /// Events with duplicates removed by CloudEvents `id` (what a consumer must do), in the
    /// order first seen.
    fn distinct(&self) -> Vec<Value> {
        let mut ids = HashSet::new();
        self.seen
            .iter()
            .filter(|r| ids.insert(r.event["id"].as_str().unwrap().to_owned()))
            .map(|r| r.event.clone())
            .collect()
    }
}

/// The events of `user`, deduplicated, in order.
fn of_user(events: &[Value], user: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["subject"] == user)
        .cloned()
        .collect()
}

/// Whether every user in `wanted` has an event among `seen`.
fn covers(seen: &[Received], wanted: &HashSet<String>) -> bool {
    let got: HashSet<&str> = seen
        .iter()
        .map(|r| r.event["subject"].as_str().unwrap())
        .collect();
    wanted.iter().all(|id| got.contains(id.as_str()))
}

/// `PATCH /users/{id}` with a merge patch.
async fn patch(app: &TestApp, id: &str, body: String) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/users/{id}")))
        .header("content-type", "application/merge-patch+json")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn has_created(seen: &[Received], user: &str) -> bool {
    seen.iter()
        .any(|r| r.event["subject"] == user && r.event["type"] == "dev.scalable.user.created")
}

async fn outbox_rows(app: &TestApp) -> i64 {
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&app.pg.url(&app.database))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn events_app(kafka: &KafkaServer, topic: &str) -> TestApp {
    create_topic(&kafka.bootstrap(), topic).await;
    spawn_app_with(Options {
        events: events(&kafka.bootstrap(), topic),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn the_test_broker_round_trips_a_message() {
    let kafka = broker().await;
    let topic = unique_topic("harness");
    create_topic(&kafka.bootstrap(), &topic).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut reader = Reader::new(&kafka.bootstrap(), &topic);
    let value = json!({ "id": "one", "subject": "s" }).to_string();
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload(&value),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    reader
        .until(Duration::from_secs(30), "the message", |seen| {
            !seen.is_empty()
        })
        .await;
    assert_eq!(reader.seen[0].key, "k");
    assert_eq!(reader.seen[0].event["id"], "one");
}

#[tokio::test]
async fn writes_publish_cloudevents_in_commit_order() {
    let kafka = broker().await;
    let topic = unique_topic("order");
    let app = events_app(&kafka, &topic).await;
    let mut reader = Reader::new(&kafka.bootstrap(), &topic);

    let created = app.create_user("Ada", "ada@example.com").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let put = app
        .put_user(&id, &json!({ "name": "Ada L", "email": "ada@example.com" }))
        .await;
    assert_eq!(put.status(), 200);
    let put: Value = put.json().await.unwrap();
    let patched = patch(&app, &id, r#"{"name": "Ada Lovelace"}"#.to_owned()).await;
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(app.delete_user(&id).await.status(), 204);
    // The transaction path (Idempotency-Key): one event, none for the replay.
    let keyed = || {
        app.client
            .post(app.url("/users"))
            .header("idempotency-key", "k-1")
            .json(&json!({ "name": "Bob", "email": "bob@example.com" }))
            .send()
    };
    let bob: Value = keyed().await.unwrap().json().await.unwrap();
    assert_eq!(keyed().await.unwrap().status(), 201);
    let bob = bob["id"].as_str().unwrap().to_owned();

    reader
        .until(
            Duration::from_secs(30),
            "four events of Ada and Bob's",
            |seen| {
                seen.iter()
                    .filter(|r| r.event["subject"] == id.as_str())
                    .count()
                    >= 4
                    && has_created(seen, &bob)
            },
        )
        .await;
    let events = reader.distinct();
    let ada = of_user(&events, &id);
    let types: Vec<&str> = ada.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "dev.scalable.user.created",
            "dev.scalable.user.updated",
            "dev.scalable.user.updated",
            "dev.scalable.user.deleted"
        ]
    );
    // `data` is the user exactly as the API answered each write.
    assert_eq!(ada[0]["data"], created);
    assert_eq!(ada[1]["data"], put);
    assert_eq!(ada[2]["data"], patched);
    assert_eq!(ada[3]["data"], json!({ "id": id }));
    for event in &ada {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], "api-server");
        assert_eq!(event["subject"], id.as_str());
        chrono::DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).unwrap();
    }
    let ids: HashSet<&str> = ada.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "every event has its own id");
    for received in &reader.seen {
        assert_eq!(received.key, received.event["subject"].as_str().unwrap());
        assert_eq!(
            received.content_type.as_deref(),
            Some("application/cloudevents+json")
        );
    }
    assert_eq!(
        of_user(&events, &bob).len(),
        1,
        "a replay publishes nothing"
    );
    eventually(Duration::from_secs(10), "an empty outbox", || async {
        outbox_rows(&app).await == 0
    })
    .await;
}

#[tokio::test]
async fn a_write_that_fails_publishes_nothing() {
    let kafka = broker().await;
    let topic = unique_topic("failed");
    let app = events_app(&kafka, &topic).await;
    let mut reader = Reader::new(&kafka.bootstrap(), &topic);

    let ada = app.create_user_id("Ada", "ada@example.com").await;
    let bob = app.create_user_id("Bob", "bob@example.com").await;
    let duplicate = app
        .post_user(&json!({ "name": "Eve", "email": "ADA@example.com" }))
        .await;
    assert_eq!(duplicate.status(), 409);
    let taken = app
        .put_user(&bob, &json!({ "name": "Bob", "email": "ada@example.com" }))
        .await;
    assert_eq!(taken.status(), 409);
    let stale = app
        .client
        .delete(app.url(&format!("/users/{ada}")))
        .header("if-match", "\"99\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let missing = app.delete_user(&uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(missing.status(), 404);
    // A marker written last: once it is on the topic, everything before it is too.
    let marker = app.create_user_id("Marker", "marker@example.com").await;

    eventually(Duration::from_secs(30), "an empty outbox", || async {
        outbox_rows(&app).await == 0
    })
    .await;
    reader.drain(&topic).await;
    assert!(has_created(&reader.seen, &marker));
    let events = reader.distinct();
    // Users are on different partitions: no order across them, so compare sorted.
    let mut subjects: Vec<&str> = events
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    subjects.sort_unstable();
    let mut wanted = [ada.as_str(), bob.as_str(), marker.as_str()];
    wanted.sort_unstable();
    assert_eq!(subjects, wanted);
    assert!(
        events
            .iter()
            .all(|e| e["type"] == "dev.scalable.user.created")
    );
}

#[tokio::test]
async fn without_brokers_no_outbox_row_is_written() {
    let app = spawn_app().await;
    let id = app.create_user_id("Ada", "ada@example.com").await;
    let put = app
        .put_user(&id, &json!({ "name": "Ada L", "email": "ada@example.com" }))
        .await;
    assert_eq!(put.status(), 200);
    assert_eq!(app.delete_user(&id).await.status(), 204);
    assert_eq!(outbox_rows(&app).await, 0);
    assert_eq!(app.metric("events_relay_leader").await, 0.0);
}

#[tokio::test]
async fn a_broker_outage_delays_events_but_loses_none() {
    let kafka = Arc::new(
        tokio::task::spawn_blocking(KafkaServer::start)
            .await
            .unwrap(),
    );
    let topic = unique_topic("outage");
    let app = events_app(&kafka, &topic).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            app.create_user_id("Before", &format!("b{n}@example.com"))
                .await,
        );
    }
    let first = ids[0].clone();
    let mut reader = Reader::new(&kafka.bootstrap(), &topic);
    reader
        .until(Duration::from_secs(30), "a first event", |seen| {
            has_created(seen, &first)
        })
        .await;

    let stopped = kafka.clone();
    tokio::task::spawn_blocking(move || stopped.kill())
        .await
        .unwrap();
    // Writes keep succeeding, readiness holds, and the backlog grows.
    for n in 0..20 {
        ids.push(
            app.create_user_id("During", &format!("d{n}@example.com"))
                .await,
        );
    }
    assert_eq!(app.get_admin("/readyz").await.status(), 200);
    eventually(Duration::from_secs(10), "a backlog in /metrics", || async {
        app.metric("events_outbox_backlog").await >= 20.0
            && app.metric("events_outbox_oldest_age_seconds").await > 0.0
    })
    .await;

    let restarted = kafka.clone();
    tokio::task::spawn_blocking(move || restarted.restart())
        .await
        .unwrap();
    let mut reader = Reader::new(&kafka.bootstrap(), &topic);
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    reader
        .until(
            Duration::from_secs(90),
            "all 40 events after the restart",
            |seen| covers(seen, &wanted),
        )
        .await;
    assert_eq!(
        reader.distinct().len(),
        40,
        "one event per write, after de-duplication"
    );
    eventually(Duration::from_secs(10), "the backlog drained", || async {
        app.metric("events_outbox_backlog").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_replica_dying_before_it_publishes_hands_over_to_another() {
    let kafka = broker().await;
    let topic = unique_topic("handover");
    create_topic(&kafka.bootstrap(), &topic).await;
    // The first replica leads but reaches no broker (nothing listens on its port), so what
    // is written stays committed and unpublished, as if it died between commit and publish.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("127.0.0.1:{}", nowhere.local_addr().unwrap().port());
    drop(nowhere);
    let first = spawn_app_with(Options {
        events: events(&dead, &topic),
        pg_proxy: true,
        ..Options::default()
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the first replica leading",
        || async { first.metric("events_relay_leader").await == 1.0 },
    )
    .await;
    let second = spawn_app_with(Options {
        database: Some((first.pg.clone(), first.database.clone())),
        events: events(&kafka.bootstrap(), &topic),
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            first
                .create_user_id("First", &format!("f{n}@example.com"))
                .await,
        );
        ids.push(
            second
                .create_user_id("Second", &format!("s{n}@example.com"))
                .await,
        );
    }
    assert_eq!(second.metric("events_relay_leader").await, 0.0);
    assert_eq!(outbox_rows(&second).await, 10, "nothing published yet");

    // The first replica dies: its connections are reset, as by a killed pod.
    let died = Instant::now();
    first.pg_proxy.as_ref().unwrap().set(Mode::Reset);
    let mut reader = Reader::new(&kafka.bootstrap(), &topic);
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    reader
        .until(
            Duration::from_secs(30),
            "every event from the second replica",
            |seen| covers(seen, &wanted),
        )
        .await;
    let took = died.elapsed();
    println!("takeover and publish of 10 events: {took:?}");
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    assert_eq!(second.metric("events_relay_leader").await, 1.0);
}

#[tokio::test]
async fn two_replicas_never_reorder_a_users_events() {
    let kafka = broker().await;
    let topic = unique_topic("replicas");
    let first = events_app(&kafka, &topic).await;
    let second = spawn_app_with(Options {
        database: Some((first.pg.clone(), first.database.clone())),
        events: events(&kafka.bootstrap(), &topic),
        pg_proxy: true,
        ..Options::default()
    })
    .await;
    const USERS: usize = 4;
    const ROUNDS: usize = 15;
    let mut users = Vec::new();
    for n in 0..USERS {
        users.push(
            first
                .create_user_id("U", &format!("u{n}@example.com"))
                .await,
        );
    }
    let replicas = [&first, &second];
    // Each user is changed ROUNDS times, alternately through either replica, users in
    // parallel; halfway through, the replica that leads (if the second) is cut off.
    let fallback = &first;
    let writes = users.iter().map(|id| {
        let id = id.clone();
        async move {
            for round in 0..ROUNDS {
                let app = replicas[round % 2];
                let response = patch(app, &id, format!(r#"{{"name": "round {round}"}}"#)).await;
                if response.status() != 200 {
                    // The cut-off replica cannot write; the change goes through the other.
                    let response =
                        patch(fallback, &id, format!(r#"{{"name": "round {round}"}}"#)).await;
                    assert_eq!(response.status(), 200);
                }
            }
        }
    });
    let cut = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        second.pg_proxy.as_ref().unwrap().set(Mode::Reset);
    };
    tokio::join!(futures::future::join_all(writes), cut);

    let mut reader = Reader::new(&kafka.bootstrap(), &topic);
    eventually(Duration::from_secs(30), "an empty outbox", || async {
        outbox_rows(&first).await == 0
    })
    .await;
    reader.drain(&topic).await;
    let events = reader.distinct();
    let mut versions: HashMap<String, Vec<i64>> = HashMap::new();
    for event in &events {
        versions
            .entry(event["subject"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["data"]["version"].as_i64().unwrap());
    }
    assert_eq!(versions.len(), USERS);
    // Every version, in order. (A write whose answer the cut replica lost may have
    // committed and been made again through the other: one version more, still in order.)
    for (user, seen) in &versions {
        let want: Vec<i64> = (1..=*seen.last().unwrap()).collect();
        assert_eq!(seen, &want, "the events of {user}, in the order consumed");
        assert!(want.len() > ROUNDS, "{user}: {} versions", want.len());
    }
}
