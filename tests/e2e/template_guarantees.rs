//! The templates' guarantees (scripts/check_template.py): the key IAM conditions, the alarms
//! and the checkov justifications hold on template.yaml and vault.yaml, and dropping any one of
//! them is caught.

use std::process::Command;

use harness::workspace_root;

/// Runs the check on `template` text; answers its exit success and output.
fn check(template: &str, name: &str) -> (bool, String) {
    let root = workspace_root();
    let dir = std::env::temp_dir().join(format!("template-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, template).expect("write template");
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/check_template.py"))
        .arg(&path)
        .output()
        .expect("run the check (make setup installs cfn-lint, whose parser it uses)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_template_keeps_its_iam_conditions_alarms_and_justifications() {
    let template =
        std::fs::read_to_string(workspace_root().join("template.yaml")).expect("template.yaml");
    let (ok, out) = check(&template, "as-is");
    assert!(ok, "{out}");

    let mutations = [
        (
            "probe-parameters",
            "        schemaVersion: \"2.2\"\n",
            "        schemaVersion: \"2.2\"\n        parameters:\n          script: {type: String}\n",
            "the readiness probe document ReadinessProbeDocument takes parameters",
        ),
        (
            "probe-other-document",
            "document/${ReadinessProbeDocument}",
            "document/${SsmDocument}",
            "on an account document the stack does not define",
        ),
        (
            "any-document",
            "Resource: !Sub arn:${AWS::Partition}:ssm:${AWS::Region}::document/${SsmDocument}",
            "Resource: \"*\"",
            "not limited to the chosen document",
        ),
        (
            "untagged-instances",
            "ssm:resourceTag/ConsistentSnapshot: !Ref TargetTagValue",
            "ssm:resourceTag/Other: !Ref TargetTagValue",
            "lacks the target tag condition",
        ),
        (
            "delete-anything",
            "              Action: ec2:DeleteSnapshot\n              Resource: !Sub arn:${AWS::Partition}:ec2:*::snapshot/*\n              Condition:\n                StringEquals:\n                  aws:ResourceTag/ConsistentSnapshot:ManagedBy",
            "              Action: ec2:DeleteSnapshot\n              Resource: !Sub arn:${AWS::Partition}:ec2:*::snapshot/*\n              Condition:\n                StringEquals:\n                  aws:ResourceTag/Owner",
            "ec2:DeleteSnapshot is not limited",
        ),
        (
            "delete-any-volume",
            "aws:ResourceTag/ConsistentSnapshot:Purpose: verify",
            "aws:ResourceTag/Owner: verify",
            "ec2:DeleteVolume is not limited",
        ),
        (
            "stop-any-instance",
            "ec2:DetachVolume]\n              Resource: !Sub arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*\n              Condition: !If\n                - DefaultTagKey\n                - StringEquals:\n                    aws:ResourceTag/ConsistentSnapshot: !Ref TargetTagValue",
            "ec2:DetachVolume]\n              Resource: !Sub arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*\n              Condition: !If\n                - DefaultTagKey\n                - StringEquals:\n                    aws:ResourceTag/Other: !Ref TargetTagValue",
            "instances stopped or started without the target tag condition",
        ),
        (
            "fallback-of-any-instance",
            "              Action: ec2:CreateSnapshots\n              Resource: !Sub arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*\n              Condition: !If\n                - DefaultTagKey\n                - StringEquals:\n                    aws:ResourceTag/ConsistentSnapshot:",
            "              Action: ec2:CreateSnapshots\n              Resource: !Sub arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*\n              Condition: !If\n                - DefaultTagKey\n                - StringEquals:\n                    aws:ResourceTag/Other:",
            "ec2:CreateSnapshots of instances without the target tag condition",
        ),
        (
            "fallback-untagged-snapshots",
            "                  aws:RequestTag/ConsistentSnapshot:ManagedBy: !If [ManagedByGiven, !Ref ManagedBy, !Sub \"${AWS::StackName}-${AWS::Region}-${AWS::AccountId}\"]\n            - Sid: TagFallbackSnapshotsWhenCreated",
            "                  aws:RequestTag/Owner: x\n            - Sid: TagFallbackSnapshotsWhenCreated",
            "ec2:CreateSnapshots into snapshots without this deployment's tag",
        ),
        (
            "kms-anywhere",
            "kms:ViaService: ec2.*.amazonaws.com\n                StringEquals:",
            "kms:CallerAccount2: x\n                StringEquals:",
            "KMS use not limited to EC2",
        ),
        (
            "vault-decrypts-anywhere",
            "kms:ViaService: ec2.*.amazonaws.com\n\n  SnapshotFunction:",
            "kms:CallerAccount2: x\n\n  SnapshotFunction:",
            "the vault account may use it outside EC2",
        ),
        (
            "vault-encrypts-with-the-transit-key",
            "Action: [kms:Decrypt, kms:DescribeKey, kms:CreateGrant, kms:ReEncryptFrom]",
            "Action: [kms:Decrypt, kms:DescribeKey, kms:CreateGrant, kms:ReEncryptFrom, kms:Encrypt]",
            "the vault account may do more than decrypt with it",
        ),
        (
            "transit-copies-shared-anywhere",
            "aws:ResourceTag/ConsistentSnapshot:VaultTransit: !If [ManagedByGiven, !Ref ManagedBy, !Sub \"${AWS::StackName}-${AWS::Region}-${AWS::AccountId}\"]\n                  ForAllValues:StringEquals:\n                    ec2:Add/userId: [!Ref VaultAccountId]",
            "aws:ResourceTag/ConsistentSnapshot:VaultTransit: !If [ManagedByGiven, !Ref ManagedBy, !Sub \"${AWS::StackName}-${AWS::Region}-${AWS::AccountId}\"]\n                  ForAllValues:StringEquals:\n                    ec2:Add/userId: [\"444444444444\"]",
            "may share snapshots with accounts other than the vault",
        ),
        (
            "queue-open-to-any-rule",
            "            Condition:\n              ArnEquals:\n                aws:SourceArn: !GetAtt CompletionEventsRule.Arn\n\n  # SSM's own word",
            "\n  # SSM's own word",
            "allows senders other than the completion events rule",
        ),
        (
            "queue-deny-lets-the-account-through",
            "                aws:SourceArn: !GetAtt CompletionEventsRule.Arn\n          - Sid: SsmCompletionEvents",
            "                aws:SourceAccount: !Ref AWS::AccountId\n          - Sid: SsmCompletionEvents",
            "the deny lets through more than the function and the completion events rule",
        ),
        (
            "events-of-anyone",
            "        source: [aws.ssm]",
            "        source: [aws.ssm, my.app]",
            "passes on events other than SSM's for the VSS document",
        ),
        (
            "events-unread",
            "          COMPLETION_EVENTS: \"true\"",
            "          COMPLETION_EVENTS: \"false\"",
            "COMPLETION_EVENTS is not",
        ),
        (
            "silent-report",
            "      TreatMissingData: breaching",
            "      TreatMissingData: notBreaching",
            "a report that stops must alarm",
        ),
        (
            "unjustified-skip",
            "comment: Encrypted at rest with SSE-SQS (SqsManagedSseEnabled), which this check does not recognise.",
            "comment: ok",
            "no written justification",
        ),
    ];
    for (name, from, to, expected) in mutations {
        assert!(
            template.contains(from),
            "{name}: the template no longer has {from:?}"
        );
        let (ok, out) = check(&template.replacen(from, to, 1), name);
        assert!(!ok && out.contains(expected), "{name}: {out}");
    }
}

/// The template's probe script writes every field of the line the function reads
/// (`run::plan::probe::ProbeFacts`), in the format version it reads, and only reads.
#[test]
fn the_vault_template_keeps_its_guarantees() {
    let template =
        std::fs::read_to_string(workspace_root().join("vault.yaml")).expect("vault.yaml");
    let (ok, out) = check(&template, "vault-as-is");
    assert!(ok, "{out}");
    let mutations = [
        (
            "role-deletes",
            "- Sid: NeverDeleteUnlockShareOrArchive\n                Effect: Deny",
            "- Sid: NeverDeleteUnlockShareOrArchive\n                Effect: Allow",
            "allows ec2:DeleteSnapshot",
        ),
        (
            "role-decrypts-any-key",
            "Resource: !Sub arn:${AWS::Partition}:kms:*:${FleetAccountId}:key/*",
            "Resource: \"*\"",
            "allows kms:Decrypt",
        ),
        (
            "function-deletes-anything",
            "aws:ResourceTag/ConsistentSnapshot:ManagedBy: !Ref FleetManagedBy\n            - !If",
            "aws:ResourceTag/Other: x\n            - !If",
            "deletes snapshots that are not the fleet's copies",
        ),
        (
            "catalog-elsewhere",
            "CATALOG_TABLE: !Ref VaultCatalog",
            "CATALOG_TABLE: some-table",
            "CATALOG_TABLE is not the vault's own catalog",
        ),
        (
            "catalog-writable-by-all",
            "aws:PrincipalArn: !GetAtt VaultFunctionRole.Arn",
            "aws:PrincipalArn: arn:aws:iam::111111111111:role/x",
            "others than the vault function may write it",
        ),
        (
            "stale-unwatched",
            "MetricName: VaultServersStale",
            "MetricName: Nothing",
            "no alarm watches VaultServersStale",
        ),
    ];
    for (name, from, to, expected) in mutations {
        assert!(
            template.contains(from),
            "{name}: vault.yaml no longer has {from:?}"
        );
        let (ok, out) = check(&template.replacen(from, to, 1), name);
        assert!(!ok && out.contains(expected), "{name}: {out}");
    }
}

#[test]
fn the_probe_script_prints_every_field_the_function_reads() {
    let script = harness::emulator::probe_document_content().expect("the probe document");
    assert!(script.contains("'CSPROBE ' + (ConvertTo-Json"), "{script}");
    assert!(script.contains("@{ v = 1;"), "format version 1: {script}");
    for field in [
        "language_mode = ",
        "$probe.writers = ",
        "$probe.failed_writers = ",
        "$probe.components = ",
        "$probe.dynamic_disks = ",
        "$probe.cluster = ",
        "name = ",
        "disks = ",
        "owned_here = ",
    ] {
        assert!(script.contains(field), "{field} missing from {script}");
    }
    // Read-only: nothing that changes the server.
    for verb in [
        "Set-", "New-", "Remove-", "Start-", "Stop-", "Restart-", "Invoke-", "Out-File",
    ] {
        assert!(!script.contains(verb), "{verb} in {script}");
    }
}
