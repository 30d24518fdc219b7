//! The operator's SNS topic.

use crate::aws::aws;
use crate::error::Error;

/// Publishes one message to `topic`; `about` names what it is about in an error.
pub async fn publish(
    sns: &aws_sdk_sns::Client,
    topic: &str,
    subject: String,
    message: String,
    about: &str,
) -> Result<(), Error> {
    sns.publish()
        .topic_arn(topic)
        .subject(subject)
        .message(message)
        .send()
        .await
        .map_err(|e| aws("Publish", format!("{topic} ({about})"), e))?;
    Ok(())
}
