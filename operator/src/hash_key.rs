//! The key of the keyed Secret hash (`desired::secret_hash`): a Secret in the operator's own
//! namespace holding 32 random bytes, read at start, created by the first replica that finds
//! it missing.
//!
//! Two replicas starting at once both try to create it; the API server accepts one create
//! and answers the other 409 AlreadyExists, and that one reads what the winner wrote. So
//! every replica, and every restart, hashes with the same key, and a restart rolls no pod.
//! The Secret is never updated: a new key changes every config hash, which rolls every
//! ScalableApi's pods once. Deleting the Secret is how to rotate the key on purpose.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::desired::{HashKey, labels};
use crate::error::{Error, Result};

/// Name of the hash-key Secret in the operator's namespace (`POD_NAMESPACE`). Fixed, not
/// derived from the release, so the chart's Role can name it in `resourceNames`.
pub const SECRET_NAME: &str = "scalable-api-operator-hash-key";
/// The data key that holds the 32 bytes.
pub const DATA_KEY: &str = "key";

/// Reads the key from `namespace/name`, creating the Secret with a fresh random key if it
/// does not exist. Needs `get` and `create` on that Secret only.
pub async fn load_or_create(client: &Client, namespace: &str, name: &str) -> Result<HashKey> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let failed = |source| Error::HashKey {
        name: format!("{namespace}/{name}"),
        source,
    };
    if let Some(existing) = secrets.get_opt(name).await.map_err(failed)? {
        return key_of(&existing, namespace, name);
    }
    let fresh = HashKey::generate();
    match secrets
        .create(&PostParams::default(), &secret(name, &fresh))
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "created the hash-key Secret");
            Ok(fresh)
        }
        // Another replica created it between our read and our create: use theirs.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let theirs = secrets.get(name).await.map_err(failed)?;
            key_of(&theirs, namespace, name)
        }
        Err(e) => Err(failed(e)),
    }
}

/// The Secret that holds `key`, labelled as ours so `kubectl get secret -l` finds it.
fn secret(name: &str, key: &HashKey) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                labels::MANAGED_BY.to_owned(),
                labels::MANAGER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            DATA_KEY.to_owned(),
            ByteString(key.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

fn key_of(secret: &Secret, namespace: &str, name: &str) -> Result<HashKey> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(DATA_KEY))
        .and_then(|v| HashKey::from_slice(&v.0))
        .ok_or_else(|| Error::MalformedHashKey {
            name: format!("{namespace}/{name}"),
            key: DATA_KEY,
            len: HashKey::LEN,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_created_secret_holds_the_key_and_reads_back_as_it() {
        let key = HashKey::generate();
        let made = secret(SECRET_NAME, &key);
        assert_eq!(made.immutable, Some(true), "the key never changes in place");
        assert_eq!(key_of(&made, "ops", SECRET_NAME).expect("a key"), key);
    }

    #[test]
    fn a_secret_without_a_32_byte_key_is_an_error_that_says_how_to_fix_it() {
        let mut short = secret(SECRET_NAME, &HashKey::generate());
        short.data = Some(BTreeMap::from([(DATA_KEY.into(), ByteString(vec![1; 16]))]));
        for bad in [short, Secret::default()] {
            let err = key_of(&bad, "ops", SECRET_NAME).expect_err("malformed");
            assert!(err.to_string().contains("delete the Secret"), "{err}");
        }
    }
}
