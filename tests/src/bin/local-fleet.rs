//! `make invoke`'s set-up: seeds the demo fleet and the tracking queue into the emulator that
//! `make emulator` left running on 127.0.0.1, and writes the function's environment for it to
//! `.emulator/local.env` (read by `cargo lambda watch --env-file`).

use harness::{
    demo_fleet, seed, source::queue_arn, workspace_root, Emulator, CATALOG_TABLE, PROBE_DOCUMENT,
    REGION,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> harness::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or("usage: local-fleet <emulator port>")?;
    let emulator = Emulator::connect(port).await?;
    // What the stack creates beside the function: its catalog and its readiness probe.
    emulator.create_catalog(CATALOG_TABLE).await?;
    emulator.create_probe_document().await?;
    let queue = emulator
        .create_queue("consistent-snapshot-tracking", 30)
        .await?;
    let fleet = demo_fleet();
    let ids = seed(&emulator, &fleet).await?;
    for (server, id) in fleet.iter().zip(&ids) {
        println!("    {id}  {}", server.name);
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("QUEUE_URL", queue.as_str()),
        ("QUEUE_ARN", &queue_arn(&queue)),
        ("CATALOG_TABLE", CATALOG_TABLE),
        ("PROBE_DOCUMENT", PROBE_DOCUMENT),
        ("MANAGED_BY", "consistent-snapshot-local"),
        ("COPY_REGIONS", "eu-west-1"),
        ("TRACK_POLL_INITIAL_SECONDS", "2"),
        ("TRACK_POLL_MAX_SECONDS", "10"),
    ];
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let path = workspace_root().join(".emulator/local.env");
    std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
    std::fs::write(&path, text)?;
    println!(
        "==> seeded {} instances and queue {queue}; environment in {}",
        ids.len(),
        path.display()
    );
    Ok(())
}
