//! A fake host to run a policy natively in unit tests: set the attachment's config, call a
//! hook exactly as the component would (config parsed, state encoded, output lengths
//! checked), and read the lines it logged.

use crate::host::imp::{Fake, FAKE};
use crate::{
    check_len, from_host_config, run_tick, Action, ApprovalPolicy, Device, Level, PolicyError,
    RatePolicy, RolloutStats, ScopePolicy, Task, Verdict,
};

/// Runs hooks under a config, keeping the logs; rate state carries over between ticks.
#[derive(Debug, Default)]
pub struct Harness {
    config: Vec<u8>,
    logs: Vec<(Level, String)>,
    state: Vec<u8>,
}

impl Harness {
    /// A harness whose attachment config is this JSON text.
    pub fn with_config(json: &str) -> Self {
        Self {
            config: json.as_bytes().to_vec(),
            ..Self::default()
        }
    }

    /// Runs `f` with this harness as the host of the current thread.
    pub fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let previous = FAKE.with(|h| {
            std::mem::replace(
                &mut *h.borrow_mut(),
                Fake {
                    config: self.config.clone(),
                    logs: Some(Vec::new()),
                },
            )
        });
        let out = f();
        let fake = FAKE.with(|h| std::mem::replace(&mut *h.borrow_mut(), previous));
        self.logs.extend(fake.logs.unwrap_or_default());
        out
    }

    /// `scope.select`, as the component runs it.
    pub fn select<P: ScopePolicy>(&mut self, devices: &[Device]) -> Result<Vec<bool>, PolicyError> {
        self.run(|| {
            let p: P = from_host_config()?;
            check_len(p.select(devices)?, devices.len(), "select")
        })
    }

    /// `approval.approve`, as the component runs it.
    pub fn approve<P: ApprovalPolicy>(
        &mut self,
        now_ms: u64,
        tasks: &[Task],
    ) -> Result<Vec<Verdict>, PolicyError> {
        self.run(|| {
            let p: P = from_host_config()?;
            check_len(p.approve(now_ms, tasks)?, tasks.len(), "approve")
        })
    }

    /// `rate.tick`, as the component runs it; the new state is kept for the next tick.
    pub fn tick<P: RatePolicy>(&mut self, stats: &RolloutStats) -> Result<Action, PolicyError> {
        let state = std::mem::take(&mut self.state);
        let out = self.run(|| {
            let p: P = from_host_config()?;
            run_tick(&p, stats, &state)
        });
        match out {
            Ok((action, state)) => {
                self.state = state;
                Ok(action)
            }
            Err(e) => {
                self.state = state;
                Err(e)
            }
        }
    }

    /// The encoded rate state the next tick starts from.
    pub fn state(&self) -> &[u8] {
        &self.state
    }

    /// Every line logged so far.
    pub fn logs(&self) -> &[(Level, String)] {
        &self.logs
    }
}

/// A device with only an id and a name (product `p`, online).
pub fn device(id: u64, name: &str) -> Device {
    Device {
        id,
        name: name.to_owned(),
        product: "p".to_owned(),
        online: true,
        ..Device::default()
    }
}

/// A task for `device`, first attempt, 1.0.0 → 2.0.0.
pub fn task(id: u64, device: Device) -> Task {
    Task {
        id,
        device,
        rollout_id: 1,
        from_version: "1.0.0".to_owned(),
        to_version: "2.0.0".to_owned(),
        attempt: 0,
    }
}
