//! Lambda entry point: configuration, clients, logging, then the runtime loop.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use consistent_snapshot::{App, Config};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

// One invocation at a time and no task of its own: a single thread is all the function uses,
// and a multi-threaded runtime would only add threads and malloc arenas (peak memory).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // JSON logs when the function's LoggingConfig says JSON (the template does).
    lambda_runtime::tracing::init_default_subscriber();
    let config =
        Config::from_env().inspect_err(|err| tracing::error!(error = %err, "refusing to start"))?;
    // The SDK's adaptive retry rate-limits itself against EC2 and SSM throttling; bounded in
    // attempts and in time, so that one slow call cannot use up the invocation.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::adaptive().with_max_attempts(5))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(15))
                .operation_timeout(Duration::from_secs(45))
                .build(),
        )
        .load()
        .await;
    let app = App::new(config, &sdk);
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        // Lambda stops the invocation at its deadline: a run claimed here is held until then.
        let deadline = i64::try_from(event.context.deadline)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis);
        match deadline {
            Some(deadline) => app.handle_until(event.payload, deadline).await,
            None => app.handle(event.payload).await,
        }
        .map_err(Error::from)
    }))
    .await
}
