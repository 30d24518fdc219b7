//! Throttling, counted: every attempt AWS refused as "too many requests", by error code,
//! whether the SDK's retry then got through or not. Retried throttling fails nothing, so
//! without this count a fleet that AWS slows down shows nothing until a deadline is missed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::{Intercept, SharedInterceptor};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::error::throttling_code;

/// The throttled attempts of every client since the last `take`, by AWS error code.
#[derive(Debug, Clone, Default)]
pub struct Throttles(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Throttles {
    /// The counts so far, reset to none.
    pub fn take(&self) -> BTreeMap<&'static str, u64> {
        self.0
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    fn add(&self, code: &'static str) {
        if let Ok(mut counts) = self.0.lock() {
            *counts.entry(code).or_default() += 1;
        }
    }

    /// The SDK interceptor that counts into these.
    pub(crate) fn interceptor(&self) -> SharedInterceptor {
        SharedInterceptor::new(CountThrottles(self.clone()))
    }
}

/// Reads each attempt's answer: an error answer whose code is a throttling code is counted.
/// The SDK has read an error answer's body into memory by then.
#[derive(Debug)]
struct CountThrottles(Throttles);

impl Intercept for CountThrottles {
    fn name(&self) -> &'static str {
        "CountThrottles"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(response) = context.response() {
            let error_type = response.headers().get("x-amzn-ErrorType");
            let body = response.body().bytes().unwrap_or_default();
            if let Some(code) = throttling_code(response.status().as_u16(), error_type, body) {
                self.0.add(code);
            }
        }
        Ok(())
    }
}
