//! The ScalableApi watch of `--namespaces a,b`: one watcher per namespace, merged into the
//! one stream and the one reflector store that kube-runtime's `Controller::for_stream` takes
//! (its `Controller::new` takes a single `Api`, which is one namespace or all of them).
//!
//! A reflector `Writer` treats every watcher's relist (`Init`, `InitApply`.., `InitDone`) as
//! the whole truth: fed by two watchers, namespace `a`'s `InitDone` would swap in a store
//! without namespace `b`. So each namespace's events are turned into plain `Apply`s, and its
//! relist's end into a `Delete` of each of that namespace's stored objects the relist did not
//! bring back (what was deleted while the watch was down). The store is marked ready at once
//! (one empty `Init`/`InitDone` first) rather than after every namespace's first list: the
//! controller then reconciles each object as soon as its namespace lists it, and an object
//! is always reconciled from its own, complete copy.

use std::collections::HashSet;
use std::fmt::Debug;

use futures::{Stream, StreamExt, future, stream};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// The applied `K`s of every namespace in `namespaces`, kept in `writer`'s store.
pub fn watch_namespaces<K>(
    client: &Client,
    namespaces: &[String],
    writer: Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let store = writer.as_reader();
    let per_namespace = namespaces.iter().map(|ns| {
        let api = Api::<K>::namespaced(client.clone(), ns);
        let events = watcher::watcher(api, watcher::Config::default());
        as_plain_events(events, ns.clone(), store.clone()).boxed()
    });
    let merged = stream::iter([Ok(Event::Init), Ok(Event::InitDone)])
        .chain(stream::select_all(per_namespace));
    reflector::reflector(writer, merged).applied_objects()
}

/// One namespace's watcher events as `Apply`/`Delete` only, for a store that several
/// namespaces share; `store` is that shared store, read when a relist ends.
fn as_plain_events<K>(
    events: impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    namespace: String,
    store: Store<K>,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    // Names seen since the relist began; `None` outside a relist.
    events
        .scan(None::<HashSet<String>>, move |relisted, event| {
            let out: Vec<watcher::Result<Event<K>>> = match event {
                Err(e) => vec![Err(e)],
                Ok(Event::Init) => {
                    *relisted = Some(HashSet::new());
                    Vec::new()
                }
                Ok(Event::InitApply(obj)) => {
                    if let Some(seen) = relisted.as_mut() {
                        seen.insert(obj.name_any());
                    }
                    vec![Ok(Event::Apply(obj))]
                }
                Ok(Event::InitDone) => {
                    let seen = relisted.take().unwrap_or_default();
                    // Every event this stream yielded before is in the store by now: the
                    // reflector applies each one before this stream is polled again.
                    store
                        .state()
                        .into_iter()
                        .filter(|o| {
                            o.namespace().as_deref() == Some(namespace.as_str())
                                && !seen.contains(&o.name_any())
                        })
                        .map(|o| Ok(Event::Delete((*o).clone())))
                        .collect()
                }
                Ok(event) => vec![Ok(event)],
            };
            future::ready(Some(stream::iter(out)))
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn relist(objects: &[ConfigMap]) -> Vec<watcher::Result<Event<ConfigMap>>> {
        std::iter::once(Ok(Event::Init))
            .chain(objects.iter().cloned().map(|o| Ok(Event::InitApply(o))))
            .chain(std::iter::once(Ok(Event::InitDone)))
            .collect()
    }

    fn stored(store: &Store<ConfigMap>) -> Vec<String> {
        let mut keys: Vec<String> = store
            .state()
            .iter()
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
        keys.sort();
        keys
    }

    /// Runs the namespaces' event lists through the merge into one store, as the controller does.
    async fn merge(
        namespaces: Vec<(&str, Vec<watcher::Result<Event<ConfigMap>>>)>,
    ) -> Store<ConfigMap> {
        let (store, writer) = reflector::store::<ConfigMap>();
        let per_namespace = namespaces.into_iter().map(|(ns, events)| {
            as_plain_events(stream::iter(events), ns.to_owned(), store.clone()).boxed()
        });
        let merged = stream::iter([Ok(Event::Init), Ok(Event::InitDone)])
            .chain(stream::select_all(per_namespace));
        reflector::reflector(writer, merged)
            .for_each(|_| future::ready(()))
            .await;
        store
    }

    #[tokio::test]
    async fn one_namespaces_relist_keeps_the_other_namespaces_objects() {
        let mut a = relist(&[cm("a", "x")]);
        // `a` relists after `b` listed: a plain reflector would swap in a store without `b`.
        let b = relist(&[cm("b", "z")]);
        a.extend(relist(&[cm("a", "x")]));
        let store = merge(vec![("b", b), ("a", a)]).await;
        assert_eq!(stored(&store), ["a/x", "b/z"]);
        assert!(store.wait_until_ready().await.is_ok());
    }

    #[tokio::test]
    async fn an_object_missing_from_a_relist_is_deleted_from_the_store() {
        let mut a = relist(&[cm("a", "x"), cm("a", "y")]);
        a.extend(relist(&[cm("a", "x")]));
        let b = relist(&[cm("b", "y")]);
        let store = merge(vec![("a", a), ("b", b)]).await;
        assert_eq!(
            stored(&store),
            ["a/x", "b/y"],
            "a/y went while the watch was down"
        );
    }

    #[tokio::test]
    async fn applies_and_deletes_between_relists_pass_through() {
        let mut a = relist(&[cm("a", "x")]);
        a.push(Ok(Event::Apply(cm("a", "new"))));
        a.push(Ok(Event::Delete(cm("a", "x"))));
        let store = merge(vec![("a", a)]).await;
        assert_eq!(stored(&store), ["a/new"]);
    }
}
