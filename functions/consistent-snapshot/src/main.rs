//! Lambda entry point: configuration, clients, logging, then the runtime loop.

use consistent_snapshot::{handle, handle_until, load_sdk_config, plausible_deadline, App, Config};
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;

// One invocation at a time and no task of its own: a single thread is all the function uses,
// and a multi-threaded runtime would only add threads and malloc arenas (peak memory).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    // JSON logs when the function's LoggingConfig says JSON (the template does).
    lambda_runtime::tracing::init_default_subscriber();
    let config =
        Config::from_env().inspect_err(|err| tracing::error!(error = %err, "refusing to start"))?;
    let app = App::new(config, &load_sdk_config().await);
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        // Lambda stops the invocation at its deadline: a run claimed here is held until then.
        let deadline = plausible_deadline(event.context.deadline, chrono::Utc::now());
        if deadline.is_none() {
            tracing::warn!(
                deadline_ms = event.context.deadline,
                "the runtime's deadline is not one an invocation can have: Lambda's longest timeout is assumed"
            );
        }
        // On the heap: the handler's future is deep (every job kind's steps), too deep for the
        // compiler to lay out inside the runtime's own.
        match deadline {
            Some(deadline) => Box::pin(handle_until(app, event.payload, deadline)).await,
            None => Box::pin(handle(app, event.payload)).await,
        }
        // Lambda's errorType says what failed: Config, Event, Aws.<code>, Retention, …
        .map_err(Diagnostic::from)
    }))
    .await
}
