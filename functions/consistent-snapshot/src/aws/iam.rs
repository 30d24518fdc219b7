//! IAM, read only: an instance profile's role, and what IAM's policy simulator says that role
//! may do. Readiness asks it of the calls the VSS document makes from the instance.

use aws_sdk_iam::types::{ContextEntry, ContextKeyTypeEnum, PolicyEvaluationDecisionType};

use crate::aws::aws;
use crate::error::Error;
use crate::model::permissions::PermissionQuestion;

/// The role of an instance profile (by its ARN); `None` when the profile holds no role.
pub async fn role_of_profile(
    iam: &aws_sdk_iam::Client,
    profile_arn: &str,
) -> Result<Option<String>, Error> {
    let name = profile_arn.rsplit('/').next().unwrap_or(profile_arn);
    let out = iam
        .get_instance_profile()
        .instance_profile_name(name)
        .send()
        .await
        .map_err(|e| aws("GetInstanceProfile", profile_arn, e))?;
    Ok(out
        .instance_profile()
        .and_then(|p| p.roles().first())
        .map(|r| r.arn().to_string()))
}

/// Asks the simulator `question` of `role_arn`; answers (action, resource, allowed) for every
/// action against every resource.
pub async fn simulate(
    iam: &aws_sdk_iam::Client,
    role_arn: &str,
    question: &PermissionQuestion,
) -> Result<Vec<(String, String, bool)>, Error> {
    let mut call = iam
        .simulate_principal_policy()
        .policy_source_arn(role_arn)
        .set_action_names(Some(
            question.actions.iter().map(|a| a.to_string()).collect(),
        ))
        .set_resource_arns(Some(question.resources.clone()));
    for (key, value) in &question.context {
        call = call.context_entries(
            ContextEntry::builder()
                .context_key_name(*key)
                .context_key_values(value)
                .context_key_type(ContextKeyTypeEnum::String)
                .build(),
        );
    }
    let out = call
        .send()
        .await
        .map_err(|e| aws("SimulatePrincipalPolicy", role_arn, e))?;
    let allowed = |d: &PolicyEvaluationDecisionType| *d == PolicyEvaluationDecisionType::Allowed;
    let mut answers = Vec::new();
    for result in out.evaluation_results() {
        let action = result.eval_action_name().to_string();
        let per_resource = result.resource_specific_results();
        if per_resource.is_empty() {
            // One resource asked: the answer is the result's own.
            let resource = result
                .eval_resource_name()
                .map(str::to_string)
                .or_else(|| question.resources.first().cloned())
                .unwrap_or_default();
            answers.push((action, resource, allowed(result.eval_decision())));
        } else {
            for r in per_resource {
                answers.push((
                    action.clone(),
                    r.eval_resource_name().to_string(),
                    allowed(r.eval_resource_decision()),
                ));
            }
        }
    }
    Ok(answers)
}
