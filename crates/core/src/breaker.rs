//! The dead-letter circuit breaker: a bad deploy or a changed upstream contract makes every
//! record fail, and emptying the input topic into its DLQ helps no one. When more than
//! `breaker.max_dlq_ratio` of the last `breaker.window` finished records were dead-lettered,
//! the breaker opens: the worker stops processing (records wait, uncommitted, in order) and
//! reports not ready. After `breaker.open_ms` it probes: it processes `breaker.probe_records`
//! records, and closes if their dead-letter share is at or below the ratio, else opens again.
//!
//! Limit: records already being processed when it opens still finish (and may be
//! dead-lettered); the breaker only stops new ones from starting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// What changed after an outcome or a tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Transition {
    /// Too many dead letters: stop processing. The share that tripped it.
    Opened(f64),
    /// The open time passed: process a probe.
    Probing,
    /// The probe went well: back to normal.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    Probing { started: u32, seen: u32, dead: u32 },
}

/// The breaker's state machine (no I/O: the worker acts on its transitions).
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    window: VecDeque<bool>,
    dead_in_window: u32,
    state: State,
}

impl Breaker {
    pub(crate) fn new(config: &BreakerConfig) -> Self {
        Self {
            config: config.clone(),
            window: VecDeque::with_capacity(config.window as usize),
            dead_in_window: 0,
            state: State::Closed,
        }
    }

    /// Whether new records must wait (open, not yet probing).
    pub(crate) fn holds_records(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Whether a new record may start now; while probing, this counts it against the probe.
    pub(crate) fn may_start(&mut self) -> bool {
        match &mut self.state {
            State::Closed => true,
            State::Open { .. } => false,
            State::Probing { started, .. } => {
                if *started >= self.config.probe_records {
                    return false;
                }
                *started += 1;
                true
            }
        }
    }

    /// A record finished, dead-lettered or not.
    pub(crate) fn record(&mut self, dead_lettered: bool, now: Instant) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        match self.state {
            State::Open { .. } => None,
            State::Closed => {
                if self.window.len() == self.config.window as usize
                    && self.window.pop_front() == Some(true)
                {
                    self.dead_in_window -= 1;
                }
                self.window.push_back(dead_lettered);
                if dead_lettered {
                    self.dead_in_window += 1;
                }
                if self.window.len() < self.config.window as usize {
                    return None;
                }
                let share = f64::from(self.dead_in_window) / f64::from(self.config.window);
                (share > self.config.max_dlq_ratio).then(|| self.open(share, now))
            }
            State::Probing {
                started,
                seen,
                dead,
            } => {
                let seen = seen + 1;
                let dead = dead + u32::from(dead_lettered);
                if seen < self.config.probe_records {
                    self.state = State::Probing {
                        started,
                        seen,
                        dead,
                    };
                    return None;
                }
                let share = f64::from(dead) / f64::from(seen);
                if share > self.config.max_dlq_ratio {
                    return Some(self.open(share, now));
                }
                self.state = State::Closed;
                Some(Transition::Closed)
            }
        }
    }

    /// Moves an open breaker to probing once its time is up.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            State::Open { until } if now >= until => {
                self.state = State::Probing {
                    started: 0,
                    seen: 0,
                    dead: 0,
                };
                Some(Transition::Probing)
            }
            _ => None,
        }
    }

    fn open(&mut self, share: f64, now: Instant) -> Transition {
        self.window.clear();
        self.dead_in_window = 0;
        self.state = State::Open {
            until: now + Duration::from_millis(self.config.open_ms),
        };
        Transition::Opened(share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            window: 10,
            max_dlq_ratio: 0.5,
            open_ms: 1_000,
            probe_records: 4,
        }
    }

    #[test]
    fn it_opens_only_above_the_share_of_a_full_window() {
        let now = Instant::now();
        let mut breaker = Breaker::new(&config());
        // Nine dead letters do not fill the window.
        for _ in 0..9 {
            assert_eq!(breaker.record(true, now), None);
        }
        // Exactly half is not above the ratio.
        let mut half = Breaker::new(&config());
        for i in 0..10 {
            assert_eq!(half.record(i % 2 == 0, now), None);
        }
        assert!(!half.holds_records());
        assert_eq!(breaker.record(true, now), Some(Transition::Opened(1.0)));
        assert!(breaker.holds_records());
        // Outcomes of records already under way do not count while open.
        assert_eq!(breaker.record(true, now), None);
    }

    #[test]
    fn a_probe_closes_it_or_opens_it_again() {
        let now = Instant::now();
        let mut breaker = Breaker::new(&config());
        for _ in 0..10 {
            breaker.record(true, now);
        }
        assert_eq!(breaker.tick(now), None);
        let later = now + Duration::from_millis(1_000);
        assert!(!breaker.may_start());
        assert_eq!(breaker.tick(later), Some(Transition::Probing));
        assert!(!breaker.holds_records());
        // A probe lets exactly its records start.
        for _ in 0..4 {
            assert!(breaker.may_start());
        }
        assert!(!breaker.may_start());
        for _ in 0..3 {
            assert_eq!(breaker.record(true, later), None);
        }
        assert_eq!(breaker.record(false, later), Some(Transition::Opened(0.75)));
        let much_later = later + Duration::from_millis(1_000);
        assert_eq!(breaker.tick(much_later), Some(Transition::Probing));
        for dead in [true, false, false] {
            assert_eq!(breaker.record(dead, much_later), None);
        }
        assert_eq!(breaker.record(false, much_later), Some(Transition::Closed));
        // The window starts empty again after it closes.
        for _ in 0..9 {
            assert_eq!(breaker.record(true, much_later), None);
        }
    }

    #[test]
    fn a_disabled_breaker_never_opens() {
        let mut breaker = Breaker::new(&BreakerConfig {
            enabled: false,
            ..config()
        });
        for _ in 0..100 {
            assert_eq!(breaker.record(true, Instant::now()), None);
        }
    }
}
