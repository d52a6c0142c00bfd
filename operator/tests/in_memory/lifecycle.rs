//! The exact apply requests: one field manager, always with force (the real-cluster
//! lifecycle scenarios are in tests/controller/lifecycle.rs).

use crate::support::*;

#[tokio::test]
async fn every_apply_uses_the_one_field_manager_with_force() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").create(&h).await;
    h.wait_for_status("users").await;
    let applies: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.content_type.starts_with("application/apply-patch"))
        .collect();
    assert!(applies.len() >= 5, "children and status are applied");
    for r in applies {
        assert_eq!(
            r.field_manager(),
            Some("scalable-api-operator"),
            "{}",
            r.path
        );
        assert_eq!(r.param("force"), Some("true"), "{}", r.path);
    }
}
