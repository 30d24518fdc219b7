//! End to end: upgrading a deployment whose sets predate the catalog. `import` records them
//! as *imported* (a dry run first), once; they are kept by retention, never counted as
//! consistent, and restored only when asked.

use consistent_snapshot::catalog::Verdict;
use harness::{invoke, ServerSpec, World};
use serde_json::json;

#[tokio::test]
async fn sets_from_before_the_catalog_are_imported_once_and_kept() {
    let world = World::start(2).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[ServerSpec::windows("sql01", 1)])
        .await
        .expect("seed");
    let sql = ids[0].clone();
    let volumes = harness::attached_volumes(emulator, &sql)
        .await
        .expect("DescribeVolumes");
    // Two nights of an earlier version: tagged sets, no catalog.
    let mut old = Vec::new();
    for run in ["old-1", "old-2"] {
        for (volume, device) in &volumes {
            let tags = [
                ("ConsistentSnapshot:ManagedBy", "vss-test"),
                ("ConsistentSnapshot:InstanceId", sql.as_str()),
                ("ConsistentSnapshot:RunId", run),
                ("AppConsistent", "True"),
                ("Device", device.as_str()),
            ];
            let made = harness::plant_snapshot(emulator, volume, &tags)
                .await
                .expect("CreateSnapshot");
            old.push(made);
        }
    }
    let app = world.app(&[("RETAIN_COUNT", "1")]).expect("app");

    let dry = invoke(&app, json!({"action": "import", "dry_run": true}))
        .await
        .expect("dry run");
    assert_eq!(
        (dry["dry_run"].clone(), dry["sets"].clone()),
        (json!(true), json!(2)),
        "{dry}"
    );
    let (sets, _) = emulator.catalog().all_sets().await.expect("catalog");
    assert!(sets.is_empty(), "a dry run records nothing");

    let done = invoke(&app, json!({"action": "import"}))
        .await
        .expect("import");
    assert_eq!(done["sets"], json!(2), "{done}");
    let (sets, _) = emulator.catalog().all_sets().await.expect("catalog");
    assert_eq!(sets.len(), 2);
    assert!(sets.iter().all(|s| s.verdict == Verdict::Imported));
    let again = invoke(&app, json!({"action": "import"}))
        .await
        .expect("again");
    assert_eq!(again["sets"], json!(0), "imported once: {again}");

    // A verified night, then retention with RETAIN_COUNT=1: the imported sets are kept.
    let run_id = world
        .nightly(&app, "2026-11-23T00:00:00Z")
        .await
        .expect("night");
    let left = emulator
        .ec2()
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .expect("DescribeSnapshots");
    for id in &old {
        assert!(
            left.snapshots().iter().any(|s| s.snapshot_id() == Some(id)),
            "{id}: an imported snapshot is never deleted automatically"
        );
    }
    // The report counts only the verified set as a consistent backup.
    let report = world.report(&app).await.expect("report");
    assert_eq!(
        report["instances"][0]["latest_consistent"]["run_id"],
        json!(run_id),
        "{report}"
    );
    // An imported set is restored only when asked.
    let refused = world.restore(&app, &sql, "old-2", "volumes").await;
    assert!(refused.is_err(), "{refused:?}");
}
