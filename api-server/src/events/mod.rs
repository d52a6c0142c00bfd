//! User events on Kafka through the transactional outbox (issue 13).
//!
//! Writes record their event in `outbox` in the same statement (`db::outbox`); the relay
//! (`relay`) in every replica competes for one advisory lock, and its holder publishes the
//! rows as CloudEvents (`cloudevent`) and deletes them once the broker acknowledged them.

pub mod cloudevent;
pub mod relay;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::{EventsConfig, SecurityProtocol};

/// Present in the app state when `EVENTS_KAFKA_BROKERS` is set.
#[derive(Debug, Default)]
pub struct Events {
    /// Woken after each committed write, so this replica's relay, if it leads, publishes at
    /// once instead of at its next poll.
    pub written: Notify,
}

impl Events {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

/// The librdkafka settings of the relay's producer, as (name, value) pairs.
///
/// Idempotence on: the broker drops the duplicates of the producer's own retries and keeps
/// each partition in send order (acks=all comes with it). A message waits up to 30 s for
/// the broker; past that it fails, stays in the outbox and is sent again.
pub fn producer_settings(config: &EventsConfig, brokers: &str) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("bootstrap.servers", brokers.to_owned()),
        ("client.id", config.source.clone()),
        ("enable.idempotence", "true".to_owned()),
        ("acks", "all".to_owned()),
        ("message.timeout.ms", "30000".to_owned()),
        ("linger.ms", "5".to_owned()),
        (
            "security.protocol",
            config.security_protocol.as_librdkafka().to_owned(),
        ),
    ];
    let optional = [
        ("ssl.ca.location", config.ssl_ca_location.as_ref()),
        (
            "ssl.certificate.location",
            config.ssl_certificate_location.as_ref(),
        ),
        ("ssl.key.location", config.ssl_key_location.as_ref()),
    ];
    for (name, path) in optional {
        if let Some(path) = path {
            settings.push((name, path.display().to_string()));
        }
    }
    if matches!(
        config.security_protocol,
        SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
    ) {
        settings.push((
            "sasl.mechanism",
            config.sasl_mechanism.as_librdkafka().to_owned(),
        ));
        if let Some(user) = &config.sasl_username {
            settings.push(("sasl.username", user.clone()));
        }
        if let Some(password) = &config.sasl_password {
            settings.push(("sasl.password", password.expose().to_owned()));
        }
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SaslMechanism, Secret};

    fn value<'a>(settings: &'a [(&str, String)], name: &str) -> Option<&'a str> {
        settings
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_producer_is_idempotent_and_plaintext_by_default() {
        let settings = producer_settings(&EventsConfig::default(), "127.0.0.1:9092");
        assert_eq!(value(&settings, "enable.idempotence"), Some("true"));
        assert_eq!(value(&settings, "acks"), Some("all"));
        assert_eq!(value(&settings, "security.protocol"), Some("plaintext"));
        assert_eq!(value(&settings, "sasl.mechanism"), None);
    }

    #[test]
    fn sasl_settings_apply_only_with_a_sasl_protocol() {
        let config = EventsConfig {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: Some("relay".into()),
            sasl_password: Some(Secret::new("s3cret")),
            ssl_ca_location: Some("/tls/ca.crt".into()),
            ..EventsConfig::default()
        };
        let settings = producer_settings(&config, "kafka:9093");
        assert_eq!(value(&settings, "security.protocol"), Some("sasl_ssl"));
        assert_eq!(value(&settings, "sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(value(&settings, "sasl.password"), Some("s3cret"));
        assert_eq!(value(&settings, "ssl.ca.location"), Some("/tls/ca.crt"));
        let plain = EventsConfig {
            sasl_username: Some("relay".into()),
            ..EventsConfig::default()
        };
        assert_eq!(
            value(&producer_settings(&plain, "k:1"), "sasl.username"),
            None
        );
    }
}
