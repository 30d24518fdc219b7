//! The catalog: one DynamoDB table per deployment (`CATALOG_TABLE`), which only the function's
//! role may write. Items, by key:
//!
//! | pk                 | sk                                   | what                                  | expires        |
//! |--------------------|--------------------------------------|---------------------------------------|----------------|
//! | `run#<run id>`     | `run`                                | the run as dispatched (`RunJob`)      | 15 days (TTL)  |
//! | `run#<run id>`     | `marker#<leaf>`                      | a run marker (`model::markers`)       | 15 days (TTL)  |
//! | `run#<run id>`     | `instance#<instance id>`             | the manifest: command, volumes        | 15 days (TTL)  |
//! | `run#<run id>`     | `report#<instance id>`               | SSM's final result for the instance   | 15 days (TTL)  |
//! | `run#<run id>`     | `finals`                             | reports counted, and how many are due | 15 days (TTL)  |
//! | `command#<command id>` | `command`                        | the run that sent the command         | 15 days (TTL)  |
//! | `set#<instance id>`| `run#<run id>`                       | the verified set (`SetRecord`)        | with its snapshots |
//! | `restore#<instance id>` | `<restore id>`                  | a restore as requested (`RestoreJob`) | 15 days (TTL)  |
//! | `restore#<instance id>` | `<restore id>#created#<vol>`, `#detached#<vol>` | the volumes it made / took off | 90 days (TTL) |
//! | `set#<instance id>`| `copy#<region>#<run id>#<snapshot>`  | a copy the function made (`CopyRecord`) | with the copy  |
//! | `run#<run id>`     | `set#<instance id>`, `copy#…`        | the run's view of its sets and copies | 15 days (TTL)  |
//! | `run#<run id>`     | `transit#<source snapshot>`          | a vault transit copy (`TransitRecord`) | 15 days (TTL) |
//!
//! A vault deployment (`MODE=vault`) keeps its own table, with one kind of item:
//!
//! | pk                  | sk                          | what                                       | expires |
//! |---------------------|-----------------------------|--------------------------------------------|---------|
//! | `held#<instance id>`| `<run id>#<snapshot id>`    | a fleet copy as first seen (`HeldRecord`)  | removed when the vault deletes it; 400 days once vanished |
//!
//! Markers and set records are written with conditions (`attribute_not_exists`): a marker is
//! created by one caller only, and a set's first verification is its record. Records are
//! JSON in `body`; a set item is removed when retention deletes its snapshots, a copy's when
//! retention deletes the copy, so the table holds what exists and nothing grows without end.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use chrono::{DateTime, Duration, Utc};
use futures_util::stream::{self, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, warn};

use crate::aws::{aws, code_of, each_page, SdkConfig};
use crate::error::Error;
use crate::jobs::{RestoreJob, RunJob};
use crate::model::catalog::{
    CatalogIndex, CopyRecord, CopyTargets, HeldRecord, InstanceReport, ManifestEntry, Recorded,
    SetRecord, TransitRecord, VaultRecord,
};
use crate::model::cost::{CostCount, InstanceCost, Pair};
use crate::model::markers::{
    parse_markers, to_release, MarkerValue, RunMarkers, ABANDONED, COPIED, COPY_LEASE, COPY_PASS,
    COPY_UNSURE, DISPATCHED, DISPATCH_ERROR, FALLBACK, FALLBACK_UNSURE, KEEP_RUN_DAYS, LEASE,
    REPORTED, RETAINED, RETENTION_PASS, RUN_LOOK, VAULTED, VAULT_LEASE, VAULT_PASS,
};
use crate::model::tiers::{Tier, TierChange};

const PK: &str = "pk";
const SK: &str = "sk";
const BODY: &str = "body";
const KIND: &str = "kind";
const EXPIRES: &str = "expires_at";
/// On a set or copy item: the retention tiers that keep it (`daily,monthly`), written by
/// retention when they change.
const TIERS: &str = "tiers";
/// The snapshot lock laid on a set or a copy: its mode and when it ends (RFC 3339).
const LOCK_MODE: &str = "lock_mode";
const LOCK_UNTIL: &str = "lock_until";
/// The replace lock of an instance (`restore#<instance>` / `replace-lock`) and its holder.
const REPLACE_LOCK: &str = "replace-lock";
const HOLDER: &str = "holder";
/// Item kinds: a set and a copy (kept while their snapshots exist), and the run's own views
/// of them (expiring with the run).
const SET: &str = "set";
const COPY: &str = "copy";
const RUN_SET: &str = "run-set";
const RUN_COPY: &str = "run-copy";
const RUN_TARGETS: &str = "run-copy-targets";
/// A set's copy in the vault account: under the instance (`VAULT`, what the fleet report reads)
/// and under the run (`RUN_VAULT`, what the vault step reads).
const VAULT: &str = "vault";
/// A vault deployment's record of a fleet copy it holds.
const HELD: &str = "held";
/// How long a vault deployment keeps the record of a copy someone else deleted there.
const KEEP_VANISHED_DAYS: i64 = 400;
const RUN_VAULT: &str = "run-vault";
const RUN_TRANSIT: &str = "run-transit";
const MANIFEST: &str = "manifest";
const REPORT: &str = "report";
/// A run's count of its instances' reports (`FINALS_COUNT`) and how many it dispatched
/// (`FINALS_DUE`, once its dispatch is recorded).
const FINALS: &str = "finals";
const FINALS_COUNT: &str = "reported";
const FINALS_DUE: &str = "due";
/// The run a command was sent for: what an SSM event, which names only the command, is
/// matched by.
const COMMAND: &str = "command";
const RECORD: &str = "run-record";
/// The kind of the items that hold the deletions a retention pass left for the next.
const RETENTION_LEFT: &str = "retention-left";
const COST_COUNT: &str = "cost-count";
/// The partition (and kind) of the instances' cost summaries.
const COST_SUMMARY: &str = "cost-summary";
/// How long a block count is kept.
const KEEP_COST_DAYS: i64 = 400;
/// BatchWriteItem takes at most 25 requests; unprocessed ones are sent again this many times.
const BATCH: usize = 25;
/// Instances whose records `index_of` reads at once.
const INDEX_QUERIES: usize = 8;
const BATCH_ROUNDS: u32 = 5;
/// BatchWriteItem calls a write keeps in flight: a dispatch of 20,000 servers writes 800 of
/// them for its manifest, which one after another take about 800 round trips.
const BATCHES_AT_ONCE: usize = 8;
/// How long the volumes a restore created or detached stay recorded: a rollback or a
/// clean-up within this time finds them.
const KEEP_RESTORE_DAYS: i64 = 90;

/// What names a copy's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyKey {
    pub instance_id: String,
    pub region: String,
    pub run_id: String,
    pub snapshot_id: String,
}

/// A run as the catalog holds it.
#[derive(Debug, Clone, Default)]
pub struct RunView {
    pub manifest: Vec<ManifestEntry>,
    /// The instances' own final looks (`InstanceReport`).
    pub reports: Vec<InstanceReport>,
    pub sets: Vec<SetRecord>,
    pub copies: Vec<CopyRecord>,
}

/// What a run's copy step reads of its run: the sets, the copies made of them (with the
/// final states its passes saw) and where each instance's sets go, once decided.
#[derive(Debug, Clone, Default)]
pub struct CopyView {
    pub sets: Vec<SetRecord>,
    pub copies: Vec<CopyRecord>,
    pub targets: Vec<CopyTargets>,
}

/// One record of a scan of the catalog.
#[derive(Debug, Clone)]
pub enum Scanned {
    Set(SetRecord),
    Copy(CopyRecord),
    /// A run's id, and where its copy step decided one instance's sets go.
    Targets(String, CopyTargets),
}

/// Hands an item's body to `each`, made into a `Scanned` by `make` (an unreadable body is
/// left out).
fn each_of<T: DeserializeOwned>(
    item: &HashMap<String, AttributeValue>,
    each: &mut impl FnMut(Scanned, u8),
    make: fn(T) -> Scanned,
) {
    if let Some(body) = body_of::<T>(item) {
        each(make(body), tiers_of(item));
    }
}

/// The retention tiers a set or copy item records (`Tier::bits`; 0 for none).
fn tiers_of(item: &HashMap<String, AttributeValue>) -> u8 {
    item.get(TIERS)
        .and_then(|t| t.as_s().ok())
        .map(|t| Tier::bits(&Tier::parse_list(t)))
        .unwrap_or(0)
}

/// The catalog table and its client.
#[derive(Debug, Clone)]
pub struct Catalog {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn s(text: impl Into<String>) -> AttributeValue {
    AttributeValue::S(text.into())
}

fn run_pk(run_id: &str) -> String {
    format!("run#{run_id}")
}

/// One item as a BatchWriteItem put.
fn put_request(item: HashMap<String, AttributeValue>) -> Option<WriteRequest> {
    let put = PutRequest::builder().set_item(Some(item)).build().ok()?;
    Some(WriteRequest::builder().put_request(put).build())
}

/// How many of a run's instances have a recorded end, and how many it dispatched (`None`
/// until its dispatch is recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Finals {
    pub reported: u64,
    pub due: Option<u64>,
}

impl Finals {
    /// Every dispatched instance has a recorded end.
    pub fn complete(&self) -> bool {
        self.due.is_some_and(|due| self.reported >= due)
    }
}

fn finals_of(item: Option<&HashMap<String, AttributeValue>>) -> Finals {
    let number = |name: &str| {
        item.and_then(|i| i.get(name))
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Finals {
        reported: number(FINALS_COUNT).unwrap_or(0),
        due: number(FINALS_DUE),
    }
}

/// A finished run's full record: its summary, page by page.
fn record_pk(run_id: &str) -> String {
    format!("record#{run_id}")
}

/// The sort key of page `page` of the deletions retention pass `pass` left (under the run's
/// record).
fn left_sk(pass: u32, page: usize) -> String {
    format!("retention-left#{pass:05}#{page:05}")
}

fn cost_pk(region: &str, instance_id: &str) -> String {
    format!("cost#{region}#{instance_id}")
}

/// The sort keys (under the instance's `set#` partition) of what retention writes about a set
/// in a region: its home record (`run#…`), or, in a copy region, each of its copies' records.
fn set_or_copy_sort_keys(
    run_id: &str,
    copy_region: Option<&str>,
    snapshot_ids: &[String],
) -> Vec<String> {
    match copy_region {
        None => vec![format!("run#{run_id}")],
        Some(region) => snapshot_ids
            .iter()
            .map(|id| format!("copy#{region}#{run_id}#{id}"))
            .collect(),
    }
}

/// A set as its run's own view holds it (`run#…`/`set#…`), expiring with the run's items.
fn run_view_item(set: &SetRecord) -> HashMap<String, AttributeValue> {
    item(
        run_pk(&set.run_id),
        format!("set#{}", set.instance_id),
        RUN_SET,
        set,
        Some(expiry(Utc::now())),
    )
}

fn held_pk(instance_id: &str) -> String {
    format!("held#{instance_id}")
}

fn held_sk(record: &HeldRecord) -> String {
    format!("{}#{}", record.run_id, record.snapshot_id)
}

fn set_pk(instance_id: &str) -> String {
    format!("set#{instance_id}")
}

fn copy_sk(copy: &CopyRecord) -> String {
    format!("copy#{}#{}#{}", copy.region, copy.run_id, copy.snapshot_id)
}

fn expiry(now: DateTime<Utc>) -> AttributeValue {
    AttributeValue::N(
        (now + Duration::days(KEEP_RUN_DAYS))
            .timestamp()
            .to_string(),
    )
}

/// Whether a conditional write was refused by its condition: an answer, not an error.
fn refused_by_condition<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error().and_then(code_of) == Some("ConditionalCheckFailedException")
}

fn body_of<T: DeserializeOwned>(item: &HashMap<String, AttributeValue>) -> Option<T> {
    let text = item.get(BODY)?.as_s().ok()?;
    match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(err) => {
            let key = item.get(SK).and_then(|k| k.as_s().ok()).cloned();
            warn!(sk = ?key, error = %err, "catalog item not readable: ignored");
            None
        }
    }
}

fn item<T: Serialize>(
    pk: String,
    sk: String,
    kind: &str,
    body: &T,
    expires: Option<AttributeValue>,
) -> HashMap<String, AttributeValue> {
    let mut item: HashMap<String, AttributeValue> = [
        (PK.to_string(), s(pk)),
        (SK.to_string(), s(sk)),
        (KIND.to_string(), s(kind)),
        (
            BODY.to_string(),
            s(serde_json::to_string(body).unwrap_or_default()),
        ),
    ]
    .into();
    if let Some(expires) = expires {
        item.insert(EXPIRES.to_string(), expires);
    }
    item
}

impl Catalog {
    pub fn new(sdk: &SdkConfig, table: &str) -> Self {
        Catalog::with_client(aws_sdk_dynamodb::Client::new(sdk), table)
    }

    /// The catalog through this client (the function's, which counts throttling).
    pub fn with_client(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Catalog {
            client,
            table: table.to_string(),
        }
    }

    fn subject(&self, what: &str) -> String {
        format!("{what} in catalog {}", self.table)
    }

    /// Creates an item unless one with its key exists; answers whether it was created.
    async fn create(
        &self,
        item: HashMap<String, AttributeValue>,
        what: &str,
    ) -> Result<bool, Error> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(err) if refused_by_condition(&err) => Ok(false),
            Err(err) => Err(aws("PutItem", self.subject(what), err)),
        }
    }

    async fn get(
        &self,
        pk: String,
        sk: String,
        what: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, Error> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .key(SK, s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws("GetItem", self.subject(what), e))?;
        Ok(out.item)
    }

    /// Every item of partition `pk` whose sort key begins with `prefix`, consistent reads.
    async fn query(
        &self,
        pk: String,
        prefix: &str,
        what: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, Error> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(pk))
            .consistent_read(true);
        // DynamoDB refuses an empty string in a key condition: no prefix, no condition on sk.
        query = if prefix.is_empty() {
            query.key_condition_expression("pk = :pk")
        } else {
            query
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":prefix", s(prefix))
        };
        let pages = query.into_paginator().send();
        let mut items = Vec::new();
        each_page(pages, "Query", &self.subject(what), |page| {
            items.extend(page.items.unwrap_or_default());
        })
        .await?;
        Ok(items)
    }

    /// Puts or deletes items, 25 a call, `BATCHES_AT_ONCE` calls in flight; what DynamoDB
    /// leaves unprocessed is sent again a bounded number of times, then reported. Each batch
    /// is built only when it is written (a run's manifest of 20,000 servers is never held as
    /// items all at once). The first failure ends the writing: writes are puts and deletes by
    /// key, so whoever writes them again (a redelivery, the next pass) converges.
    async fn batch(
        &self,
        requests: impl IntoIterator<Item = WriteRequest>,
        what: &str,
    ) -> Result<(), Error> {
        let mut requests = requests.into_iter();
        let batches = std::iter::from_fn(move || {
            let batch: Vec<WriteRequest> = requests.by_ref().take(BATCH).collect();
            (!batch.is_empty()).then_some(batch)
        });
        let mut written = stream::iter(batches)
            .map(|batch| self.write_batch(batch, what))
            .buffer_unordered(BATCHES_AT_ONCE);
        while let Some(done) = written.next().await {
            done?;
        }
        Ok(())
    }

    /// One BatchWriteItem of at most 25 requests, and its unprocessed ones again.
    async fn write_batch(&self, mut pending: Vec<WriteRequest>, what: &str) -> Result<(), Error> {
        let mut round = 0;
        while !pending.is_empty() {
            if round >= BATCH_ROUNDS {
                return Err(Error::Catalog(format!(
                    "{}: {} write(s) left unprocessed after {BATCH_ROUNDS} rounds",
                    self.subject(what),
                    pending.len()
                )));
            }
            if round > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(100 << round)).await;
            }
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, pending)
                .send()
                .await
                .map_err(|e| aws("BatchWriteItem", self.subject(what), e))?;
            pending = out
                .unprocessed_items
                .and_then(|mut left| left.remove(&self.table))
                .unwrap_or_default();
            round += 1;
        }
        Ok(())
    }

    /// Records what a run dispatched, one item per instance.
    pub async fn put_manifest(
        &self,
        entries: impl IntoIterator<Item = ManifestEntry>,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let requests = entries.into_iter().filter_map(|entry| {
            put_request(item(
                run_pk(&entry.run_id),
                format!("instance#{}", entry.instance_id),
                MANIFEST,
                &entry,
                Some(expiry(now)),
            ))
        });
        self.batch(requests, "run manifest").await
    }

    /// Records the run as dispatched: its commands, skipped and unsent instances (the run's
    /// message carries none of them, only the run id).
    pub async fn put_run(&self, run: &RunJob, now: DateTime<Utc>) -> Result<(), Error> {
        let what = format!("run {}", run.run_id);
        self.put(
            item(
                run_pk(&run.run_id),
                "run".into(),
                "run",
                run,
                Some(expiry(now)),
            ),
            &what,
        )
        .await
    }

    /// Records a finished run's full record, page by page, in a partition of its own (the
    /// run's own is read whole by every look and copy pass). It expires with the run.
    pub async fn put_run_record<T: Serialize>(
        &self,
        run_id: &str,
        pages: &[T],
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let what = format!("record of run {run_id}");
        self.put_record_pages(
            run_id,
            (RECORD, |n| format!("page#{n:05}")),
            pages,
            (now, &what),
        )
        .await
    }

    /// Pages under a run's record, each an item of `kind` at the sort key `sk` makes of its
    /// number, kept as long as the record.
    async fn put_record_pages<T: Serialize>(
        &self,
        run_id: &str,
        (kind, sk): (&str, impl Fn(usize) -> String),
        pages: &[T],
        (now, what): (DateTime<Utc>, &str),
    ) -> Result<(), Error> {
        let requests: Vec<WriteRequest> = pages
            .iter()
            .enumerate()
            .filter_map(|(n, page)| {
                put_request(item(
                    record_pk(run_id),
                    sk(n),
                    kind,
                    page,
                    Some(expiry(now)),
                ))
            })
            .collect();
        if requests.len() != pages.len() {
            return Err(Error::Catalog(format!(
                "{what}: a page could not be made an item"
            )));
        }
        self.batch(requests, what).await
    }

    /// Page `page` of a finished run's record, if the catalog holds it.
    pub async fn run_record<T: DeserializeOwned>(
        &self,
        run_id: &str,
        page: usize,
    ) -> Result<Option<T>, Error> {
        let what = format!("record of run {run_id}");
        self.record_page(run_id, format!("page#{page:05}"), &what)
            .await
    }

    /// The page under a run's record at sort key `sk`, if the catalog holds it.
    async fn record_page<T: DeserializeOwned>(
        &self,
        run_id: &str,
        sk: String,
        what: &str,
    ) -> Result<Option<T>, Error> {
        let found = self.get(record_pk(run_id), sk, what).await?;
        Ok(found.as_ref().and_then(body_of))
    }

    /// Records the deletions retention pass `pass` of a run planned and left for the next pass
    /// (`pages`, each one item; what a page holds is the caller's), replacing what an earlier
    /// delivery of the same pass recorded (each page says how many there are). Kept as long as
    /// the run's record.
    pub async fn put_retention_left<T: Serialize>(
        &self,
        run_id: &str,
        pass: u32,
        pages: &[T],
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let what = format!("deletions left by retention pass {pass} of run {run_id}");
        let sk = |n| left_sk(pass, n);
        self.put_record_pages(run_id, (RETENTION_LEFT, sk), pages, (now, &what))
            .await
    }

    /// Page `page` of the deletions retention pass `pass` of a run left, if recorded.
    pub async fn retention_left<T: DeserializeOwned>(
        &self,
        run_id: &str,
        pass: u32,
        page: usize,
    ) -> Result<Option<T>, Error> {
        let what = format!("deletions left by retention pass {pass} of run {run_id}");
        self.record_page(run_id, left_sk(pass, page), &what).await
    }

    /// The run as dispatched, if this deployment dispatched it.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunJob>, Error> {
        let found = self
            .get(run_pk(run_id), "run".into(), &format!("run {run_id}"))
            .await?;
        Ok(found.as_ref().and_then(body_of))
    }

    /// Records a restore as requested (its set, mode and zone): its queued passes are
    /// references to it.
    pub async fn put_restore(&self, job: &RestoreJob, now: DateTime<Utc>) -> Result<(), Error> {
        let what = format!("restore {} of {}", job.restore_id, job.instance_id);
        self.put(
            item(
                format!("restore#{}", job.instance_id),
                job.restore_id.clone(),
                "restore",
                job,
                Some(expiry(now)),
            ),
            &what,
        )
        .await
    }

    /// Takes the instance's replace lock for `restore_id`, held until `until` (a lock past its
    /// time is free again): one `replace` of an instance at a time. Answers `None` when this
    /// restore holds it now (taken, or held already), or the restore that holds it.
    pub async fn lock_replace(
        &self,
        instance_id: &str,
        restore_id: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, Error> {
        let what = format!("replace lock of {instance_id} for {restore_id}");
        let body = serde_json::json!({ "restore_id": restore_id, "until": until });
        let mut lock = item(
            format!("restore#{instance_id}"),
            REPLACE_LOCK.to_string(),
            REPLACE_LOCK,
            &body,
            Some(AttributeValue::N(until.timestamp().to_string())),
        );
        lock.insert(HOLDER.to_string(), s(restore_id));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(lock))
            .condition_expression("attribute_not_exists(pk) OR #holder = :me OR #expires < :now")
            .expression_attribute_names("#holder", HOLDER)
            .expression_attribute_names("#expires", EXPIRES)
            .expression_attribute_values(":me", s(restore_id))
            .expression_attribute_values(":now", AttributeValue::N(now.timestamp().to_string()))
            .send()
            .await;
        match put {
            Ok(_) => Ok(None),
            Err(err) if refused_by_condition(&err) => {
                let held = self
                    .get(format!("restore#{instance_id}"), REPLACE_LOCK.into(), &what)
                    .await?;
                let holder = held
                    .as_ref()
                    .and_then(|i| i.get(HOLDER))
                    .and_then(|h| h.as_s().ok())
                    .cloned()
                    .unwrap_or_else(|| "another restore".to_string());
                Ok(Some(holder))
            }
            Err(err) => Err(aws("PutItem", self.subject(&what), err)),
        }
    }

    /// Gives the instance's replace lock back, if `restore_id` holds it.
    pub async fn unlock_replace(&self, instance_id: &str, restore_id: &str) -> Result<(), Error> {
        let what = format!("replace lock of {instance_id} for {restore_id}");
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(format!("restore#{instance_id}")))
            .key(SK, s(REPLACE_LOCK))
            .condition_expression("#holder = :me")
            .expression_attribute_names("#holder", HOLDER)
            .expression_attribute_values(":me", s(restore_id))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(err) if refused_by_condition(&err) => Ok(()),
            Err(err) => Err(aws("DeleteItem", self.subject(&what), err)),
        }
    }

    /// The restore as requested, if it was.
    pub async fn restore(
        &self,
        instance_id: &str,
        restore_id: &str,
    ) -> Result<Option<RestoreJob>, Error> {
        let what = format!("restore {restore_id} of {instance_id}");
        let found = self
            .get(format!("restore#{instance_id}"), restore_id.into(), &what)
            .await?;
        Ok(found.as_ref().and_then(body_of))
    }

    /// Records a volume a restore created (`created`, the id CreateVolume answered) or is
    /// about to detach (`detached`, the id EC2 reports attached at that device): the only
    /// volumes the restore ever attaches, reattaches or deletes.
    pub async fn record_restore_volume(
        &self,
        instance_id: &str,
        restore_id: &str,
        role: &str,
        volume_id: &str,
        device: &str,
    ) -> Result<(), Error> {
        let what = format!("{role} volume {volume_id} of restore {restore_id}");
        let body = serde_json::json!({ "volume_id": volume_id, "device": device });
        let expires = AttributeValue::N(
            (Utc::now() + Duration::days(KEEP_RESTORE_DAYS))
                .timestamp()
                .to_string(),
        );
        self.put(
            item(
                format!("restore#{instance_id}"),
                format!("{restore_id}#{role}#{volume_id}"),
                "restore-volume",
                &body,
                Some(expires),
            ),
            &what,
        )
        .await
    }

    /// The volumes a restore recorded in `role` (`created`, `detached`): volume id → device.
    pub async fn restore_volumes(
        &self,
        instance_id: &str,
        restore_id: &str,
        role: &str,
    ) -> Result<HashMap<String, String>, Error> {
        let items = self
            .query(
                format!("restore#{instance_id}"),
                &format!("{restore_id}#{role}#"),
                &format!("{role} volumes of restore {restore_id}"),
            )
            .await?;
        Ok(items
            .iter()
            .filter_map(body_of::<serde_json::Value>)
            .filter_map(|v| {
                Some((
                    v["volume_id"].as_str()?.to_string(),
                    v["device"].as_str()?.to_string(),
                ))
            })
            .collect())
    }

    /// What the run dispatched to one instance, if it did.
    pub async fn manifest_entry(
        &self,
        run_id: &str,
        instance_id: &str,
    ) -> Result<Option<ManifestEntry>, Error> {
        let found = self
            .get(
                run_pk(run_id),
                format!("instance#{instance_id}"),
                &format!("manifest of {instance_id} in run {run_id}"),
            )
            .await?;
        Ok(found.as_ref().and_then(body_of))
    }

    /// Records a verified set unless it is recorded already; answers the set's record (the
    /// first verification's, should another invocation have recorded it first).
    pub async fn record_set(&self, record: &SetRecord) -> Result<SetRecord, Error> {
        let what = format!("set of {} in run {}", record.instance_id, record.run_id);
        let pk = set_pk(&record.instance_id);
        let sk = format!("run#{}", record.run_id);
        let put = item(pk.clone(), sk.clone(), SET, record, None);
        let recorded = if self.create(put, &what).await? {
            record.clone()
        } else {
            let existing = self.get(pk, sk, &what).await?;
            let existing: SetRecord = existing
                .as_ref()
                .and_then(body_of)
                .unwrap_or_else(|| record.clone());
            // The same run verified again keeps its first verdict; another run under a reused
            // id must not take an old set's place (nor its snapshots this one's).
            if existing.started_at != record.started_at {
                return Err(Error::Catalog(format!(
                    "{what}: the catalog holds a set of this run id from a run started at {}, this one started at {}: a reused run id",
                    existing.started_at.to_rfc3339(),
                    record.started_at.to_rfc3339()
                )));
            }
            existing
        };
        // The run's own view of its sets, for its copy step (one query); it expires with
        // the run's other items.
        self.put(run_view_item(&recorded), &what).await?;
        Ok(recorded)
    }

    /// Writes the runs' own views of these sets again, as `record_set` does (sets recorded
    /// again as they now stand).
    pub async fn put_run_views(&self, sets: &[SetRecord]) -> Result<(), Error> {
        self.batch(
            sets.iter().map(run_view_item).filter_map(put_request),
            "the runs' views of their sets",
        )
        .await
    }

    async fn put(&self, item: HashMap<String, AttributeValue>, what: &str) -> Result<(), Error> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| aws("PutItem", self.subject(what), e))?;
        Ok(())
    }

    /// What the catalog holds of a run, in one query of its partition: its manifest, the
    /// sets recorded for it and the copies made of them.
    pub async fn run_view(&self, run_id: &str) -> Result<RunView, Error> {
        let items = self
            .query(run_pk(run_id), "", &format!("run {run_id}"))
            .await?;
        let (sets, copies) = split_records(&items, (RUN_SET, RUN_COPY));
        let of_kind = |kind: &'static str| {
            items.iter().filter(move |i| {
                i.get(KIND).and_then(|k| k.as_s().ok()).map(String::as_str) == Some(kind)
            })
        };
        Ok(RunView {
            manifest: of_kind(MANIFEST).filter_map(body_of).collect(),
            reports: of_kind(REPORT).filter_map(body_of).collect(),
            sets,
            copies,
        })
    }

    /// What the run's copy step reads (`CopyView`): three queries of the run's partition by
    /// prefix, leaving out its manifest, reports and markers.
    pub async fn copy_view(&self, run_id: &str) -> Result<CopyView, Error> {
        let what = format!("copies of run {run_id}");
        let mut items = self.query(run_pk(run_id), "set#", &what).await?;
        items.extend(self.query(run_pk(run_id), "copy#", &what).await?);
        let (sets, copies) = split_records(&items, (RUN_SET, RUN_COPY));
        let targets = self
            .query(run_pk(run_id), "targets#", &what)
            .await?
            .iter()
            .filter(|i| {
                i.get(KIND).and_then(|k| k.as_s().ok()).map(String::as_str) == Some(RUN_TARGETS)
            })
            .filter_map(body_of)
            .collect();
        Ok(CopyView {
            sets,
            copies,
            targets,
        })
    }

    /// A run's sets and their copies in the vault account (the vault step's view).
    pub async fn vault_view(
        &self,
        run_id: &str,
    ) -> Result<(Vec<SetRecord>, Vec<VaultRecord>), Error> {
        let what = format!("vault copies of run {run_id}");
        let items = self.query(run_pk(run_id), "set#", &what).await?;
        let (sets, _) = split_records(&items, (RUN_SET, RUN_COPY));
        let vaulted = self
            .query(run_pk(run_id), "vault#", &what)
            .await?
            .iter()
            .filter(|i| {
                i.get(KIND).and_then(|k| k.as_s().ok()).map(String::as_str) == Some(RUN_VAULT)
            })
            .filter_map(body_of)
            .collect();
        Ok((sets, vaulted))
    }

    /// Records (or records again, as it now stands) a copy in the vault account, under the
    /// instance and under the run, 25 a call. Kept as long as the run's other records.
    pub async fn record_vault_copies(&self, copies: &[VaultRecord]) -> Result<(), Error> {
        let expires = expiry(Utc::now());
        let requests = copies.iter().flat_map(|c| {
            let sk = format!("vault#{}#{}#{}", c.region, c.run_id, c.snapshot_id);
            [
                item(
                    set_pk(&c.instance_id),
                    sk.clone(),
                    VAULT,
                    c,
                    Some(expires.clone()),
                ),
                item(run_pk(&c.run_id), sk, RUN_VAULT, c, Some(expires.clone())),
            ]
        });
        self.batch(requests.filter_map(put_request), "vault copies")
            .await
    }

    /// The run's vault transit copies.
    pub async fn transit_copies(&self, run_id: &str) -> Result<Vec<TransitRecord>, Error> {
        let what = format!("vault transit copies of run {run_id}");
        Ok(self
            .query(run_pk(run_id), "transit#", &what)
            .await?
            .iter()
            .filter_map(body_of)
            .collect())
    }

    /// Records (or records again, as they now stand) vault transit copies of a run.
    pub async fn record_transits(&self, transits: &[TransitRecord]) -> Result<(), Error> {
        let expires = expiry(Utc::now());
        let requests = transits.iter().map(|t| {
            item(
                run_pk(&t.run_id),
                format!("transit#{}", t.source_snapshot_id),
                RUN_TRANSIT,
                t,
                Some(expires.clone()),
            )
        });
        self.batch(requests.filter_map(put_request), "vault transit copies")
            .await
    }

    /// Every item of one kind in the table, each as its record, page by page.
    async fn scan_kind<T: DeserializeOwned>(
        &self,
        kind: &str,
        what: &str,
        mut each: impl FnMut(T),
    ) -> Result<(), Error> {
        let pages = self
            .client
            .scan()
            .table_name(&self.table)
            .expression_attribute_names("#k", KIND)
            .expression_attribute_values(":kind", s(kind))
            .filter_expression("#k = :kind")
            .into_paginator()
            .send();
        each_page(pages, "Scan", &self.subject(what), |page| {
            for item in page.items.unwrap_or_default() {
                if let Some(record) = body_of(&item) {
                    each(record);
                }
            }
        })
        .await
    }

    /// Every instance's vault copies (the fleet report's coverage), page by page.
    pub async fn scan_vault_copies(&self, each: impl FnMut(VaultRecord)) -> Result<(), Error> {
        self.scan_kind(VAULT, "vault copies", each).await
    }

    /// A vault deployment's records of the fleet copies it holds.
    pub async fn held_records(&self) -> Result<Vec<HeldRecord>, Error> {
        let mut records = Vec::new();
        self.scan_kind(HELD, "the vault's copies", |r| records.push(r))
            .await?;
        Ok(records)
    }

    /// Records (or records again, as they now stand) copies a vault deployment holds, 25 a
    /// call; one found vanished is kept `KEEP_VANISHED_DAYS` for the record.
    pub async fn put_held(&self, records: &[HeldRecord]) -> Result<(), Error> {
        let requests = records.iter().map(|r| {
            let expires = r.vanished.map(|at| {
                AttributeValue::N(
                    (at + Duration::days(KEEP_VANISHED_DAYS))
                        .timestamp()
                        .to_string(),
                )
            });
            item(held_pk(&r.instance_id), held_sk(r), HELD, r, expires)
        });
        self.batch(requests.filter_map(put_request), "the vault's copies")
            .await
    }

    /// Forgets the copies a vault deployment deleted, 25 a call.
    pub async fn forget_held(&self, records: &[&HeldRecord]) -> Result<(), Error> {
        let requests = records.iter().filter_map(|r| {
            let delete = DeleteRequest::builder()
                .key(PK, s(held_pk(&r.instance_id)))
                .key(SK, s(held_sk(r)))
                .build()
                .ok()?;
            Some(WriteRequest::builder().delete_request(delete).build())
        });
        self.batch(requests, "the vault's deleted copies").await
    }

    /// Records where instances' sets of a run are copied (`CopyTargets`), 25 a call.
    pub async fn record_copy_targets(
        &self,
        run_id: &str,
        targets: &[CopyTargets],
    ) -> Result<(), Error> {
        let expires = expiry(Utc::now());
        let requests: Vec<WriteRequest> = targets
            .iter()
            .map(|t| {
                item(
                    run_pk(run_id),
                    format!("targets#{}", t.instance_id),
                    RUN_TARGETS,
                    t,
                    Some(expires.clone()),
                )
            })
            .filter_map(put_request)
            .collect();
        self.batch(requests, &format!("copy regions of run {run_id}"))
            .await
    }

    /// Rewrites the run's view of copies whose final state a copy pass saw (`seen_final`),
    /// 25 a call.
    pub async fn record_copy_states(&self, copies: &[CopyRecord]) -> Result<(), Error> {
        let expires = expiry(Utc::now());
        let requests: Vec<WriteRequest> = copies
            .iter()
            .map(|c| {
                item(
                    run_pk(&c.run_id),
                    copy_sk(c),
                    RUN_COPY,
                    c,
                    Some(expires.clone()),
                )
            })
            .filter_map(put_request)
            .collect();
        self.batch(requests, "states of copies").await
    }

    /// Records what an instance's tracking message saw when its invocation was final, unless
    /// a report of it is recorded already (a duplicate delivery); answers whether it was new.
    pub async fn record_report(&self, report: &InstanceReport) -> Result<bool, Error> {
        let what = format!(
            "final result of {} in run {}",
            report.instance_id, report.run_id
        );
        let put = item(
            run_pk(&report.run_id),
            format!("report#{}", report.instance_id),
            REPORT,
            report,
            Some(expiry(Utc::now())),
        );
        self.create(put, &what).await
    }

    /// Whether an instance's final result in the run is recorded.
    pub async fn has_report(&self, run_id: &str, instance_id: &str) -> Result<bool, Error> {
        let found = self
            .get(
                run_pk(run_id),
                format!("report#{instance_id}"),
                &format!("final result of {instance_id} in run {run_id}"),
            )
            .await?;
        Ok(found.is_some())
    }

    /// Counts one more recorded end among the run's instances (call once per new report);
    /// answers the count as it now stands.
    pub async fn count_final(&self, run_id: &str) -> Result<Finals, Error> {
        self.update_finals(
            run_id,
            "ADD #n :n SET #k = :k, #e = :e",
            FINALS_COUNT,
            AttributeValue::N("1".into()),
        )
        .await
    }

    /// Records how many instances the run dispatched; answers the count as it now stands.
    pub async fn expect_finals(&self, run_id: &str, due: usize) -> Result<Finals, Error> {
        self.update_finals(
            run_id,
            "SET #n = :n, #k = :k, #e = :e",
            FINALS_DUE,
            AttributeValue::N(due.to_string()),
        )
        .await
    }

    /// Applies `expression` to the run's `finals` item (`#n`/`:n`: the count `name` and its
    /// operand; `#k`, `#e`: its kind and expiry), answering the item as it then stands.
    async fn update_finals(
        &self,
        run_id: &str,
        expression: &str,
        name: &str,
        value: AttributeValue,
    ) -> Result<Finals, Error> {
        let what = format!("count of final results of run {run_id}");
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(run_pk(run_id)))
            .key(SK, s(FINALS))
            .update_expression(expression)
            .expression_attribute_names("#n", name)
            .expression_attribute_names("#k", KIND)
            .expression_attribute_names("#e", EXPIRES)
            .expression_attribute_values(":n", value)
            .expression_attribute_values(":k", s(FINALS))
            .expression_attribute_values(":e", expiry(Utc::now()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| aws("UpdateItem", self.subject(&what), e))?;
        Ok(finals_of(out.attributes.as_ref()))
    }

    /// Records the run that sent `command_id`, for SSM's events about it.
    pub async fn put_command(&self, command_id: &str, run_id: &str) -> Result<(), Error> {
        let what = format!("command {command_id} of run {run_id}");
        self.put(
            item(
                format!("{COMMAND}#{command_id}"),
                COMMAND.into(),
                COMMAND,
                &serde_json::json!({ "run_id": run_id }),
                Some(expiry(Utc::now())),
            ),
            &what,
        )
        .await
    }

    /// The run that sent `command_id`, if this deployment sent it.
    pub async fn command_run(&self, command_id: &str) -> Result<Option<String>, Error> {
        let found = self
            .get(
                format!("{COMMAND}#{command_id}"),
                COMMAND.into(),
                &format!("command {command_id}"),
            )
            .await?;
        let body: Option<serde_json::Value> = found.as_ref().and_then(body_of);
        Ok(body.and_then(|b| b["run_id"].as_str().map(str::to_string)))
    }

    /// One instance's recorded sets and copies.
    pub async fn sets_of(
        &self,
        instance_id: &str,
    ) -> Result<(Vec<SetRecord>, Vec<CopyRecord>), Error> {
        let items = self
            .query(set_pk(instance_id), "", &format!("sets of {instance_id}"))
            .await?;
        Ok(split_records(&items, (SET, COPY)))
    }

    /// Every recorded set and copy of the deployment (a scan: the table holds only what
    /// exists, a few items per snapshot set), each page handed to `each` and dropped.
    /// Every set and copy record, handed to `each` page by page (nothing kept here).
    pub async fn scan_sets(
        &self,
        mut each: impl FnMut(Option<SetRecord>, Option<CopyRecord>),
    ) -> Result<(), Error> {
        self.scan_kinds(false, |scanned, _| match scanned {
            Scanned::Set(set) => each(Some(set), None),
            Scanned::Copy(copy) => each(None, Some(copy)),
            Scanned::Targets(..) => {}
        })
        .await
    }

    /// `scan_sets`, and where each run's copy step decided each instance's sets go (the runs
    /// whose items have not expired yet), in the same scan.
    pub async fn scan_sets_and_targets(&self, mut each: impl FnMut(Scanned)) -> Result<(), Error> {
        self.scan_kinds(true, |scanned, _| each(scanned)).await
    }

    /// Every set and copy item (and each run's copy targets, with `targets`), handed to `each`
    /// with the retention tiers the item records.
    async fn scan_kinds(
        &self,
        targets: bool,
        mut each: impl FnMut(Scanned, u8),
    ) -> Result<(), Error> {
        let mut scan = self
            .client
            .scan()
            .table_name(&self.table)
            .expression_attribute_names("#k", KIND)
            .expression_attribute_values(":set", s(SET))
            .expression_attribute_values(":copy", s(COPY))
            .consistent_read(true);
        scan = if targets {
            scan.filter_expression("#k IN (:set, :copy, :targets)")
                .expression_attribute_values(":targets", s(RUN_TARGETS))
        } else {
            scan.filter_expression("#k IN (:set, :copy)")
        };
        let pages = scan.into_paginator().send();
        each_page(pages, "Scan", &self.subject("every set"), |page| {
            for item in page.items.unwrap_or_default() {
                let kind = item
                    .get(KIND)
                    .and_then(|k| k.as_s().ok())
                    .map(String::as_str);
                match kind {
                    Some(SET) => each_of(&item, &mut each, Scanned::Set),
                    Some(COPY) => each_of(&item, &mut each, Scanned::Copy),
                    Some(RUN_TARGETS) => {
                        let run = item
                            .get(PK)
                            .and_then(|k| k.as_s().ok())
                            .and_then(|pk| pk.strip_prefix("run#"))
                            .map(str::to_string);
                        if let (Some(run), Some(targets)) = (run, body_of(&item)) {
                            each(Scanned::Targets(run, targets), 0);
                        }
                    }
                    _ => {}
                }
            }
        })
        .await
    }

    /// What the catalog vouches for, indexed page by page.
    pub async fn index(&self) -> Result<CatalogIndex, Error> {
        let mut index = CatalogIndex::default();
        self.scan_kinds(false, |scanned, tiers| match scanned {
            Scanned::Set(set) => index.add_set_in_tiers(&set, tiers),
            Scanned::Copy(copy) => index.add_copy_in_tiers(&copy, tiers),
            Scanned::Targets(..) => {}
        })
        .await?;
        Ok(index)
    }

    /// What the catalog records, as ids only (`Recorded`), in one scan; and, while the catalog
    /// holds at most `whole_up_to` snapshots, the whole `CatalogIndex` from the same scan (a
    /// deployment that fits one part of retention needs no other read of the catalog).
    pub async fn recorded(
        &self,
        whole_up_to: usize,
    ) -> Result<(Recorded, Option<CatalogIndex>), Error> {
        let mut recorded = Recorded::default();
        let mut whole = Some(CatalogIndex::default());
        let mut count = 0usize;
        self.scan_kinds(false, |scanned, tiers| {
            match &scanned {
                Scanned::Set(set) => {
                    recorded.add_set(set);
                    count += set.snapshots.len();
                }
                Scanned::Copy(copy) => {
                    recorded.add_copy(copy);
                    count += 1;
                }
                Scanned::Targets(..) => {}
            }
            if count > whole_up_to {
                whole = None;
            }
            if let Some(index) = whole.as_mut() {
                match scanned {
                    Scanned::Set(set) => index.add_set_in_tiers(&set, tiers),
                    Scanned::Copy(copy) => index.add_copy_in_tiers(&copy, tiers),
                    Scanned::Targets(..) => {}
                }
            }
        })
        .await?;
        recorded.finish();
        Ok((recorded, whole))
    }

    /// What the catalog vouches for of these instances only: each one's sets and copies, read
    /// by its own key, `INDEX_QUERIES` instances at a time.
    pub async fn index_of(&self, instance_ids: &[String]) -> Result<CatalogIndex, Error> {
        let mut index = CatalogIndex::default();
        let mut answers =
            stream::iter(instance_ids.iter().map(|id| async move {
                self.query(set_pk(id), "", &format!("sets of {id}")).await
            }))
            .buffered(INDEX_QUERIES);
        while let Some(items) = answers.next().await {
            for item in items? {
                let kind = item
                    .get(KIND)
                    .and_then(|k| k.as_s().ok())
                    .map(String::as_str);
                match kind {
                    Some(SET) => {
                        if let Some(set) = body_of::<SetRecord>(&item) {
                            index.add_set_in_tiers(&set, tiers_of(&item));
                        }
                    }
                    Some(COPY) => {
                        if let Some(copy) = body_of::<CopyRecord>(&item) {
                            index.add_copy_in_tiers(&copy, tiers_of(&item));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(index)
    }

    /// Every recorded set and copy, whole (for fixtures and tools; the function itself reads
    /// `index`).
    pub async fn all_sets(&self) -> Result<(Vec<SetRecord>, Vec<CopyRecord>), Error> {
        let mut sets = Vec::new();
        let mut copies = Vec::new();
        self.scan_sets(|set, copy| {
            sets.extend(set);
            copies.extend(copy);
        })
        .await?;
        Ok((sets, copies))
    }

    /// Writes set and copy records as they are, 25 a call, overwriting: for sets recorded
    /// outside a run (`import`), and for fixtures of earlier nights.
    pub async fn put_sets(&self, sets: &[SetRecord], copies: &[CopyRecord]) -> Result<(), Error> {
        let items = sets
            .iter()
            .map(|r| {
                item(
                    set_pk(&r.instance_id),
                    format!("run#{}", r.run_id),
                    SET,
                    r,
                    None,
                )
            })
            .chain(
                copies
                    .iter()
                    .map(|c| item(set_pk(&c.instance_id), copy_sk(c), COPY, c, None)),
            );
        let requests: Vec<WriteRequest> = items.filter_map(put_request).collect();
        self.batch(requests, "sets").await
    }

    /// Records a copy the function started.
    pub async fn record_copy(&self, copy: &CopyRecord) -> Result<(), Error> {
        let what = format!(
            "copy {} of {} in {}",
            copy.snapshot_id, copy.source_snapshot_id, copy.region
        );
        self.create(
            item(set_pk(&copy.instance_id), copy_sk(copy), COPY, copy, None),
            &what,
        )
        .await?;
        self.put(
            item(
                run_pk(&copy.run_id),
                copy_sk(copy),
                RUN_COPY,
                copy,
                Some(expiry(Utc::now())),
            ),
            &what,
        )
        .await
    }

    /// Records the retention tiers that now keep sets and copies (`SET tiers`, or `REMOVE` for
    /// none), one UpdateItem per set record (a home set) or per copy record; a record gone
    /// meanwhile is not made again. Answers how many records were written.
    pub async fn record_tiers(&self, changes: &[TierChange]) -> Result<usize, Error> {
        let mut written = 0;
        for change in changes {
            let keys = set_or_copy_sort_keys(
                &change.run_id,
                change.copy_region.as_deref(),
                &change.snapshot_ids,
            );
            let pk = set_pk(&change.instance_id);
            let what = format!(
                "tiers of the set of {} in run {}",
                change.instance_id, change.run_id
            );
            for sk in keys {
                let mut update = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key(PK, s(&pk))
                    .key(SK, s(sk))
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_names("#t", TIERS);
                update = if change.tiers.is_empty() {
                    update.update_expression("REMOVE #t")
                } else {
                    update
                        .update_expression("SET #t = :t")
                        .expression_attribute_values(":t", s(Tier::list(&change.tiers)))
                };
                match update.send().await {
                    Ok(_) => written += 1,
                    Err(err) if refused_by_condition(&err) => {}
                    Err(err) => return Err(aws("UpdateItem", self.subject(&what), err)),
                }
            }
        }
        Ok(written)
    }

    /// Records the snapshot lock laid on a set (its home record) or on copies of it in
    /// `copy_region` (each copy's record): `lock_mode` and `lock_until`. A record gone
    /// meanwhile is not made again. EC2's own answer (DescribeLockedSnapshots) is what
    /// retention reads before deleting; this is what the catalog and its readers show.
    pub async fn record_lock(
        &self,
        (instance_id, run_id): (&str, &str),
        copy_region: Option<&str>,
        snapshot_ids: &[String],
        (mode, until): (&str, DateTime<Utc>),
    ) -> Result<(), Error> {
        let what = format!("lock of the set of {instance_id} in run {run_id}");
        for sk in set_or_copy_sort_keys(run_id, copy_region, snapshot_ids) {
            let update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, s(set_pk(instance_id)))
                .key(SK, s(sk))
                .condition_expression("attribute_exists(pk)")
                .update_expression("SET #m = :m, #u = :u")
                .expression_attribute_names("#m", LOCK_MODE)
                .expression_attribute_names("#u", LOCK_UNTIL)
                .expression_attribute_values(":m", s(mode))
                .expression_attribute_values(
                    ":u",
                    s(until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                );
            match update.send().await {
                Ok(_) => {}
                Err(err) if refused_by_condition(&err) => {}
                Err(err) => return Err(aws("UpdateItem", self.subject(&what), err)),
            }
        }
        Ok(())
    }

    /// The block counts earlier cost runs made of one instance's lineages in `region`.
    pub async fn cost_counts(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<BTreeMap<Pair, CostCount>, Error> {
        let items = self
            .query(
                cost_pk(region, instance_id),
                "",
                &format!("cost counts of {instance_id} in {region}"),
            )
            .await?;
        Ok(items
            .iter()
            .filter_map(body_of::<CostCount>)
            .map(|c| (c.pair.clone(), c))
            .collect())
    }

    /// Keeps counts for later cost runs (for about a year: a snapshot kept longer is counted
    /// again).
    pub async fn put_cost_counts(
        &self,
        region: &str,
        instance_id: &str,
        counts: &[CostCount],
    ) -> Result<(), Error> {
        let expires = AttributeValue::N(
            (Utc::now() + Duration::days(KEEP_COST_DAYS))
                .timestamp()
                .to_string(),
        );
        let requests: Vec<WriteRequest> = counts
            .iter()
            .filter_map(|c| {
                let sk = format!(
                    "pair#{}#{}",
                    c.pair.first.as_deref().unwrap_or("-"),
                    c.pair.second
                );
                put_request(item(
                    cost_pk(region, instance_id),
                    sk,
                    COST_COUNT,
                    c,
                    Some(expires.clone()),
                ))
            })
            .collect();
        self.batch(requests, "cost counts").await
    }

    /// Records what an instance's kept sets cost, for the fleet report.
    pub async fn put_instance_cost(&self, cost: &InstanceCost) -> Result<(), Error> {
        self.put(
            item(
                COST_SUMMARY.to_string(),
                format!("instance#{}", cost.instance_id),
                COST_SUMMARY,
                cost,
                None,
            ),
            &format!("cost of {}", cost.instance_id),
        )
        .await
    }

    /// What the last cost run found of each instance.
    pub async fn instance_costs(&self) -> Result<Vec<InstanceCost>, Error> {
        let items = self
            .query(COST_SUMMARY.to_string(), "instance#", "costs")
            .await?;
        Ok(items.iter().filter_map(body_of::<InstanceCost>).collect())
    }

    /// Forgets sets whose snapshots retention deleted (instance, run), and deleted copies.
    pub async fn forget(&self, sets: &[(String, String)], copies: &[CopyKey]) -> Result<(), Error> {
        let keys = sets
            .iter()
            .map(|(instance, run)| (set_pk(instance), format!("run#{run}")))
            .chain(copies.iter().map(|c| {
                (
                    set_pk(&c.instance_id),
                    format!("copy#{}#{}#{}", c.region, c.run_id, c.snapshot_id),
                )
            }));
        let requests: Vec<WriteRequest> = keys
            .filter_map(|(pk, sk)| {
                let delete = DeleteRequest::builder()
                    .key(PK, s(pk))
                    .key(SK, s(sk))
                    .build()
                    .ok()?;
                Some(WriteRequest::builder().delete_request(delete).build())
            })
            .collect();
        self.batch(requests, "deleted sets").await
    }
}

/// The set and copy records among `items`, by their kinds (`SET`, `COPY` or the run's views).
fn split_records(
    items: &[HashMap<String, AttributeValue>],
    (set_kind, copy_kind): (&str, &str),
) -> (Vec<SetRecord>, Vec<CopyRecord>) {
    let mut sets = Vec::new();
    let mut copies = Vec::new();
    for item in items {
        let kind = item
            .get(KIND)
            .and_then(|k| k.as_s().ok())
            .map(String::as_str);
        if kind == Some(set_kind) {
            sets.extend(body_of::<SetRecord>(item));
        } else if kind == Some(copy_kind) {
            copies.extend(body_of::<CopyRecord>(item));
        }
    }
    (sets, copies)
}

/// One run's markers in the catalog.
pub struct RunMarkerStore<'a> {
    pub catalog: &'a Catalog,
    pub run_id: &'a str,
    /// This invocation's token, written into every marker it creates.
    pub token: String,
}

impl<'a> RunMarkerStore<'a> {
    pub fn new(catalog: &'a Catalog, run_id: &'a str) -> Self {
        RunMarkerStore {
            catalog,
            run_id,
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    pub async fn read(&self) -> Result<RunMarkers, Error> {
        let items = self
            .catalog
            .query(run_pk(self.run_id), "marker#", &self.subject())
            .await?;
        let found: Vec<(String, String)> = items
            .iter()
            .filter_map(|item| {
                let sk = item.get(SK)?.as_s().ok()?;
                let leaf = sk.strip_prefix("marker#")?.to_string();
                let value = item.get(BODY)?.as_s().ok()?.clone();
                Some((leaf, value))
            })
            .collect();
        Ok(parse_markers(
            found.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        ))
    }

    /// Tries to create lease `epoch` ending at `until`; answers whether this invocation holds it.
    pub async fn take_lease(&self, epoch: u32, until: DateTime<Utc>) -> Result<bool, Error> {
        self.create(&format!("{LEASE}{epoch}"), Some(until)).await
    }

    /// Tries to create copy lease `epoch` ending at `until`.
    pub async fn take_copy_lease(&self, epoch: u32, until: DateTime<Utc>) -> Result<bool, Error> {
        self.create(&format!("{COPY_LEASE}{epoch}"), Some(until))
            .await
    }

    /// Gives copy lease `epoch` back before it ends, so that the next pass need not wait.
    pub async fn drop_copy_lease(&self, epoch: u32) -> Result<(), Error> {
        self.delete(&[format!("{COPY_LEASE}{epoch}")]).await
    }

    /// Claims pass `pass` of the copy step for the message `message_id`: one message per pass
    /// goes on, whichever invocations it is delivered to. A redelivery of the same message
    /// (after its invocation was stopped, or a duplicate) finds its own claim and goes on too.
    pub async fn claim_copy_pass(&self, pass: u32, message_id: &str) -> Result<bool, Error> {
        self.claim_for(&format!("{COPY_PASS}{pass}"), message_id)
            .await
    }

    /// Tries to create vault lease `epoch` ending at `until`.
    pub async fn take_vault_lease(&self, epoch: u32, until: DateTime<Utc>) -> Result<bool, Error> {
        self.create(&format!("{VAULT_LEASE}{epoch}"), Some(until))
            .await
    }

    /// Gives vault lease `epoch` back before it ends.
    pub async fn drop_vault_lease(&self, epoch: u32) -> Result<(), Error> {
        self.delete(&[format!("{VAULT_LEASE}{epoch}")]).await
    }

    /// Claims pass `pass` of the vault step for the message `message_id`, as
    /// `claim_copy_pass` claims a copy pass.
    pub async fn claim_vault_pass(&self, pass: u32, message_id: &str) -> Result<bool, Error> {
        self.claim_for(&format!("{VAULT_PASS}{pass}"), message_id)
            .await
    }

    /// Marks every vault copy of the run final; answers whether this invocation was first.
    pub async fn mark_vaulted(&self) -> Result<bool, Error> {
        self.create(VAULTED, None).await
    }

    /// Claims look `look` at the whole run for the message `message_id`, as
    /// `claim_copy_pass` claims a copy pass.
    pub async fn claim_run_look(&self, look: u32, message_id: &str) -> Result<bool, Error> {
        self.claim_for(&format!("{RUN_LOOK}{look}"), message_id)
            .await
    }

    /// Claims look `look` of the run's early looks (`RunJob::early`), which are numbered apart
    /// from the backoff's.
    pub async fn claim_early_look(&self, look: u32, message_id: &str) -> Result<bool, Error> {
        self.claim_for(&format!("{RUN_LOOK}early-{look}"), message_id)
            .await
    }

    /// Creates marker `leaf` for the message `message_id` (this invocation's token when the
    /// job came with no message).
    async fn claim_for(&self, leaf: &str, message_id: &str) -> Result<bool, Error> {
        let token = if message_id.is_empty() {
            self.token.as_str()
        } else {
            message_id
        };
        self.create_as(leaf, None, token).await
    }

    /// Claims the CreateSnapshots call of an instance's crash-consistent fallback; answers
    /// whether this look is the first to (see `FALLBACK`).
    pub async fn claim_fallback(&self, instance_id: &str) -> Result<bool, Error> {
        self.create(&format!("{FALLBACK}{instance_id}"), None).await
    }

    /// Says that the instance's CreateSnapshots went unanswered; answers whether this is the
    /// first time (the next look then looks for what it left).
    pub async fn mark_fallback_unsure(&self, instance_id: &str) -> Result<bool, Error> {
        self.create(&format!("{FALLBACK_UNSURE}{instance_id}"), None)
            .await
    }

    /// Says that a copy pass is about to start copies (see `COPY_UNSURE`).
    pub async fn mark_copy_unsure(&self) -> Result<(), Error> {
        self.create(COPY_UNSURE, None).await.map(|_| ())
    }

    /// Says that every copy started so far is recorded.
    pub async fn clear_copy_unsure(&self) -> Result<(), Error> {
        self.delete(&[COPY_UNSURE.to_string()]).await
    }

    /// Marks every copy of the run final; answers whether this invocation was the first to.
    pub async fn mark_copied(&self) -> Result<bool, Error> {
        self.create(COPIED, None).await
    }

    /// Marks the run dispatched; answers whether this invocation was the first to.
    pub async fn mark_dispatched(&self) -> Result<bool, Error> {
        self.create(DISPATCHED, None).await
    }

    /// Marks the run reported; answers whether this invocation was the first to (and so writes
    /// the summary).
    pub async fn mark_reported(&self) -> Result<bool, Error> {
        self.create(REPORTED, None).await
    }

    /// Claims pass `pass` of the run's retention for the message `message_id`, as
    /// `claim_copy_pass` claims a copy pass.
    pub async fn claim_retention_pass(&self, pass: u32, message_id: &str) -> Result<bool, Error> {
        self.claim_for(&format!("{RETENTION_PASS}{pass}"), message_id)
            .await
    }

    /// Marks the run's retention done; answers whether this invocation was the first to (and
    /// so writes the retention summary).
    pub async fn mark_retained(&self) -> Result<bool, Error> {
        self.create(RETAINED, None).await
    }

    /// Records that the holder of lease `epoch` gave up with `error` (best effort: without
    /// it, the lease's end still counts towards the dispatch's cap).
    pub async fn record_dispatch_error(&self, epoch: u32, error: &str) {
        let value = MarkerValue {
            token: self.token.clone(),
            until: None,
            error: Some(error.to_string()),
        };
        if let Err(err) = self
            .create_value(&format!("{DISPATCH_ERROR}{epoch}"), value)
            .await
        {
            warn!(run_id = %self.run_id, epoch, error = %err, "the dispatch's error was not recorded");
        }
    }

    /// Marks the run abandoned with `reason`; answers whether this invocation was the first to.
    pub async fn mark_abandoned(&self, reason: &str) -> Result<bool, Error> {
        let value = MarkerValue {
            token: self.token.clone(),
            until: None,
            error: Some(reason.to_string()),
        };
        self.create_value(ABANDONED, value).await
    }

    async fn create(&self, leaf: &str, until: Option<DateTime<Utc>>) -> Result<bool, Error> {
        self.create_as(leaf, until, &self.token).await
    }

    async fn create_as(
        &self,
        leaf: &str,
        until: Option<DateTime<Utc>>,
        token: &str,
    ) -> Result<bool, Error> {
        let value = MarkerValue {
            token: token.to_string(),
            until,
            error: None,
        };
        self.create_value(leaf, value).await
    }

    /// Creates marker `leaf`; answers whether the marker is this value's token's (created
    /// now, or earlier by a call whose answer was lost).
    async fn create_value(&self, leaf: &str, value: MarkerValue) -> Result<bool, Error> {
        let token = value.token.clone();
        let sk = format!("marker#{leaf}");
        let what = format!("{} ({leaf})", self.subject());
        let marker = item(
            run_pk(self.run_id),
            sk.clone(),
            "marker",
            &value,
            Some(expiry(Utc::now())),
        );
        if self.catalog.create(marker, &what).await? {
            return Ok(true);
        }
        // Either another invocation created it, or this one did and the answer was lost
        // before a retry: the token says which.
        let current = self.catalog.get(run_pk(self.run_id), sk, &what).await?;
        Ok(current
            .as_ref()
            .and_then(body_of::<MarkerValue>)
            .is_some_and(|v| v.token == token))
    }

    async fn delete(&self, leaves: &[String]) -> Result<(), Error> {
        let requests: Vec<WriteRequest> = leaves
            .iter()
            .filter_map(|leaf| {
                let delete = DeleteRequest::builder()
                    .key(PK, s(run_pk(self.run_id)))
                    .key(SK, s(format!("marker#{leaf}")))
                    .build()
                    .ok()?;
                Some(WriteRequest::builder().delete_request(delete).build())
            })
            .collect();
        self.catalog.batch(requests, &self.subject()).await
    }

    /// Drops the finished run's lease and dispatch markers; the ones that say a step is over
    /// (`reported`, `copied`, `retained`) stay until their TTL, so that a late duplicate of
    /// the schedule or of a message finds its step over. A failure here leaves items behind
    /// until their TTL, not a wrong backup: it is logged, not retried.
    pub async fn release_finished(&self) {
        let released = match self.read().await {
            Ok(markers) => self.delete(&to_release(&markers)).await,
            Err(err) => Err(err),
        };
        match released {
            Ok(()) => info!(run_id = %self.run_id, "run markers released"),
            Err(err) => warn!(run_id = %self.run_id, error = %err, "run markers not released"),
        }
    }

    fn subject(&self) -> String {
        format!("run {}", self.run_id)
    }
}
