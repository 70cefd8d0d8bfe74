//! The component side (wasm32 only): the wit-bindgen bindings of the world the crate features
//! select, and the adapter from the generated traits to this crate's plain ones. A combination
//! of two hooks has no world in the frozen package, so it is made here by including two.

#[cfg(not(any(feature = "scope", feature = "approval", feature = "rate")))]
compile_error!(
    "ota-policy-sdk: enable at least one of the features `scope`, `approval`, `rate` (the hooks your policy exports)"
);

#[cfg(all(feature = "scope", not(feature = "approval"), not(feature = "rate")))]
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "ota:policy/scope-policy@1.0.0",
        pub_export_macro: true,
        export_macro_name: "__ota_policy_export_world",
    });
}

#[cfg(all(not(feature = "scope"), feature = "approval", not(feature = "rate")))]
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "ota:policy/approval-policy@1.0.0",
        pub_export_macro: true,
        export_macro_name: "__ota_policy_export_world",
    });
}

#[cfg(all(not(feature = "scope"), not(feature = "approval"), feature = "rate"))]
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "ota:policy/rate-policy@1.0.0",
        pub_export_macro: true,
        export_macro_name: "__ota_policy_export_world",
    });
}

#[cfg(all(feature = "scope", feature = "approval", feature = "rate"))]
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "ota:policy/rollout-policy@1.0.0",
        pub_export_macro: true,
        export_macro_name: "__ota_policy_export_world",
    });
}

#[cfg(all(feature = "scope", feature = "approval", not(feature = "rate")))]
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "package ota:policy-sdk; world scope-approval { include ota:policy/scope-policy@1.0.0; include ota:policy/approval-policy@1.0.0; }",
        generate_all,
        world: "ota:policy-sdk/scope-approval",
        pub_export_macro: true,
        export_macro_name: "__ota_policy_export_world",
    });
}

#[cfg(all(feature = "scope", not(feature = "approval"), feature = "rate"))]
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "package ota:policy-sdk; world scope-rate { include ota:policy/scope-policy@1.0.0; include ota:policy/rate-policy@1.0.0; }",
        generate_all,
        world: "ota:policy-sdk/scope-rate",
        pub_export_macro: true,
        export_macro_name: "__ota_policy_export_world",
    });
}

#[cfg(all(not(feature = "scope"), feature = "approval", feature = "rate"))]
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "package ota:policy-sdk; world approval-rate { include ota:policy/approval-policy@1.0.0; include ota:policy/rate-policy@1.0.0; }",
        generate_all,
        world: "ota:policy-sdk/approval-rate",
        pub_export_macro: true,
        export_macro_name: "__ota_policy_export_world",
    });
}

#[cfg(feature = "approval")]
use crate::Verdict;
use crate::{Device, ModuleVersion, PolicyError, Requirements};
use std::marker::PhantomData;

/// Implements the generated export traits for a policy type `P`.
pub struct Adapter<P>(PhantomData<P>);

/// Rust's default hook loses the message without a console; this one sends it to the host's
/// log, where the server picks it up as the reason of the trap that follows.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            crate::log(crate::Level::Error, &format!("panic: {info}"));
        }));
    });
}

#[allow(dead_code)]
fn err(e: PolicyError) -> bindings::ota::policy::types::PolicyError {
    bindings::ota::policy::types::PolicyError {
        code: e.code,
        message: e.message,
    }
}

#[allow(dead_code)]
fn requirements(r: Requirements) -> bindings::ota::policy::types::DeviceFields {
    bindings::ota::policy::types::DeviceFields {
        attribute_keys: r.attribute_keys,
        tag_keys: r.tag_keys,
        module_names: r.module_names,
        groups: r.groups,
    }
}

#[allow(dead_code)]
fn device(d: bindings::ota::policy::types::Device) -> Device {
    Device {
        id: d.id,
        name: d.name,
        product: d.product,
        online: d.online,
        modules: d
            .modules
            .unwrap_or_default()
            .into_iter()
            .map(|m| ModuleVersion {
                name: m.name,
                version: m.version,
            })
            .collect(),
        attributes: d.attributes.unwrap_or_default(),
        tags: d.tags.unwrap_or_default(),
        groups: d.groups.unwrap_or_default(),
    }
}

#[cfg(feature = "scope")]
impl<P: crate::ScopePolicy> bindings::exports::ota::policy::scope::Guest for Adapter<P> {
    fn requirements() -> bindings::ota::policy::types::DeviceFields {
        install_panic_hook();
        match crate::from_host_config::<P>() {
            Ok(p) => requirements(p.requirements()),
            // a policy whose config is bad fails at `select`, where it can say so
            Err(_) => requirements(Requirements::default()),
        }
    }

    fn select(
        devices: Vec<bindings::ota::policy::types::Device>,
    ) -> Result<Vec<bool>, bindings::ota::policy::types::PolicyError> {
        install_panic_hook();
        let n = devices.len();
        let devices: Vec<Device> = devices.into_iter().map(device).collect();
        crate::from_host_config::<P>()
            .and_then(|p| p.select(&devices))
            .and_then(|out| crate::check_len(out, n, "select"))
            .map_err(err)
    }
}

#[cfg(feature = "approval")]
impl<P: crate::ApprovalPolicy> bindings::exports::ota::policy::approval::Guest for Adapter<P> {
    fn requirements() -> bindings::ota::policy::types::DeviceFields {
        install_panic_hook();
        match crate::from_host_config::<P>() {
            Ok(p) => requirements(p.requirements()),
            Err(_) => requirements(Requirements::default()),
        }
    }

    fn approve(
        now_ms: u64,
        tasks: Vec<bindings::exports::ota::policy::approval::Task>,
    ) -> Result<
        Vec<bindings::exports::ota::policy::approval::Verdict>,
        bindings::ota::policy::types::PolicyError,
    > {
        use bindings::exports::ota::policy::approval::Verdict as V;
        install_panic_hook();
        let n = tasks.len();
        let tasks: Vec<crate::Task> = tasks
            .into_iter()
            .map(|t| crate::Task {
                id: t.id,
                device: device(t.device),
                rollout_id: t.rollout_id,
                from_version: t.from_version,
                to_version: t.to_version,
                attempt: t.attempt,
            })
            .collect();
        let out = crate::from_host_config::<P>()
            .and_then(|p| p.approve(now_ms, &tasks))
            .and_then(|out| crate::check_len(out, n, "approve"))
            .map_err(err)?;
        Ok(out
            .into_iter()
            .map(|v| match v {
                Verdict::Approve => V::Approve,
                Verdict::Defer(s) => V::Defer(s),
                Verdict::Reject(r) => V::Reject(r),
            })
            .collect())
    }
}

#[cfg(feature = "rate")]
impl<P: crate::RatePolicy> bindings::exports::ota::policy::rate::Guest for Adapter<P> {
    fn tick(
        s: bindings::exports::ota::policy::rate::RolloutStats,
        state: Vec<u8>,
    ) -> Result<
        bindings::exports::ota::policy::rate::Decision,
        bindings::ota::policy::types::PolicyError,
    > {
        use bindings::exports::ota::policy::rate as wit;
        install_panic_hook();
        let stats = crate::RolloutStats {
            waiting: s.waiting,
            releasable: s.releasable,
            pending: s.pending,
            pushed: s.pushed,
            in_progress: s.in_progress,
            succeeded: s.succeeded,
            failed: s.failed,
            timed_out: s.timed_out,
            rejected: s.rejected,
            cancelled: s.cancelled,
            released_total: s.released_total,
            now_ms: s.now_ms,
            elapsed_ms: s.elapsed_ms,
            window_ms: s.window_ms,
            tick_ms: s.tick_ms,
        };
        let (action, state) = crate::from_host_config::<P>()
            .and_then(|p| crate::run_tick(&p, &stats, &state))
            .map_err(err)?;
        Ok(wit::Decision {
            action: match action {
                crate::Action::Release(n) => wit::Action::Release(n),
                crate::Action::Pause(r) => wit::Action::Pause(r),
                crate::Action::Abort(r) => wit::Action::Abort(r),
            },
            state,
        })
    }
}
