//! The *judge* part of the record stage: what an endpoint's answer means
//! for the event and for its breaker, a pure function of the answer.

use std::time::Duration;

use entity::ErrorClass;

use crate::webhook_client::{Answer, NoAnswer};

/// What the endpoint's answer means for the event, and for its breaker.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Judgement {
    /// A 2xx.
    Delivered,
    /// 410 Gone: the app asked for no more; its endpoint works.
    Gone,
    /// 429, or 503 with `Retry-After`: wait as asked (capped; a 429 that
    /// does not say how long waits its event's backoff), without using an
    /// attempt; it tells nothing of the endpoint's health.
    Throttled(Option<Duration>),
    /// A failed attempt. `endpoint_down` (no answer, or a 5xx) counts
    /// against the breaker; other answers show the endpoint is up.
    Failed {
        class: ErrorClass,
        error: String,
        endpoint_down: bool,
    },
    /// Nothing was sent: the configuration forbids the endpoint's URL (an
    /// `http://` base URL stored under a more permissive configuration). Not
    /// the endpoint's failure, nor the event's: it waits, with the reason
    /// as its `last_error`.
    Refused(String),
}

/// The *judge* part of the record stage: a pure function of the answer.
pub(super) fn judge(answer: &Result<Answer, NoAnswer>, retry_after_cap: Duration) -> Judgement {
    match answer {
        Ok(answer) if (200..300).contains(&answer.status) => Judgement::Delivered,
        Ok(answer) if answer.status == 410 => Judgement::Gone,
        Ok(Answer {
            status: 429 | 503,
            retry_after: Some(wait),
            ..
        }) => Judgement::Throttled(Some((*wait).min(retry_after_cap))),
        Ok(Answer { status: 429, .. }) => Judgement::Throttled(None),
        Ok(answer) => Judgement::Failed {
            class: if (300..400).contains(&answer.status) {
                ErrorClass::Redirect
            } else {
                ErrorClass::HttpStatus
            },
            error: format!("the endpoint answered {}", answer.status),
            endpoint_down: answer.status >= 500 && answer.retry_after.is_none(),
        },
        Err(no_answer) if no_answer.refused_by_policy() => {
            Judgement::Refused(no_answer.message.clone())
        }
        // A broker that refused this message only: it works for others.
        Err(no_answer) if no_answer.class == ErrorClass::Rejected => Judgement::Failed {
            class: no_answer.class,
            error: no_answer.message.clone(),
            endpoint_down: false,
        },
        Err(no_answer) => Judgement::Failed {
            class: no_answer.class,
            error: no_answer.message.clone(),
            endpoint_down: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<u64>) -> Result<Answer, NoAnswer> {
        Ok(Answer {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            excerpt: String::new(),
            latency: Duration::from_millis(3),
            from_broker: false,
        })
    }

    #[test]
    fn answers_are_judged_as_the_contract_says() {
        let cap = Duration::from_secs(60);
        assert_eq!(judge(&answer(204, None), cap), Judgement::Delivered);
        assert_eq!(judge(&answer(410, None), cap), Judgement::Gone);
        assert_eq!(
            judge(&answer(429, Some(5)), cap),
            Judgement::Throttled(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            judge(&answer(429, None), cap),
            Judgement::Throttled(None),
            "a 429 is throttling, whether or not it says how long"
        );
        assert_eq!(
            judge(&answer(503, Some(600)), cap),
            Judgement::Throttled(Some(cap)),
            "a Retry-After is capped"
        );
        let failed = |status| match judge(&answer(status, None), cap) {
            Judgement::Failed {
                class,
                endpoint_down,
                ..
            } => (class, endpoint_down),
            other => panic!("{status}: {other:?}"),
        };
        assert_eq!(failed(500), (ErrorClass::HttpStatus, true));
        assert_eq!(
            failed(503),
            (ErrorClass::HttpStatus, true),
            "503 without Retry-After"
        );
        assert_eq!(
            failed(404),
            (ErrorClass::HttpStatus, false),
            "the endpoint is up"
        );
        assert_eq!(failed(302), (ErrorClass::Redirect, false));
        let timeout = Err(NoAnswer {
            class: ErrorClass::Timeout,
            message: "no answer within 5s".into(),
            latency: Duration::from_secs(5),
        });
        let too_large = Err(NoAnswer {
            class: ErrorClass::Rejected,
            message: "nack: too large".into(),
            latency: Duration::from_millis(1),
        });
        assert!(
            matches!(
                judge(&too_large, cap),
                Judgement::Failed {
                    endpoint_down: false,
                    ..
                }
            ),
            "a broker that refuses one message works for the others"
        );
        assert_eq!(
            judge(&timeout, cap),
            Judgement::Failed {
                class: ErrorClass::Timeout,
                error: "no answer within 5s".into(),
                endpoint_down: true
            }
        );
    }
}
