//! The simulated Windows fleet: servers as specs, launched into the emulator with their
//! volumes, tags and simulated Windows side.

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, IamInstanceProfileSpecification, InstanceType,
    ResourceType, Tag, TagSpecification,
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
    /// `None`: m5.large.
    pub instance_type: Option<String>,
    /// Launched without the fleet's instance profile.
    pub no_instance_profile: bool,
    /// Launched with a profile whose role holds no permission (no AWSEC2VssSnapshotPolicy).
    pub bare_role: bool,
    /// Launched into a subnet with no route out and no ec2 endpoint.
    pub private_subnet: bool,
    /// Its volumes encrypted with the account's default EBS key (`aws/ebs`).
    pub encrypted: bool,
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
            instance_type: None,
            no_instance_profile: false,
            bare_role: false,
            private_subnet: false,
            encrypted: false,
        }
    }

    /// Its volumes encrypted with the default EBS key, as EBS encryption by default makes them.
    pub fn encrypted(mut self) -> Self {
        self.encrypted = true;
        self
    }

    pub fn instance_type(mut self, instance_type: &str) -> Self {
        self.instance_type = Some(instance_type.into());
        self
    }

    pub fn without_instance_profile(mut self) -> Self {
        self.no_instance_profile = true;
        self
    }

    /// With an instance profile whose role lacks AWSEC2VssSnapshotPolicy.
    pub fn with_bare_role(mut self) -> Self {
        self.bare_role = true;
        self
    }

    pub fn in_private_subnet(mut self) -> Self {
        self.private_subnet = true;
        self
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

fn mappings(data_volumes: usize, encrypted: bool) -> Vec<BlockDeviceMapping> {
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
                        .encrypted(encrypted)
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
    let zone = emulator.http(
        "POST",
        "/_sim/landing-zone",
        &serde_json::json!({"region": crate::REGION}),
    )?;
    let profile = zone["instance_profile"]
        .as_str()
        .ok_or("no instance profile from /_sim/landing-zone")?
        .to_string();
    let bare_profile = zone["bare_instance_profile"]
        .as_str()
        .ok_or("no bare instance profile from /_sim/landing-zone")?
        .to_string();
    let private = if servers.iter().any(|s| s.private_subnet) {
        Some(private_subnet(&ec2).await?)
    } else {
        None
    };
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
        let mut launch = ec2
            .run_instances()
            .image_id(if server.windows { &windows } else { &linux })
            .instance_type(
                server
                    .instance_type
                    .as_deref()
                    .map(InstanceType::from)
                    .unwrap_or(InstanceType::M5Large),
            );
        if !server.no_instance_profile {
            launch = launch.iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .name(if server.bare_role {
                        &bare_profile
                    } else {
                        &profile
                    })
                    .build(),
            );
        }
        if let (true, Some(subnet)) = (server.private_subnet, &private) {
            launch = launch.subnet_id(subnet);
        }
        let out = launch
            .min_count(1)
            .max_count(1)
            .set_block_device_mappings(Some(mappings(server.data_volumes, server.encrypted)))
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

/// A subnet of its own VPC, with only the local route and no endpoint: no way to the EC2 API.
async fn private_subnet(ec2: &aws_sdk_ec2::Client) -> Result<String> {
    subnet_in_new_vpc(ec2, "10.77.0.0/16", "10.77.1.0/24").await
}

/// The addresses of one of the emulator's default subnets (a /20). Past them, moto's
/// RunInstances slows down call after call (measured: a call of 500 instances × 3 volumes took
/// 1.1 s at 500 instances, 12.3 s at 10,000, 23.9 s at 12,000; into a /16, 3.0 s at 10,000 and
/// 15 s at 20,000).
const DEFAULT_SUBNET_ROOM: usize = 4_000;

/// A subnet of 65,536 addresses for large fleets, made once an emulator.
async fn large_subnet(ec2: &aws_sdk_ec2::Client) -> Result<String> {
    const CIDR: &str = "10.64.0.0/16";
    let found = ec2
        .describe_subnets()
        .filters(Filter::builder().name("cidr-block").values(CIDR).build())
        .send()
        .await?;
    match found.subnets().iter().find_map(|s| s.subnet_id()) {
        Some(id) => Ok(id.to_string()),
        None => subnet_in_new_vpc(ec2, CIDR, CIDR).await,
    }
}

/// A new VPC of `vpc_cidr` and a subnet of `subnet_cidr` in it.
async fn subnet_in_new_vpc(
    ec2: &aws_sdk_ec2::Client,
    vpc_cidr: &str,
    subnet_cidr: &str,
) -> Result<String> {
    let vpc = ec2.create_vpc().cidr_block(vpc_cidr).send().await?;
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .ok_or("CreateVpc answered no VPC id")?;
    let subnet = ec2
        .create_subnet()
        .vpc_id(vpc_id)
        .cidr_block(subnet_cidr)
        .send()
        .await?;
    Ok(subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .ok_or("CreateSubnet answered no subnet id")?
        .to_string())
}

/// Launches `count` tagged Windows servers, `per_reservation` at a time, all behaving well
/// (beyond a default subnet's addresses, into a subnet of their own).
pub async fn seed_bulk(
    emulator: &Emulator,
    count: usize,
    per_reservation: usize,
    data_volumes: usize,
) -> Result<Vec<String>> {
    let ec2 = emulator.ec2();
    let (windows, _) = image_ids(&ec2).await?;
    let subnet = if count > DEFAULT_SUBNET_ROOM {
        Some(large_subnet(&ec2).await?)
    } else {
        None
    };
    let mut ids = Vec::new();
    while ids.len() < count {
        let n = per_reservation.min(count - ids.len()) as i32;
        let out = ec2
            .run_instances()
            .image_id(&windows)
            .min_count(n)
            .max_count(n)
            .set_subnet_id(subnet.clone())
            .set_block_device_mappings(Some(mappings(data_volumes, false)))
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
