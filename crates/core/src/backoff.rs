//! Exponential backoff with jitter for transient failures.
//!
//! The delay before attempt `n + 1` is `min(max, initial * 2^(n - 1))`, of which the upper half is
//! randomised ("equal jitter"), so workers that failed together do not retry together.

use std::time::Duration;

use crate::config::RetryConfig;

/// The delay to wait after `failed_attempts` attempts (at least 1) have failed.
pub fn backoff_delay(config: &RetryConfig, failed_attempts: u32) -> Duration {
    jittered(
        config.initial_backoff_ms,
        config.max_backoff_ms,
        failed_attempts,
    )
}

/// The delay before the next try of a record that waits for an unavailable dependency, after
/// `failed_tries` tries: the same doubling, capped at `retry.unavailable_max_backoff_ms`.
pub fn unavailable_delay(config: &RetryConfig, failed_tries: u32) -> Duration {
    jittered(
        config.initial_backoff_ms,
        config.unavailable_max_backoff_ms,
        failed_tries,
    )
}

fn jittered(initial_ms: u64, max_ms: u64, failed: u32) -> Duration {
    let exponent = failed.saturating_sub(1).min(32);
    let ceiling = initial_ms.saturating_mul(1u64 << exponent).min(max_ms);
    let half = ceiling / 2;
    Duration::from_millis(half + fastrand::u64(0..=ceiling - half))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> RetryConfig {
        RetryConfig {
            max_attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
            unavailable_max_backoff_ms: 1_000,
            give_up_after_ms: None,
        }
    }

    #[test]
    fn an_outage_backs_off_to_its_own_ceiling() {
        for _ in 0..100 {
            let late = unavailable_delay(&config(), 1_000).as_millis();
            assert!((500..=1_000).contains(&late), "{late}");
        }
    }

    #[test]
    fn delays_double_until_the_ceiling() {
        for _ in 0..100 {
            let first = backoff_delay(&config(), 1).as_millis();
            let third = backoff_delay(&config(), 3).as_millis();
            let late = backoff_delay(&config(), 30).as_millis();
            assert!((50..=100).contains(&first), "{first}");
            assert!((200..=400).contains(&third), "{third}");
            assert!((2_500..=5_000).contains(&late), "{late}");
        }
    }

    proptest! {
        #[test]
        fn delay_is_bounded(attempts in 0u32..1000, initial in 1u64..10_000, extra in 0u64..100_000) {
            let config = RetryConfig { max_attempts: 5, initial_backoff_ms: initial, max_backoff_ms: initial + extra, ..RetryConfig::default() };
            let delay = backoff_delay(&config, attempts).as_millis() as u64;
            prop_assert!(delay <= initial + extra);
            prop_assert!(delay >= initial / 2);
        }
    }
}
