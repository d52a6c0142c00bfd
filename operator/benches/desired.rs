//! `desired()` for one fully-featured ScalableApi (target: < 50 µs per object).
//!
//! cargo bench -p scalable-api-operator --bench desired

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use operator::crd::ScalableApi;
use operator::desired::{Inputs, desired};

const FULL: &str = r#"
apiVersion: scalable.dev/v1alpha1
kind: ScalableApi
metadata: { name: users, namespace: shop, uid: 5e1f0c1a-0000-4000-8000-000000000001 }
spec:
  autoscaling:
    minReplicas: 3
    maxReplicas: 20
    targetCPUUtilizationPercentage: 50
    targetMemoryUtilizationPercentage: 80
    behavior: { scaleDown: { stabilizationWindowSeconds: 300 } }
  resources: { requests: { cpu: 100m, memory: 64Mi }, limits: { memory: 256Mi } }
  database:
    host: postgres.shop.svc
    name: users
    user: app
    passwordSecretRef: { name: users-db, key: password }
  cache: { enabled: true, ttlSeconds: 300, maxMemory: 64Mi }
  rateLimit: { requestsPerSecond: 200, burst: 400 }
"#;

fn bench(c: &mut Criterion) {
    let sapi: ScalableApi = serde_saphyr::from_str(FULL).expect("fixture parses");
    let inputs = Inputs {
        secret_hash: Some("0123456789abcdef".into()),
        ..Inputs::default()
    };
    c.bench_function("desired/full", |b| {
        b.iter(|| desired(black_box(&sapi), black_box(&inputs)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
