//! EC2 instances: the tagged fleet, instances by id, one instance as a restore sees it, and
//! stopping and starting one.

use std::collections::{BTreeSet, HashMap, HashSet};

use aws_sdk_ec2::types::{Filter, Instance, InstanceType};

use crate::aws::{aws, code_of, each_page, ec2_filter, tag_map};
use crate::config::Config;
use crate::error::Error;
use crate::model::fleet::{AttachedVolume, HostFacts, InstanceFacts, InstanceView, RouteFacts};
use crate::model::state::{AttachmentState, InstanceState};
use crate::model::tags::TAG_NAME;

/// Reads an SDK instance into plain facts.
fn facts_of(instance: &Instance) -> Option<InstanceFacts> {
    let instance_id = instance.instance_id()?.to_string();
    let tags = tag_map(instance.tags());
    let mut volumes: Vec<AttachedVolume> = instance
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            Some(AttachedVolume {
                volume_id: m.ebs()?.volume_id()?.to_string(),
                device: m.device_name()?.to_string(),
            })
        })
        .collect();
    volumes.sort();
    Some(InstanceFacts {
        name: tags.get(TAG_NAME).filter(|n| !n.is_empty()).cloned(),
        state: instance
            .state()
            .and_then(|s| s.name())
            .map(|n| InstanceState::from(n.as_str()))
            .unwrap_or_else(|| InstanceState::Other("unknown".into())),
        platform: instance.platform().map(|p| p.as_str().to_string()),
        platform_details: instance.platform_details().map(str::to_string),
        root_device: instance.root_device_name().map(str::to_string),
        volumes,
        tags,
        host: HostFacts {
            instance_type: instance.instance_type().map(|t| t.as_str().to_string()),
            instance_profile: instance
                .iam_instance_profile()
                .and_then(|p| p.arn())
                .map(str::to_string),
            subnet_id: instance.subnet_id().map(str::to_string),
            vpc_id: instance.vpc_id().map(str::to_string),
            instance_store_gb: None,
        },
        instance_id,
    })
}

/// The instances carrying the target tag (or, when `ids` is given, those of them), in every
/// state but terminated: stopped ones are reported, not silently ignored.
pub async fn discover(
    ec2: &aws_sdk_ec2::Client,
    config: &Config,
    ids: Option<&[String]>,
) -> Result<Vec<InstanceFacts>, Error> {
    describe(ec2, &fleet_filters(config), ids, config.describe_page_size).await
}

/// DescribeInstances with these filters (and these ids, when given), every page followed;
/// sorted by instance id, each instance once.
async fn describe(
    ec2: &aws_sdk_ec2::Client,
    filters: &[Filter],
    ids: Option<&[String]>,
    page_size: i32,
) -> Result<Vec<InstanceFacts>, Error> {
    let mut pages = Pages::new(ec2, filters.to_vec(), ids, page_size);
    let mut found = Vec::new();
    while let Some(page) = pages.next_page().await? {
        found.extend(page);
    }
    found.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Ok(found)
}

/// The tagged fleet (or the instances of it asked for) a page at a time, for a caller that
/// need not hold the whole fleet's descriptions at once: a dispatch of 20,000 servers keeps
/// one page of 1,000.
pub fn discover_pages<'a>(
    ec2: &'a aws_sdk_ec2::Client,
    config: &Config,
    ids: Option<&[String]>,
) -> Pages<'a> {
    Pages::new(ec2, fleet_filters(config), ids, config.describe_page_size)
}

fn fleet_filters(config: &Config) -> Vec<Filter> {
    let tag = ec2_filter(
        &format!("tag:{}", config.target_tag_key),
        [config.target_tag_value.as_str()],
    );
    let states = ec2_filter(
        "instance-state-name",
        ["pending", "running", "stopping", "stopped"],
    );
    vec![tag, states]
}

/// DescribeInstances, a page at a time: every page of the filters (per 200 ids, when ids are
/// given), each instance handed over once.
pub struct Pages<'a> {
    ec2: &'a aws_sdk_ec2::Client,
    filters: Vec<Filter>,
    page_size: i32,
    /// The id chunks not described yet (one `None` for no ids).
    chunks: std::vec::IntoIter<Option<Vec<String>>>,
    current: Option<(DescribePages, String)>,
    seen: HashSet<String>,
}

type DescribePages = aws_smithy_async::future::pagination_stream::PaginationStream<
    Result<
        aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput,
        aws_sdk_ec2::error::SdkError<
            aws_sdk_ec2::operation::describe_instances::DescribeInstancesError,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    >,
>;

impl<'a> Pages<'a> {
    fn new(
        ec2: &'a aws_sdk_ec2::Client,
        filters: Vec<Filter>,
        ids: Option<&[String]>,
        page_size: i32,
    ) -> Self {
        // DescribeInstances takes at most 200 values in one filter.
        let chunks: Vec<Option<Vec<String>>> = match ids {
            None => vec![None],
            Some(ids) => {
                let unique: Vec<String> = ids
                    .iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .cloned()
                    .collect();
                unique
                    .chunks(IDS_PER_DESCRIBE)
                    .map(|c| Some(c.to_vec()))
                    .collect()
            }
        };
        Pages {
            ec2,
            filters,
            page_size,
            chunks: chunks.into_iter(),
            current: None,
            seen: HashSet::new(),
        }
    }

    /// The next page's instances not handed over before (possibly none); `None` once every
    /// page was read.
    pub async fn next_page(&mut self) -> Result<Option<Vec<InstanceFacts>>, Error> {
        loop {
            if let Some((pages, subject)) = self.current.as_mut() {
                match pages.next().await {
                    Some(page) => {
                        let page =
                            page.map_err(|e| aws("DescribeInstances", subject.as_str(), e))?;
                        let facts: Vec<InstanceFacts> = page
                            .reservations()
                            .iter()
                            .flat_map(|r| r.instances())
                            .filter_map(facts_of)
                            .filter(|f| self.seen.insert(f.instance_id.clone()))
                            .collect();
                        return Ok(Some(facts));
                    }
                    None => self.current = None,
                }
            }
            let Some(chunk) = self.chunks.next() else {
                return Ok(None);
            };
            let mut request = self
                .ec2
                .describe_instances()
                .set_filters(Some(self.filters.clone()))
                .max_results(self.page_size);
            let subject = match &chunk {
                Some(chunk) => {
                    request = request.filters(ec2_filter("instance-id", chunk.iter().cloned()));
                    format!(
                        "{} instances from {}",
                        chunk.len(),
                        chunk.first().map(String::as_str).unwrap_or("-")
                    )
                }
                None => "the tagged fleet".to_string(),
            };
            self.current = Some((request.into_paginator().send(), subject));
        }
    }

    /// Whether an instance of this id was handed over.
    pub fn found(&self, instance_id: &str) -> bool {
        self.seen.contains(instance_id)
    }
}

/// The instances with these ids that still exist, by id, each described once (none asked: no
/// call).
pub async fn by_id<'a>(
    ec2: &aws_sdk_ec2::Client,
    config: &Config,
    instance_ids: impl IntoIterator<Item = &'a str>,
) -> Result<HashMap<String, InstanceFacts>, Error> {
    let ids: Vec<String> = instance_ids
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let found = describe(ec2, &[], Some(&ids), config.describe_page_size).await?;
    Ok(found
        .into_iter()
        .map(|f| (f.instance_id.clone(), f))
        .collect())
}

/// Ids a DescribeInstances call takes in one filter: more than this, and reading the tagged
/// fleet (1,000 a page) first costs fewer calls than describing them all by id.
const IDS_PER_DESCRIBE: usize = 200;

/// As `by_id`, for ids that are mostly the tagged fleet's: when more than one call by id would
/// be needed, the tagged fleet is read first (1,000 a page) and those found in it come from
/// it; only the others (untagged since, terminated) are described by id.
pub async fn by_id_from_fleet(
    ec2: &aws_sdk_ec2::Client,
    config: &Config,
    ids: &BTreeSet<&str>,
) -> Result<HashMap<String, InstanceFacts>, Error> {
    let fleet = if ids.len() > IDS_PER_DESCRIBE {
        discover(ec2, config, None).await?
    } else {
        Vec::new()
    };
    let mut found: HashMap<String, InstanceFacts> = fleet
        .into_iter()
        .filter(|f| ids.contains(f.instance_id.as_str()))
        .map(|f| (f.instance_id.clone(), f))
        .collect();
    let others: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !found.contains_key(*id))
        .collect();
    found.extend(by_id(ec2, config, others).await?);
    Ok(found)
}

/// The instance's state, zone and attachments; `None` when it does not exist.
pub async fn view(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> Result<Option<InstanceView>, Error> {
    let out = match ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if e.as_service_error().and_then(code_of) == Some("InvalidInstanceID.NotFound") => {
            return Ok(None)
        }
        Err(e) => return Err(aws("DescribeInstances", instance_id, e)),
    };
    let Some(instance) = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(instance_id))
    else {
        return Ok(None);
    };
    let state = instance
        .state()
        .and_then(|s| s.name())
        .map(|n| InstanceState::from(n.as_str()))
        .unwrap_or_default();
    if state == InstanceState::Terminated {
        return Ok(None);
    }
    let tags = tag_map(instance.tags());
    Ok(Some(InstanceView {
        name: tags
            .get(TAG_NAME)
            .cloned()
            .unwrap_or_else(|| instance_id.to_string()),
        state,
        zone: instance
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_string(),
        devices: instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| {
                let ebs = m.ebs()?;
                Some((
                    m.device_name()?.to_string(),
                    (
                        ebs.volume_id()?.to_string(),
                        AttachmentState::from(ebs.status().map(|s| s.as_str()).unwrap_or_default()),
                    ),
                ))
            })
            .collect(),
    }))
}

pub async fn stop(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<(), Error> {
    ec2.stop_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| aws("StopInstances", instance_id, e))?;
    Ok(())
}

pub async fn start(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<(), Error> {
    ec2.start_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| aws("StartInstances", instance_id, e))?;
    Ok(())
}

/// Fills each instance's `instance_store_gb` from its type (DescribeInstanceTypes, 100 types a
/// call): the instance-store volumes its type comes with, which no snapshot protects.
pub async fn with_instance_store(
    ec2: &aws_sdk_ec2::Client,
    fleet: &mut [InstanceFacts],
) -> Result<(), Error> {
    let types: Vec<String> = fleet
        .iter()
        .filter_map(|i| i.host.instance_type.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut store: HashMap<String, u32> = HashMap::new();
    for chunk in types.chunks(100) {
        let out = ec2
            .describe_instance_types()
            .set_instance_types(Some(
                chunk
                    .iter()
                    .map(|t| InstanceType::from(t.as_str()))
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| aws("DescribeInstanceTypes", chunk.join(","), e))?;
        for info in out.instance_types() {
            if let Some(t) = info.instance_type() {
                let gb = info
                    .instance_storage_info()
                    .and_then(|s| s.total_size_in_gb())
                    .unwrap_or(0);
                store.insert(
                    t.as_str().to_string(),
                    u32::try_from(gb).unwrap_or(u32::MAX),
                );
            }
        }
    }
    for instance in fleet {
        instance.host.instance_store_gb = instance
            .host
            .instance_type
            .as_ref()
            .and_then(|t| store.get(t).copied());
    }
    Ok(())
}

/// Which subnets and VPCs of the fleet can reach the EC2 API: a default route (0.0.0.0/0 to an
/// internet or NAT gateway, or any other target) in the subnet's route table (its own, else
/// its VPC's main one), or an `ec2` interface endpoint in the VPC. The fleet's VPCs are read
/// once each.
pub async fn ec2_routes(
    ec2: &aws_sdk_ec2::Client,
    fleet: &[InstanceFacts],
    region: &str,
) -> Result<RouteFacts, Error> {
    let vpc_ids: Vec<String> = fleet
        .iter()
        .filter_map(|i| i.host.vpc_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut facts = RouteFacts::default();
    if vpc_ids.is_empty() {
        return Ok(facts);
    }
    let subject = format!("route tables of {}", vpc_ids.join(", "));
    let pages = ec2
        .describe_route_tables()
        .filters(ec2_filter("vpc-id", vpc_ids.iter().map(String::as_str)))
        .into_paginator()
        .send();
    each_page(pages, "DescribeRouteTables", &subject, |page| {
        for table in page.route_tables() {
            let default_route = table.routes().iter().any(|r| {
                r.destination_cidr_block() == Some("0.0.0.0/0")
                    && r.state().map(|s| s.as_str()) != Some("blackhole")
            });
            for association in table.associations() {
                if association.main() == Some(true) {
                    if let Some(vpc) = table.vpc_id() {
                        facts.main_routes.insert(vpc.to_string(), default_route);
                    }
                } else if let Some(subnet) = association.subnet_id() {
                    facts
                        .subnet_routes
                        .insert(subnet.to_string(), default_route);
                }
            }
        }
    })
    .await?;
    let service = format!("com.amazonaws.{region}.ec2");
    let pages = ec2
        .describe_vpc_endpoints()
        .filters(ec2_filter("vpc-id", vpc_ids.iter().map(String::as_str)))
        .filters(ec2_filter("service-name", [service.as_str()]))
        .into_paginator()
        .send();
    each_page(pages, "DescribeVpcEndpoints", &subject, |page| {
        facts.ec2_endpoints.extend(
            page.vpc_endpoints()
                .iter()
                .filter(|e| {
                    e.state().map(|s| s.as_str().to_ascii_lowercase()) == Some("available".into())
                })
                .filter_map(|e| e.vpc_id().map(str::to_string)),
        );
    })
    .await?;
    Ok(facts)
}
