//! The simulated Windows fleet: servers as specs, launched into the emulator with their
//! volumes, tags and simulated Windows side.

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, InstanceType, ResourceType, Tag, TagSpecification,
};
use std::collections::BTreeMap;

use crate::emulator::Emulator;
use crate::sim::{Agent, VssOutcome, Windows};
use crate::Result;

/// The demo fleet: well-behaved Windows servers, one whose VSS freeze fails, one whose SSM
/// agent is offline, one untagged and one stopped.
pub fn demo_fleet() -> Vec<ServerSpec> {
    vec![
        ServerSpec::windows("sql-prod-01", 3),
        ServerSpec::windows("sql-prod-02", 2).sim(Windows {
            duration: Some(2.5),
            ..Windows::default()
        }),
        ServerSpec::windows("exchange-01", 3),
        ServerSpec::windows("files-01", 2),
        ServerSpec::windows("files-02", 3),
        ServerSpec::windows("app-01", 2),
        ServerSpec::windows("sql-dev-01", 2).sim(Windows::outcome(VssOutcome::VssFailure)),
        ServerSpec::windows("branch-01", 1).sim(Windows::agent(Agent::Offline)),
        ServerSpec::windows("print01", 1).untagged(),
        ServerSpec::windows("legacy01", 2).stopped(),
    ]
}
pub const TAG_KEY: &str = "ConsistentSnapshot";
pub const TAG_VALUE: &str = "WindowsVSS";

/// One simulated server of the fleet.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub name: String,
    pub windows: bool,
    pub tagged: bool,
    pub data_volumes: usize,
    pub stopped: bool,
    pub extra_tags: Vec<(String, String)>,
    /// How the simulated Windows side behaves (server.py's fields).
    pub sim: Windows,
}

impl ServerSpec {
    pub fn windows(name: &str, data_volumes: usize) -> Self {
        ServerSpec {
            name: name.into(),
            windows: true,
            tagged: true,
            data_volumes,
            stopped: false,
            extra_tags: vec![],
            sim: Windows::default(),
        }
    }

    pub fn sim(mut self, sim: Windows) -> Self {
        self.sim = sim;
        self
    }

    /// Without the target tag: not part of the fleet.
    pub fn untagged(mut self) -> Self {
        self.tagged = false;
        self
    }

    pub fn stopped(mut self) -> Self {
        self.stopped = true;
        self
    }

    /// Launched from a Linux AMI.
    pub fn linux(mut self) -> Self {
        self.windows = false;
        self
    }

    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.extra_tags.push((key.into(), value.into()));
        self
    }
}

pub const DATA_DEVICES: [&str; 4] = ["xvdf", "xvdg", "xvdh", "xvdi"];

pub async fn image_ids(ec2: &aws_sdk_ec2::Client) -> Result<(String, String)> {
    let windows = ec2
        .describe_images()
        .filters(Filter::builder().name("platform").values("windows").build())
        .send()
        .await?;
    let windows = windows
        .images()
        .first()
        .and_then(|i| i.image_id())
        .ok_or("no Windows AMI in the emulator")?;
    let all = ec2.describe_images().send().await?;
    let linux = all
        .images()
        .iter()
        .find(|i| i.platform().is_none())
        .and_then(|i| i.image_id())
        .ok_or("no Linux AMI in the emulator")?;
    Ok((windows.to_string(), linux.to_string()))
}

fn mappings(data_volumes: usize) -> Vec<BlockDeviceMapping> {
    // moto creates no root volume when mappings are given: list the root device too.
    std::iter::once("/dev/sda1")
        .chain(DATA_DEVICES.iter().copied().take(data_volumes))
        .enumerate()
        .map(|(i, device)| {
            BlockDeviceMapping::builder()
                .device_name(device)
                .ebs(
                    EbsBlockDevice::builder()
                        .volume_size(if i == 0 { 50 } else { 100 })
                        .build(),
                )
                .build()
        })
        .collect()
}

/// Launches the servers (one reservation each) and configures their simulated Windows side.
pub async fn seed(emulator: &Emulator, servers: &[ServerSpec]) -> Result<Vec<String>> {
    let ec2 = emulator.ec2();
    let (windows, linux) = image_ids(&ec2).await?;
    let mut ids = Vec::new();
    let mut sim = BTreeMap::new();
    for server in servers {
        let mut tags = vec![Tag::builder().key("Name").value(&server.name).build()];
        if server.tagged {
            tags.push(Tag::builder().key(TAG_KEY).value(TAG_VALUE).build());
        }
        tags.extend(
            server
                .extra_tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build()),
        );
        let out = ec2
            .run_instances()
            .image_id(if server.windows { &windows } else { &linux })
            .instance_type(InstanceType::M5Large)
            .min_count(1)
            .max_count(1)
            .set_block_device_mappings(Some(mappings(server.data_volumes)))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags))
                    .build(),
            )
            .send()
            .await?;
        let id = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or("no instance launched")?
            .to_string();
        if server.stopped {
            ec2.stop_instances().instance_ids(&id).send().await?;
        }
        sim.insert(id.clone(), server.sim.clone());
        ids.push(id);
    }
    emulator.simulate(&sim)?;
    Ok(ids)
}

/// Launches `count` tagged Windows servers, `per_reservation` at a time, all behaving well.
pub async fn seed_bulk(
    emulator: &Emulator,
    count: usize,
    per_reservation: usize,
    data_volumes: usize,
) -> Result<Vec<String>> {
    let ec2 = emulator.ec2();
    let (windows, _) = image_ids(&ec2).await?;
    let mut ids = Vec::new();
    while ids.len() < count {
        let n = per_reservation.min(count - ids.len()) as i32;
        let out = ec2
            .run_instances()
            .image_id(&windows)
            .min_count(n)
            .max_count(n)
            .set_block_device_mappings(Some(mappings(data_volumes)))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(Tag::builder().key(TAG_KEY).value(TAG_VALUE).build())
                    .build(),
            )
            .send()
            .await?;
        ids.extend(
            out.instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string)),
        );
    }
    let sim: BTreeMap<String, Windows> = ids
        .iter()
        .map(|id| (id.clone(), Windows::timing(0.05, 0.1)))
        .collect();
    emulator.simulate(&sim)?;
    Ok(ids)
}
