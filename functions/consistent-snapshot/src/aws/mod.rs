//! The AWS edge: the only place that names an `aws_sdk_*`, `aws_config` or `aws_smithy_*`
//! type. SDK types come in, model facts go out; every error is mapped once, naming the call,
//! the resource and AWS's error code.
//!
//! `aws/` imports `model`, `config`, `jobs` and `error`, never a concern (`run`, `copy`, …):
//! decisions are made above it, on the facts it returns.

pub mod catalog;
pub mod commands;
pub mod ebs;
pub mod iam;
pub mod instances;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod snapshots;
pub mod throttles;
pub mod volumes;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_smithy_async::future::pagination_stream::PaginationStream;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

pub use aws_config::SdkConfig;
use aws_sdk_ec2::config::retry::RetryPartition;

use crate::error::Error;

/// The function's AWS clients, built once per process.
#[derive(Debug, Clone)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub sns: aws_sdk_sns::Client,
    pub iam: aws_sdk_iam::Client,
    /// The EBS direct APIs (the cost estimate), in the function's region.
    pub ebs: aws_sdk_ebs::Client,
    pub catalog: catalog::Catalog,
    /// The function's own region (`AWS_REGION`): `ec2_in` of another region makes a client.
    pub region: String,
    /// What AWS throttled since the last look, over every client (`ec2_in`'s included).
    pub throttles: throttles::Throttles,
    /// The configuration the clients were made from: the vault's role is assumed with it.
    sdk: SdkConfig,
    /// EC2 in the vault account, as the vault's role (`vault_ec2`): made on first use, its
    /// credentials assumed then and renewed by the SDK before they expire.
    vault: std::sync::Arc<tokio::sync::OnceCell<aws_sdk_ec2::Client>>,
    /// This set of clients' number in the process: its retry partitions carry it.
    id: u64,
}

/// How many sets of clients this process made.
static CLIENTS_MADE: AtomicU64 = AtomicU64::new(0);

/// The retry partition of `service` in `region` for the clients numbered `id`. The SDK keeps a
/// partition's retry token bucket and adaptive rate limiter for the whole process, by name; its
/// own names are per service and region (`ec2-eu-west-1`), as AWS's throttling is. A Lambda
/// instance is one process with one set of clients, where the number changes nothing; two sets
/// in one process (the tests' Lambda instances) must not pace each other's calls.
fn partition(service: &str, region: &str, id: u64) -> RetryPartition {
    RetryPartition::new(format!("{service}-{region}-{id}"))
}

impl Clients {
    pub fn new(sdk: &SdkConfig, region: &str, catalog_table: &str) -> Self {
        let id = CLIENTS_MADE.fetch_add(1, Ordering::Relaxed);
        let throttles = throttles::Throttles::default();
        let counted = throttles.interceptor();
        macro_rules! client {
            ($sdk_crate:ident, $service:literal) => {{
                let mut config = $sdk_crate::config::Builder::from(sdk);
                config.push_interceptor(counted.clone());
                config.set_retry_partition(Some(partition($service, region, id)));
                $sdk_crate::Client::from_conf(config.build())
            }};
        }
        Clients {
            ec2: client!(aws_sdk_ec2, "ec2"),
            ssm: client!(aws_sdk_ssm, "ssm"),
            sqs: client!(aws_sdk_sqs, "sqs"),
            sns: client!(aws_sdk_sns, "sns"),
            iam: client!(aws_sdk_iam, "iam"),
            ebs: client!(aws_sdk_ebs, "ebs"),
            catalog: catalog::Catalog::with_client(
                client!(aws_sdk_dynamodb, "dynamodb"),
                catalog_table,
            ),
            region: region.to_string(),
            throttles,
            sdk: sdk.clone(),
            vault: Default::default(),
            id,
        }
    }

    /// An EC2 client in `region` of the vault account, signed by the vault's role
    /// `role_arn` (STS AssumeRole, through the SDK's own provider).
    pub async fn vault_ec2(&self, role_arn: &str, region: &str) -> aws_sdk_ec2::Client {
        let base = self
            .vault
            .get_or_init(|| async {
                let role = aws_config::sts::AssumeRoleProvider::builder(role_arn)
                    .session_name("consistent-snapshot-vault")
                    .configure(&self.sdk)
                    .build()
                    .await;
                let mut config = aws_sdk_ec2::config::Builder::from(&self.sdk);
                config.set_credentials_provider(Some(
                    aws_sdk_ec2::config::SharedCredentialsProvider::new(role),
                ));
                config.push_interceptor(self.throttles.interceptor());
                aws_sdk_ec2::Client::from_conf(config.build())
            })
            .await;
        // Another account: AWS throttles it apart from this one.
        let config = base
            .config()
            .to_builder()
            .region(aws_sdk_ec2::config::Region::new(region.to_string()))
            .retry_partition(partition("ec2-vault", region, self.id))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// An EC2 client for `region` with everything else as configured (endpoint included).
    pub fn ec2_in(&self, region: &str) -> aws_sdk_ec2::Client {
        if region == self.region || self.region.is_empty() {
            return self.ec2.clone();
        }
        let config = self
            .ec2
            .config()
            .to_builder()
            .region(aws_sdk_ec2::config::Region::new(region.to_string()))
            .retry_partition(partition("ec2", region, self.id))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }
}

impl Clients {
    /// An EBS direct API client for `region`, as `ec2_in`.
    pub fn ebs_in(&self, region: &str) -> aws_sdk_ebs::Client {
        if region == self.region || self.region.is_empty() {
            return self.ebs.clone();
        }
        let config = self
            .ebs
            .config()
            .to_builder()
            .region(aws_sdk_ebs::config::Region::new(region.to_string()))
            .retry_partition(partition("ebs", region, self.id))
            .build();
        aws_sdk_ebs::Client::from_conf(config)
    }
}

/// The SDK configuration the Lambda runs with. The SDK's adaptive retry rate-limits itself
/// against EC2 and SSM throttling; bounded in attempts and in time, so that one slow call
/// cannot use up the invocation. `AWS_ENDPOINT_URL` is honoured (the local emulator).
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::adaptive().with_max_attempts(5))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(15))
                .operation_timeout(Duration::from_secs(45))
                .build(),
        )
        .load()
        .await
}

/// Wraps an SDK error with the call and the resource it concerned.
pub(crate) fn aws<E>(call: &'static str, subject: impl Into<String>, err: E) -> Error
where
    E: ProvideErrorMetadata + std::error::Error,
{
    Error::Aws {
        call,
        subject: subject.into(),
        code: err.code().unwrap_or("Unknown").to_string(),
        message: DisplayErrorContext(&err).to_string(),
    }
}

/// AWS's error code of a failed call, if AWS answered one.
pub(crate) fn code_of<E: ProvideErrorMetadata>(err: &E) -> Option<&str> {
    err.code()
}

/// Follows every page of a paginated call, handing each page to `each`; the first error ends
/// it, mapped as `call` for `subject`. Only one page is held at a time.
pub(crate) async fn each_page<O, E>(
    mut pages: PaginationStream<Result<O, E>>,
    call: &'static str,
    subject: &str,
    mut each: impl FnMut(O),
) -> Result<(), Error>
where
    E: ProvideErrorMetadata + std::error::Error,
{
    while let Some(page) = pages.next().await {
        each(page.map_err(|e| aws(call, subject, e))?);
    }
    Ok(())
}

/// EC2 tags as a map.
pub(crate) fn tag_map(
    tags: &[aws_sdk_ec2::types::Tag],
) -> std::collections::BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// One EC2 tag.
pub(crate) fn ec2_tag(key: &str, value: &str) -> aws_sdk_ec2::types::Tag {
    aws_sdk_ec2::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
}

/// One EC2 filter with these values.
pub(crate) fn ec2_filter<S: Into<String>>(
    name: &str,
    values: impl IntoIterator<Item = S>,
) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
}

/// An SDK timestamp as a UTC time (to the second, as EC2 and SSM report them).
pub(crate) fn utc(t: &aws_smithy_types::DateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.secs(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(partition: Option<&RetryPartition>) -> String {
        partition.map(ToString::to_string).unwrap_or_default()
    }

    #[test]
    fn each_set_of_clients_retries_on_its_own_per_service_and_region() {
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let one = Clients::new(&sdk, "us-east-1", "catalog");
        let other = Clients::new(&sdk, "us-east-1", "catalog");
        let home = name(one.ec2.config().retry_partition());
        assert!(home.starts_with("ec2-us-east-1-"), "{home}");
        assert_ne!(home, name(other.ec2.config().retry_partition()));
        assert_eq!(
            home,
            name(one.ec2_in("us-east-1").config().retry_partition())
        );
        let away = name(one.ec2_in("eu-west-1").config().retry_partition());
        assert!(away.starts_with("ec2-eu-west-1-"), "{away}");
        assert_ne!(
            away,
            name(other.ec2_in("eu-west-1").config().retry_partition())
        );
        let ssm = name(one.ssm.config().retry_partition());
        assert!(ssm.starts_with("ssm-us-east-1-"), "{ssm}");
        let ebs = name(one.ebs_in("eu-west-1").config().retry_partition());
        assert!(ebs.starts_with("ebs-eu-west-1-"), "{ebs}");
    }
}
