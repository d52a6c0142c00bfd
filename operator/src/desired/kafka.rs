//! What `spec.events.kafka` adds to the pods: the `EVENTS_*` settings, the TLS files mounted
//! from Secrets, and the Secret-backed SASL password.

use k8s_openapi::api::core::v1::{
    EnvVar, KeyToPath, ProjectedVolumeSource, SecretProjection, Volume, VolumeMount,
    VolumeProjection,
};

use super::secret_env;
use crate::crd::{KafkaEvents, SaslMechanism, SecretKeyRef};

/// Where the TLS files are mounted in the `api` container.
pub const TLS_DIR: &str = "/etc/scalable-api/kafka-tls";
pub const TLS_VOLUME: &str = "kafka-tls";
pub const CA_FILE: &str = "ca.crt";
pub const CERTIFICATE_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
/// The api-server variable of the SASL password; never in the ConfigMap.
pub const PASSWORD_ENV: &str = "EVENTS_KAFKA_SASL_PASSWORD";

/// The api-server's `EVENTS_*` settings, except the password. `source` is the CloudEvents
/// `source` and the producer's client id.
pub fn settings(kafka: &KafkaEvents, source: &str) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("EVENTS_KAFKA_BROKERS", kafka.bootstrap_servers.join(",")),
        ("EVENTS_TOPIC", kafka.topic.clone()),
        ("EVENTS_SOURCE", source.to_owned()),
    ];
    let protocol = match (&kafka.tls, &kafka.sasl) {
        (None, None) => "plaintext",
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    out.push(("EVENTS_KAFKA_SECURITY_PROTOCOL", protocol.to_owned()));
    for f in tls_files(kafka) {
        out.push((f.env, format!("{TLS_DIR}/{}", f.file)));
    }
    if let Some(sasl) = &kafka.sasl {
        let mechanism = match sasl.mechanism {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        };
        out.push(("EVENTS_KAFKA_SASL_MECHANISM", mechanism.to_owned()));
        out.push(("EVENTS_KAFKA_SASL_USERNAME", sasl.username.clone()));
    }
    out
}

/// One Secret key mounted for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    pub secret: SecretKeyRef,
    /// Its file name under `TLS_DIR`.
    pub file: &'static str,
    /// The api-server variable that names the file.
    pub env: &'static str,
}

/// The CA, then the client certificate and key, as far as `tls` names them.
pub fn tls_files(kafka: &KafkaEvents) -> Vec<TlsFile> {
    let Some(tls) = &kafka.tls else {
        return Vec::new();
    };
    let ca = tls.ca_secret_ref.iter().map(|r| TlsFile {
        secret: r.clone(),
        file: CA_FILE,
        env: "EVENTS_KAFKA_SSL_CA_LOCATION",
    });
    let client = tls.client_certificate_secret_ref.iter().flat_map(|c| {
        let from = |key: &str, file, env| TlsFile {
            secret: SecretKeyRef {
                name: c.name.clone(),
                key: key.to_owned(),
            },
            file,
            env,
        };
        [
            from(
                &c.certificate_key,
                CERTIFICATE_FILE,
                "EVENTS_KAFKA_SSL_CERTIFICATE_LOCATION",
            ),
            from(
                &c.private_key_key,
                KEY_FILE,
                "EVENTS_KAFKA_SSL_KEY_LOCATION",
            ),
        ]
    });
    ca.chain(client).collect()
}

/// Every Secret key the pods read for events: a change of any of them rolls the pods, since
/// the Kafka client reads them once at start.
pub fn secret_keys(kafka: &KafkaEvents) -> Vec<SecretKeyRef> {
    tls_files(kafka)
        .into_iter()
        .map(|f| f.secret)
        .chain(kafka.sasl.iter().map(|s| s.password_secret_ref.clone()))
        .collect()
}

/// One projected volume with every TLS file (the CA and the client pair may sit in different
/// Secrets); `None` without a file to mount.
pub fn tls_volume(kafka: &KafkaEvents) -> Option<Volume> {
    let files = tls_files(kafka);
    if files.is_empty() {
        return None;
    }
    let sources = files
        .into_iter()
        .map(|f| VolumeProjection {
            secret: Some(SecretProjection {
                name: f.secret.name,
                items: Some(vec![KeyToPath {
                    key: f.secret.key,
                    path: f.file.into(),
                    ..KeyToPath::default()
                }]),
                optional: Some(false),
            }),
            ..VolumeProjection::default()
        })
        .collect();
    Some(Volume {
        name: TLS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    })
}

pub fn tls_mount() -> VolumeMount {
    VolumeMount {
        name: TLS_VOLUME.into(),
        mount_path: TLS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// `EVENTS_KAFKA_SASL_PASSWORD` from its Secret key, with SASL.
pub fn password_env(kafka: &KafkaEvents) -> Option<EnvVar> {
    let r = &kafka.sasl.as_ref()?.password_secret_ref;
    Some(secret_env(PASSWORD_ENV, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ScalableApi;

    fn kafka(sapi: &ScalableApi) -> &KafkaEvents {
        &sapi.spec.events.as_ref().expect("events").kafka
    }

    fn setting<'a>(s: &'a [(&str, String)], name: &str) -> Option<&'a str> {
        s.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn plaintext_names_the_brokers_topic_and_source_only() {
        let sapi = ScalableApi::test().with_kafka(&["a.kafka.svc:9092", "b.kafka.svc:9092"]);
        let s = settings(kafka(&sapi), "users");
        assert_eq!(
            s,
            [
                (
                    "EVENTS_KAFKA_BROKERS",
                    "a.kafka.svc:9092,b.kafka.svc:9092".to_owned()
                ),
                ("EVENTS_TOPIC", "users.events".to_owned()),
                ("EVENTS_SOURCE", "users".to_owned()),
                ("EVENTS_KAFKA_SECURITY_PROTOCOL", "plaintext".to_owned()),
            ]
        );
        assert!(tls_volume(kafka(&sapi)).is_none());
        assert!(password_env(kafka(&sapi)).is_none());
        assert!(secret_keys(kafka(&sapi)).is_empty());
    }

    #[test]
    fn tls_and_sasl_name_the_mounted_files_and_the_mechanism() {
        let sapi = ScalableApi::test().with_kafka_tls_and_sasl(&["k:9093"]);
        let s = settings(kafka(&sapi), "users");
        assert_eq!(
            setting(&s, "EVENTS_KAFKA_SECURITY_PROTOCOL"),
            Some("sasl_ssl")
        );
        assert_eq!(
            setting(&s, "EVENTS_KAFKA_SSL_CA_LOCATION"),
            Some("/etc/scalable-api/kafka-tls/ca.crt")
        );
        assert_eq!(
            setting(&s, "EVENTS_KAFKA_SSL_CERTIFICATE_LOCATION"),
            Some("/etc/scalable-api/kafka-tls/tls.crt")
        );
        assert_eq!(
            setting(&s, "EVENTS_KAFKA_SSL_KEY_LOCATION"),
            Some("/etc/scalable-api/kafka-tls/tls.key")
        );
        assert_eq!(
            setting(&s, "EVENTS_KAFKA_SASL_MECHANISM"),
            Some("SCRAM-SHA-256")
        );
        assert_eq!(setting(&s, "EVENTS_KAFKA_SASL_USERNAME"), Some("users"));
        assert!(
            setting(&s, PASSWORD_ENV).is_none(),
            "the password is never a ConfigMap setting"
        );
    }

    #[test]
    fn only_tls_is_ssl_and_only_sasl_is_sasl_plaintext() {
        let mut sapi = ScalableApi::test().with_kafka_tls_and_sasl(&["k:9093"]);
        let mut k = kafka(&sapi).clone();
        k.sasl = None;
        let s = settings(&k, "users");
        assert_eq!(setting(&s, "EVENTS_KAFKA_SECURITY_PROTOCOL"), Some("ssl"));
        assert!(setting(&s, "EVENTS_KAFKA_SASL_USERNAME").is_none());
        if let Some(e) = sapi.spec.events.as_mut() {
            e.kafka.tls = None;
        }
        let s = settings(kafka(&sapi), "users");
        assert_eq!(
            setting(&s, "EVENTS_KAFKA_SECURITY_PROTOCOL"),
            Some("sasl_plaintext")
        );
        assert!(setting(&s, "EVENTS_KAFKA_SSL_CA_LOCATION").is_none());
    }

    #[test]
    fn system_cas_mount_nothing() {
        let mut sapi = ScalableApi::test().with_kafka_tls_and_sasl(&["k:9093"]);
        if let Some(e) = sapi.spec.events.as_mut() {
            e.kafka.tls = Some(crate::crd::KafkaTls::default());
        }
        let k = kafka(&sapi);
        assert!(tls_files(k).is_empty() && tls_volume(k).is_none());
        assert_eq!(
            setting(&settings(k, "users"), "EVENTS_KAFKA_SECURITY_PROTOCOL"),
            Some("sasl_ssl")
        );
    }

    #[test]
    fn one_projected_volume_carries_the_ca_and_the_client_pair_from_their_secrets() {
        let sapi = ScalableApi::test().with_kafka_tls_and_sasl(&["k:9093"]);
        let volume = tls_volume(kafka(&sapi)).expect("volume");
        let items: Vec<(String, String, String)> = volume
            .projected
            .and_then(|p| p.sources)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| s.secret)
            .flat_map(|s| {
                let name = s.name.clone();
                s.items
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |i| (name.clone(), i.key, i.path))
            })
            .collect();
        let item = |n: &str, k: &str, p: &str| (n.to_owned(), k.to_owned(), p.to_owned());
        assert_eq!(
            items,
            [
                item("kafka-ca", "ca.crt", "ca.crt"),
                item("users-kafka", "user.crt", "tls.crt"),
                item("users-kafka", "user.key", "tls.key"),
            ]
        );
        let env = password_env(kafka(&sapi)).expect("password");
        let from = env.value_from.and_then(|v| v.secret_key_ref).expect("ref");
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("users-kafka", "password")
        );
        assert_eq!(
            secret_keys(kafka(&sapi))
                .iter()
                .map(|r| format!("{}/{}", r.name, r.key))
                .collect::<Vec<_>>(),
            [
                "kafka-ca/ca.crt",
                "users-kafka/user.crt",
                "users-kafka/user.key",
                "users-kafka/password"
            ]
        );
    }
}
