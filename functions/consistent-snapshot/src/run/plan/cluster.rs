//! Failover clusters: a node tagged `ConsistentSnapshot:Cluster=<name>` gets the VSS command
//! only if it owns the cluster's disks; the document fails on the other nodes (AWS runs it on
//! the owner only). Ownership is what the nodes' readiness probes say at the run: a node is
//! left out as a secondary only when exactly one node says it owns all of the cluster's disks
//! and every other tagged node says it is a node of that cluster owning none. Anything less
//! (a node silent, two owners, a node that says it is in no cluster) sends the command to
//! every node, as without the tag, and says why: a probe's word can move the command between
//! the cluster's own nodes, never take a server out of the night. Pure.

use std::collections::{BTreeMap, HashMap};

use crate::model::fleet::{SkipReason, Target};
use crate::model::probe::ProbeResult;

/// What the run does with one cluster's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterPlan {
    /// `owner` gets the command; each of `secondaries` is skipped as such.
    Owner {
        cluster: String,
        owner: String,
        secondaries: Vec<String>,
    },
    /// Ownership was not established: every node gets the command.
    Every { cluster: String, why: String },
}

/// A node's role as its probe says it.
enum Role {
    Owner,
    Secondary,
    Other(String),
}

fn role(cluster: &str, probe: Option<&ProbeResult>) -> Role {
    let facts = match probe {
        Some(ProbeResult::Answered(facts)) => facts,
        Some(
            ProbeResult::Unreadable(why) | ProbeResult::NoAnswer(why) | ProbeResult::NotSent(why),
        ) => return Role::Other(why.clone()),
        None => return Role::Other("not probed".into()),
    };
    match &facts.cluster {
        Some(c) if c.name.eq_ignore_ascii_case(cluster) && c.disks > 0 => {
            if c.owned_here == c.disks {
                Role::Owner
            } else if c.owned_here == 0 {
                Role::Secondary
            } else {
                Role::Other(format!("owns {} of the {} disks", c.owned_here, c.disks))
            }
        }
        Some(c) if c.name.eq_ignore_ascii_case(cluster) => {
            Role::Other("the cluster has no shared disk".into())
        }
        Some(c) => Role::Other(format!("a node of cluster {:?}", c.name)),
        None => Role::Other("not a node of any failover cluster".into()),
    }
}

/// The clustered targets' plans (by the tag's name, case-insensitive), in name order.
pub fn plan_clusters(
    targets: &[Target],
    probes: &HashMap<String, ProbeResult>,
) -> Vec<ClusterPlan> {
    let mut clusters: BTreeMap<String, Vec<&Target>> = BTreeMap::new();
    for t in targets {
        if let Some(name) = &t.cluster {
            clusters
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(t);
        }
    }
    clusters
        .into_values()
        .map(|nodes| {
            let cluster = nodes[0].cluster.clone().unwrap_or_default();
            let mut owners = Vec::new();
            let mut secondaries = Vec::new();
            let mut others = Vec::new();
            for node in &nodes {
                match role(&cluster, probes.get(&node.instance_id)) {
                    Role::Owner => owners.push(node.instance_id.clone()),
                    Role::Secondary => secondaries.push(node.instance_id.clone()),
                    Role::Other(why) => others.push(format!("{}: {why}", node.instance_id)),
                }
            }
            match (owners.as_slice(), others.is_empty()) {
                ([owner], true) => ClusterPlan::Owner {
                    cluster,
                    owner: owner.clone(),
                    secondaries,
                },
                _ => ClusterPlan::Every {
                    why: if !others.is_empty() {
                        others.join("; ")
                    } else if owners.is_empty() {
                        "no node owns the cluster's disks".into()
                    } else {
                        format!("{} nodes say they own the cluster's disks", owners.len())
                    },
                    cluster,
                },
            }
        })
        .collect()
}

/// Applies the plans: the secondaries leave the targets, each with its skip reason.
pub fn leave_out_secondaries(
    targets: Vec<Target>,
    plans: &[ClusterPlan],
) -> (Vec<Target>, Vec<(Target, SkipReason)>) {
    let mut secondary: HashMap<&str, (&str, &str)> = HashMap::new();
    for plan in plans {
        if let ClusterPlan::Owner {
            cluster,
            owner,
            secondaries,
        } = plan
        {
            for s in secondaries {
                secondary.insert(s.as_str(), (cluster.as_str(), owner.as_str()));
            }
        }
    }
    let mut kept = Vec::new();
    let mut left = Vec::new();
    for t in targets {
        match secondary.get(t.instance_id.as_str()) {
            Some((cluster, owner)) => {
                let reason = SkipReason::ClusterSecondary {
                    cluster: cluster.to_string(),
                    owner: owner.to_string(),
                };
                left.push((t, reason));
            }
            None => kept.push(t),
        }
    }
    (kept, left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fleet::VssOptions;
    use crate::model::probe::{ClusterFacts, ProbeFacts};

    fn node(id: &str, cluster: &str) -> Target {
        Target {
            instance_id: id.into(),
            name: id.into(),
            exclude_boot_volume: false,
            options: VssOptions::default(),
            volumes: vec![],
            cost_tags: vec![],
            cluster: Some(cluster.into()),
        }
    }

    fn says(cluster: Option<(&str, u32, u32)>) -> ProbeResult {
        ProbeResult::Answered(ProbeFacts {
            v: 1,
            language_mode: Some("FullLanguage".into()),
            writers: 3,
            failed_writers: vec![],
            components: Some("2.5.0".into()),
            dynamic_disks: 0,
            cluster: cluster.map(|(name, disks, owned_here)| ClusterFacts {
                name: name.into(),
                disks,
                owned_here,
            }),
        })
    }

    #[test]
    fn the_owner_alone_gets_the_command_when_every_node_agrees() {
        let targets = [
            node("i-a", "SQLCLU"),
            node("i-b", "sqlclu"),
            node("i-c", "SQLCLU"),
        ];
        let probes: HashMap<String, ProbeResult> = [
            ("i-a".to_string(), says(Some(("SQLCLU", 2, 0)))),
            ("i-b".to_string(), says(Some(("SQLCLU", 2, 2)))),
            ("i-c".to_string(), says(Some(("SQLCLU", 2, 0)))),
        ]
        .into();
        let plans = plan_clusters(&targets, &probes);
        assert_eq!(
            plans,
            [ClusterPlan::Owner {
                cluster: "SQLCLU".into(),
                owner: "i-b".into(),
                secondaries: vec!["i-a".into(), "i-c".into()],
            }]
        );
        let (kept, left) = leave_out_secondaries(targets.to_vec(), &plans);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].instance_id, "i-b");
        assert_eq!(left.len(), 2);
    }

    #[test]
    fn anything_less_than_agreement_sends_to_every_node() {
        let targets = [node("i-a", "SQLCLU"), node("i-b", "SQLCLU")];
        let cases: [(ProbeResult, ProbeResult, &str); 5] = [
            // The owner silent: never leave the other node out on its word alone.
            (
                says(Some(("SQLCLU", 2, 0))),
                ProbeResult::NoAnswer("no answer within 30 s".into()),
                "no answer",
            ),
            // Two owners (one lies, or ownership moved during the probe).
            (
                says(Some(("SQLCLU", 2, 2))),
                says(Some(("SQLCLU", 2, 2))),
                "2 nodes say",
            ),
            // A stray tag on a server that is in no cluster.
            (
                says(Some(("SQLCLU", 2, 2))),
                says(None),
                "not a node of any",
            ),
            (
                says(Some(("SQLCLU", 2, 2))),
                says(Some(("OTHER", 2, 0))),
                "OTHER",
            ),
            (
                says(Some(("SQLCLU", 2, 1))),
                says(Some(("SQLCLU", 2, 1))),
                "owns 1 of the 2",
            ),
        ];
        for (a, b, why) in cases {
            let probes: HashMap<String, ProbeResult> =
                [("i-a".to_string(), a), ("i-b".to_string(), b)].into();
            let plans = plan_clusters(&targets, &probes);
            match &plans[..] {
                [ClusterPlan::Every { why: said, .. }] => assert!(said.contains(why), "{said}"),
                other => panic!("{why}: {other:?}"),
            }
            let (kept, left) = leave_out_secondaries(targets.to_vec(), &plans);
            assert_eq!((kept.len(), left.len()), (2, 0), "{why}");
        }
    }

    #[test]
    fn a_single_tagged_node_that_owns_the_disks_is_simply_sent_the_command() {
        let targets = [node("i-a", "SQLCLU")];
        let probes: HashMap<String, ProbeResult> =
            [("i-a".to_string(), says(Some(("SQLCLU", 1, 1))))].into();
        let (kept, left) =
            leave_out_secondaries(targets.to_vec(), &plan_clusters(&targets, &probes));
        assert_eq!((kept.len(), left.len()), (1, 0));
    }
}
