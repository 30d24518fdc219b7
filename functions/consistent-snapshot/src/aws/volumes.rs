//! EBS volumes: the ones a restore made or replaced (found by tag), the ones at an instance's
//! devices (by id), and creating, attaching, detaching, tagging and deleting one.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, TagSpecification, VolumeType};

use crate::aws::{aws, code_of, each_page, ec2_filter, ec2_tag, tag_map};
use crate::error::Error;
use crate::model::restore::VolumeFacts;

/// DescribeVolumes with these filters, every page.
async fn describe(
    ec2: &aws_sdk_ec2::Client,
    filters: Vec<Filter>,
    subject: &str,
) -> Result<Vec<VolumeFacts>, Error> {
    let pages = ec2
        .describe_volumes()
        .set_filters(Some(filters))
        .max_results(500)
        .into_paginator()
        .send();
    let mut found = Vec::new();
    each_page(pages, "DescribeVolumes", subject, |page| {
        for v in page.volumes() {
            let Some(volume_id) = v.volume_id() else {
                continue;
            };
            found.push(VolumeFacts {
                volume_id: volume_id.to_string(),
                state: v.state().map(|s| s.as_str()).unwrap_or_default().into(),
                zone: v.availability_zone().unwrap_or_default().to_string(),
                volume_type: v.volume_type().map(|t| t.as_str().to_string()),
                size_gib: v.size(),
                iops: v.iops(),
                throughput: v.throughput(),
                attachment: v.attachments().first().map(|a| {
                    (
                        a.instance_id().unwrap_or_default().to_string(),
                        a.device().unwrap_or_default().to_string(),
                        a.state().map(|s| s.as_str()).unwrap_or_default().into(),
                    )
                }),
                tags: tag_map(v.tags()),
            });
        }
    })
    .await?;
    Ok(found)
}

/// The volumes carrying tag `key` = `value`.
pub async fn tagged(
    ec2: &aws_sdk_ec2::Client,
    key: &str,
    value: &str,
) -> Result<Vec<VolumeFacts>, Error> {
    describe(ec2, vec![ec2_filter(&format!("tag:{key}"), [value])], value).await
}

/// These volumes, by id (none asked: no call).
pub async fn by_id(
    ec2: &aws_sdk_ec2::Client,
    ids: Vec<String>,
) -> Result<BTreeMap<String, VolumeFacts>, Error> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let found = describe(
        ec2,
        vec![ec2_filter("volume-id", ids)],
        "the instance's volumes",
    )
    .await?;
    Ok(found
        .into_iter()
        .map(|v| (v.volume_id.clone(), v))
        .collect())
}

/// A volume to create from a snapshot, with its tags and the client token that makes a
/// repeated call (after a lost answer) the same volume in AWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVolume<'a> {
    pub snapshot_id: &'a str,
    pub zone: &'a str,
    pub volume_type: Option<&'a str>,
    pub size_gib: Option<i32>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    pub client_token: String,
    pub tags: Vec<(&'a str, String)>,
}

/// Creates one volume; answers its id. `subject` names it in an error.
pub async fn create(
    ec2: &aws_sdk_ec2::Client,
    volume: NewVolume<'_>,
    subject: &str,
) -> Result<String, Error> {
    let mut request = ec2
        .create_volume()
        .snapshot_id(volume.snapshot_id)
        .availability_zone(volume.zone)
        .client_token(volume.client_token)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .set_tags(Some(
                    volume.tags.iter().map(|(k, v)| ec2_tag(k, v)).collect(),
                ))
                .build(),
        )
        .set_size(volume.size_gib)
        .set_iops(volume.iops)
        .set_throughput(volume.throughput);
    if let Some(kind) = volume.volume_type {
        request = request.volume_type(VolumeType::from(kind));
    }
    let out = request
        .send()
        .await
        .map_err(|e| aws("CreateVolume", subject, e))?;
    Ok(out.volume_id().unwrap_or_default().to_string())
}

/// Writes these tags on one volume.
pub async fn tag(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    tags: &[(&str, String)],
    subject: &str,
) -> Result<(), Error> {
    ec2.create_tags()
        .resources(volume_id)
        .set_tags(Some(tags.iter().map(|(k, v)| ec2_tag(k, v)).collect()))
        .send()
        .await
        .map_err(|e| aws("CreateTags", subject, e))?;
    Ok(())
}

pub async fn detach(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    instance_id: &str,
    device: &str,
) -> Result<(), Error> {
    ec2.detach_volume()
        .volume_id(volume_id)
        .instance_id(instance_id)
        .device(device)
        .send()
        .await
        .map_err(|e| {
            aws(
                "DetachVolume",
                format!("{volume_id} from {instance_id} {device}"),
                e,
            )
        })?;
    Ok(())
}

pub async fn attach(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    instance_id: &str,
    device: &str,
) -> Result<(), Error> {
    ec2.attach_volume()
        .volume_id(volume_id)
        .instance_id(instance_id)
        .device(device)
        .send()
        .await
        .map_err(|e| {
            aws(
                "AttachVolume",
                format!("{volume_id} to {instance_id} {device}"),
                e,
            )
        })?;
    Ok(())
}

/// Deletes one volume; answers `false` when it was already gone (`InvalidVolume.NotFound`).
pub async fn delete(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    subject: &str,
) -> Result<bool, Error> {
    match ec2.delete_volume().volume_id(volume_id).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().and_then(code_of) == Some("InvalidVolume.NotFound") => {
            Ok(false)
        }
        Err(e) => Err(aws("DeleteVolume", subject, e)),
    }
}
