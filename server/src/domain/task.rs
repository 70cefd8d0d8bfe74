//! The task and rollout state machines of DESIGN §4 as pure functions: which event moves a
//! state where, and which states an event may start from (the `WHERE state IN (…)` guard of
//! every set-based transition in the store). No I/O.

use super::Invalid;

/// Generates `as_str`/`parse`/`ALL` for a snake_case word enum via strum.
macro_rules! word_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
                 strum::IntoStaticStr, strum::EnumString)]
        #[strum(serialize_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $v),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            pub fn as_str(self) -> &'static str {
                self.into()
            }
            pub fn parse(s: &str) -> Option<Self> {
                s.parse().ok()
            }
            /// Parses `s`, or names `field` and lists the allowed words.
            pub fn parse_field(field: &str, s: &str) -> Result<Self, Invalid> {
                Self::parse(s).ok_or_else(|| Invalid::new(
                    field,
                    format!("must be one of {}, got {s:?}", Self::words()),
                ))
            }
            /// The allowed words, comma-separated.
            pub fn words() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }
    };
}
pub(crate) use word_enum;

word_enum!(
    /// One device's part of one rollout (DESIGN §4).
    TaskState {
        /// Waits for the app's confirmation (R13).
        Confirming,
        /// In scope, not yet released.
        Waiting,
        /// Released, waiting to be pushed (EnOS "Pending Push").
        Pending,
        /// The device was sent the package (Alibaba "Notified").
        Pushed,
        /// The device reported progress.
        InProgress,
        Succeeded,
        Failed,
        Rejected,
        Cancelled,
    }
);

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Rejected | TaskState::Cancelled
        )
    }

    /// Not yet started on the device: what override (R11), multi-module (R10) and a
    /// package's per-device cancel (O1) may cancel.
    pub const NOT_STARTED: &'static [TaskState] = &[
        TaskState::Confirming,
        TaskState::Waiting,
        TaskState::Pending,
        TaskState::Pushed,
    ];

    /// Every state a task can still leave.
    pub const OPEN: &'static [TaskState] = &[
        TaskState::Confirming,
        TaskState::Waiting,
        TaskState::Pending,
        TaskState::Pushed,
        TaskState::InProgress,
    ];
}

word_enum!(
    /// What happens to a task.
    TaskEvent {
        /// The app confirmed the update (R13).
        Confirm,
        /// The scheduler released it (rate, concurrency, window, approval allow).
        Release,
        /// The push went out (again, when the device came back online).
        Push,
        /// The device reported progress; the first one starts the timeout clock (R9).
        Progress,
        /// The device reported the target version.
        Succeed,
        /// The device reported a failure step.
        Fail,
        /// The device declined (EnOS -5).
        Reject,
        /// No success within the device timeout (R9).
        TimeOut,
        /// The retry interval passed (R8).
        Retry,
        /// Re-run by hand (O3).
        Rerun,
        /// Cancelled by hand, by override, or by the rollout's end (O1, R1, R11).
        Cancel,
    }
);

/// What an event does to a task in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The task moves to this state.
    Move(TaskState),
    /// The task stays, but the event is recorded (a success reported for a cancelled task:
    /// O1 says it is still recorded; a duplicate report).
    Record,
    /// The event is not allowed now; a late or duplicated message never moves a task back.
    Refuse,
}

impl TaskEvent {
    /// The states this event may move a task out of: the guard of its set-based update.
    pub fn sources(self) -> &'static [TaskState] {
        use TaskState::*;
        match self {
            TaskEvent::Confirm => &[Confirming],
            TaskEvent::Release => &[Waiting],
            TaskEvent::Push => &[Pending, Pushed],
            TaskEvent::Progress => &[Pushed, InProgress],
            TaskEvent::Succeed => TaskState::OPEN,
            TaskEvent::Fail | TaskEvent::Reject => &[Pushed, InProgress],
            TaskEvent::TimeOut => &[InProgress],
            TaskEvent::Retry | TaskEvent::Rerun => &[Failed],
            TaskEvent::Cancel => TaskState::OPEN,
        }
    }

    fn target(self) -> TaskState {
        use TaskState::*;
        match self {
            TaskEvent::Confirm => Waiting,
            TaskEvent::Release => Pending,
            TaskEvent::Push => Pushed,
            TaskEvent::Progress => InProgress,
            TaskEvent::Succeed => Succeeded,
            TaskEvent::Fail | TaskEvent::TimeOut => Failed,
            TaskEvent::Reject => Rejected,
            TaskEvent::Retry | TaskEvent::Rerun => Waiting,
            TaskEvent::Cancel => Cancelled,
        }
    }
}

impl TaskState {
    /// The task state machine of DESIGN §4.
    pub fn on(self, event: TaskEvent) -> Outcome {
        if event.sources().contains(&self) {
            return Outcome::Move(event.target());
        }
        match (self, event) {
            // O1: a cancelled in-progress task still records a later success report.
            (TaskState::Cancelled, TaskEvent::Succeed) => Outcome::Record,
            (TaskState::Succeeded, TaskEvent::Succeed | TaskEvent::Progress) => Outcome::Record,
            _ => Outcome::Refuse,
        }
    }
}

word_enum!(
    /// A rollout's life: `scheduled -> running <-> paused -> completed | cancelled`, plus
    /// `draft` when it does not start on creation (DESIGN §4, R17).
    RolloutState {
        Draft,
        Scheduled,
        Running,
        Paused,
        Completed,
        Cancelled,
    }
);

word_enum!(
    /// What happens to a rollout.
    RolloutEvent {
        /// Started by hand (R17) or on creation.
        Start,
        /// The scheduled start time came (R1).
        Begin,
        Pause,
        Resume,
        /// Every task is finished, or the end time passed (R1).
        Finish,
        Cancel,
    }
);

impl RolloutState {
    pub fn is_finished(self) -> bool {
        matches!(self, RolloutState::Completed | RolloutState::Cancelled)
    }

    /// The rollout state machine. `start_in_future` says whether a start (by hand or on
    /// creation) waits for a scheduled time.
    pub fn on(self, event: RolloutEvent, start_in_future: bool) -> Option<RolloutState> {
        use RolloutState::*;
        match (self, event) {
            (Draft, RolloutEvent::Start) => Some(if start_in_future { Scheduled } else { Running }),
            (Scheduled, RolloutEvent::Begin) => Some(Running),
            (Running, RolloutEvent::Pause) => Some(Paused),
            (Paused, RolloutEvent::Resume) => Some(Running),
            (Running | Paused, RolloutEvent::Finish) => Some(Completed),
            (Draft | Scheduled | Running | Paused, RolloutEvent::Cancel) => Some(Cancelled),
            _ => None,
        }
    }

    /// The states a rollout event may leave (its guard).
    pub fn sources(event: RolloutEvent) -> Vec<RolloutState> {
        RolloutState::ALL
            .iter()
            .copied()
            .filter(|s| s.on(event, false).is_some())
            .collect()
    }
}

word_enum!(
    /// Why a state changed (O4).
    Cause {
        /// An API call; the actor is the key.
        Api,
        /// A device message; the actor is the device.
        Device,
        /// A timer: schedule, timeout, retry interval.
        Timer,
        /// A policy decision (built-in or a tenant's).
        Policy,
    }
);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use TaskEvent as E;
    use TaskState as S;

    // The task machine of DESIGN §4, edge by edge.
    #[test]
    fn task_happy_path_and_retry_loop() {
        let mut s = S::Confirming;
        for (ev, want) in [
            (E::Confirm, S::Waiting),
            (E::Release, S::Pending),
            (E::Push, S::Pushed),
            (E::Push, S::Pushed), // re-push after reconnect
            (E::Progress, S::InProgress),
            (E::Progress, S::InProgress),
            (E::Fail, S::Failed),
            (E::Retry, S::Waiting),
            (E::Release, S::Pending),
            (E::Push, S::Pushed),
            (E::Succeed, S::Succeeded),
        ] {
            assert_eq!(s.on(ev), Outcome::Move(want), "{s:?} --{ev:?}");
            s = want;
        }
    }

    #[test]
    fn terminal_states_never_move_back() {
        for s in [S::Succeeded, S::Failed, S::Rejected, S::Cancelled] {
            assert!(s.is_terminal());
            for ev in TaskEvent::ALL {
                if let Outcome::Move(to) = s.on(*ev) {
                    // only a failed task goes back to waiting, by retry or re-run (R8, O3)
                    assert_eq!((s, to), (S::Failed, S::Waiting), "{ev:?}");
                }
            }
        }
    }

    #[test]
    fn cancel_reaches_every_open_state_including_in_progress() {
        for s in TaskState::OPEN {
            assert_eq!(s.on(E::Cancel), Outcome::Move(S::Cancelled));
        }
        // O1: a success reported after the cancel is recorded, the task stays cancelled
        assert_eq!(S::Cancelled.on(E::Succeed), Outcome::Record);
    }

    #[test]
    fn timeout_only_from_in_progress_and_reject_from_pushed_or_in_progress() {
        for s in TaskState::ALL {
            let want = *s == S::InProgress;
            assert_eq!(matches!(s.on(E::TimeOut), Outcome::Move(S::Failed)), want);
        }
        assert_eq!(S::Pushed.on(E::Reject), Outcome::Move(S::Rejected));
        assert_eq!(S::Waiting.on(E::Reject), Outcome::Refuse);
        assert_eq!(S::Waiting.on(E::Confirm), Outcome::Refuse);
    }

    #[test]
    fn sources_agree_with_on() {
        for ev in TaskEvent::ALL {
            for s in TaskState::ALL {
                let moves = matches!(s.on(*ev), Outcome::Move(_));
                assert_eq!(moves, ev.sources().contains(s), "{s:?} {ev:?}");
            }
        }
    }

    #[test]
    fn rollout_machine() {
        use RolloutEvent as R;
        use RolloutState::*;
        assert_eq!(Draft.on(R::Start, false), Some(Running));
        assert_eq!(Draft.on(R::Start, true), Some(Scheduled));
        assert_eq!(Scheduled.on(R::Begin, false), Some(Running));
        assert_eq!(Running.on(R::Pause, false), Some(Paused));
        assert_eq!(Paused.on(R::Resume, false), Some(Running));
        assert_eq!(Paused.on(R::Finish, false), Some(Completed));
        assert_eq!(Running.on(R::Start, false), None);
        for s in [Completed, Cancelled] {
            assert!(s.is_finished());
            for ev in RolloutEvent::ALL {
                assert_eq!(s.on(*ev, false), None);
            }
        }
        assert_eq!(
            RolloutState::sources(R::Cancel),
            vec![Draft, Scheduled, Running, Paused]
        );
    }

    #[test]
    fn words_round_trip_and_errors_name_the_field() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(*s));
        }
        assert_eq!(S::InProgress.as_str(), "in_progress");
        let e = TaskState::parse_field("state", "done").unwrap_err();
        assert_eq!(e.field, "state");
        assert!(e.message.contains("in_progress"), "{}", e.message);
    }
}
