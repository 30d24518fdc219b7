//! What the VSS document needs its instance role to allow (`AWSEC2VssSnapshotPolicy`, AWS-FACTS),
//! as one question for IAM's policy simulator, and what the simulator's answer comes to.

/// One SimulatePrincipalPolicy call: every action against every resource, under one context;
/// `needed` are the (action, resource) pairs that matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionQuestion {
    pub actions: Vec<&'static str>,
    pub resources: Vec<String>,
    /// Condition keys and their value, as the call from the instance would carry them.
    pub context: Vec<(&'static str, String)>,
    pub needed: Vec<(&'static str, String)>,
}

/// What the simulator said of one instance profile's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleFacts {
    /// Simulated: the role, and each needed call it does not allow (`action on resource`).
    Simulated { role: String, denied: Vec<String> },
    /// Not simulated, and why (the profile or the simulation not readable, with AWS's code).
    Unknown(String),
}

/// The calls the VSS document makes from `instance_id` with its instance credentials: the
/// multi-volume snapshot (on the instance, its volumes and the new snapshots, tagged
/// `AwsVssConfig` at creation), the tags it adds at creation, reading the instance's block
/// devices, and describing the snapshots. `profile_arn` gives the partition and account.
pub fn vss_document_needs(
    instance_id: &str,
    region: &str,
    profile_arn: &str,
) -> Option<PermissionQuestion> {
    let parts: Vec<&str> = profile_arn.splitn(6, ':').collect();
    let [_, partition, _, _, account, _] = parts.as_slice() else {
        return None;
    };
    if partition.is_empty() || account.is_empty() || region.is_empty() {
        return None;
    }
    let instance = format!("arn:{partition}:ec2:{region}:{account}:instance/{instance_id}");
    let snapshots = format!("arn:{partition}:ec2:{region}::snapshot/*");
    let volumes = format!("arn:{partition}:ec2:{region}:{account}:volume/*");
    Some(PermissionQuestion {
        actions: vec![
            "ec2:CreateSnapshots",
            "ec2:CreateTags",
            "ec2:DescribeInstanceAttribute",
            "ec2:DescribeSnapshots",
        ],
        resources: vec![instance.clone(), snapshots.clone(), volumes.clone()],
        context: vec![
            ("ec2:SourceInstanceARN", instance.clone()),
            ("ec2:InstanceId", instance_id.to_string()),
            ("aws:RequestTag/AwsVssConfig", "AwsVssComponents".into()),
            ("ec2:CreateAction", "CreateSnapshots".into()),
        ],
        needed: vec![
            ("ec2:CreateSnapshots", instance.clone()),
            ("ec2:CreateSnapshots", volumes),
            ("ec2:CreateSnapshots", snapshots.clone()),
            ("ec2:CreateTags", snapshots.clone()),
            ("ec2:DescribeInstanceAttribute", instance),
            ("ec2:DescribeSnapshots", snapshots),
        ],
    })
}

/// The needed calls the simulator did not allow, as `action on resource`; `decisions` are its
/// (action, resource, allowed) answers. A needed pair it did not answer counts as not allowed.
pub fn denied(question: &PermissionQuestion, decisions: &[(String, String, bool)]) -> Vec<String> {
    question
        .needed
        .iter()
        .filter(|(action, resource)| {
            !decisions
                .iter()
                .any(|(a, r, allowed)| *allowed && a == action && r == resource)
        })
        .map(|(action, resource)| format!("{action} on {resource}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = "arn:aws:iam::123456789012:instance-profile/vss-instance";

    #[test]
    fn the_question_names_the_instance_in_its_partition_account_and_region() {
        let q = vss_document_needs("i-1", "eu-west-1", PROFILE).expect("question");
        assert!(q
            .resources
            .contains(&"arn:aws:ec2:eu-west-1:123456789012:instance/i-1".to_string()));
        assert_eq!(q.needed.len(), 6);
        assert!(q
            .needed
            .iter()
            .all(|(a, r)| q.actions.contains(a) && q.resources.contains(r)));
        let cn = vss_document_needs(
            "i-1",
            "cn-north-1",
            "arn:aws-cn:iam::123456789012:instance-profile/p",
        )
        .expect("question");
        assert!(cn.resources[0].starts_with("arn:aws-cn:ec2:cn-north-1:"));
        assert_eq!(vss_document_needs("i-1", "eu-west-1", "not-an-arn"), None);
    }

    #[test]
    fn a_needed_call_not_answered_allowed_is_denied() {
        let q = vss_document_needs("i-1", "eu-west-1", PROFILE).expect("question");
        let all: Vec<(String, String, bool)> = q
            .needed
            .iter()
            .map(|(a, r)| (a.to_string(), r.clone(), true))
            .collect();
        assert!(denied(&q, &all).is_empty());
        let mut one_short = all.clone();
        one_short[0].2 = false;
        assert_eq!(
            denied(&q, &one_short),
            ["ec2:CreateSnapshots on arn:aws:ec2:eu-west-1:123456789012:instance/i-1"]
        );
        assert_eq!(denied(&q, &[]).len(), 6);
    }
}
