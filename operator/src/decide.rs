//! The reconciler's decision, free of I/O: from what is observed (the resource, whether the
//! target version's data service and the reports Deployment are ready, the time) to the status
//! to write, the event to emit and when to look again. Everything the operator promises is
//! decided here, and tested here.

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::crd::{ReportVersionStatus, Version};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What the reconciler saw.
#[derive(Debug, Clone)]
pub struct Observed {
    pub generation: i64,
    pub desired: Version,
    pub status: ReportVersionStatus,
    /// The desired version's data service has ready replicas.
    pub target_ready: bool,
    /// The reports Deployment, which serves the version, has ready replicas.
    pub reports_ready: bool,
    pub now: Timestamp,
}

/// A Kubernetes Event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: ReportVersionStatus,
    pub notice: Option<Notice>,
    /// Look again after this long even if nothing changes (waiting for a target, or for the
    /// moment the wait becomes too long).
    pub requeue: Option<Duration>,
}

/// How often a waiting switch is re-examined besides the Deployment watch.
const WAIT_POLL: Duration = Duration::from_secs(5);

pub fn decide(observed: &Observed, progress_deadline: Duration) -> Decision {
    let Observed {
        generation,
        desired,
        status,
        target_ready,
        reports_ready,
        now,
    } = observed;
    let previous = status;
    let mut next = previous.clone();
    next.observed_generation = Some(*generation);
    let active = previous.active_version;

    if active == Some(*desired) {
        serving(&mut next, *generation, now, *desired);
        return Decision {
            status: next,
            notice: None,
            requeue: None,
        };
    }

    // A version is promoted only once it can be served: its data service (legacy reporting's
    // `datos`) and the replicas that serve it.
    if *target_ready && *reports_ready {
        next.active_version = Some(*desired);
        next.switched_at = Some(rfc3339_seconds(*now));
        serving(&mut next, *generation, now, *desired);
        let note = match active {
            Some(from) => format!(
                "Versión cambiada de {} a {}",
                from.as_str(),
                desired.as_str()
            ),
            None => format!("Sirviendo la versión {}", desired.as_str()),
        };
        return Decision {
            status: next,
            notice: Some(Notice {
                warning: false,
                reason: "Switched",
                note,
            }),
            requeue: None,
        };
    }

    // The target cannot serve yet: keep serving what is active, say why, and give up
    // (Degraded) after the deadline, still serving the old version.
    let serving = active.map_or_else(|| "ninguna".to_owned(), |v| v.as_str().to_owned());
    let (reason, blocker) = if *target_ready {
        ("WaitingForReports", "reports".to_owned())
    } else {
        (
            "WaitingForDataService",
            format!("data-service-{}", desired.as_str()),
        )
    };
    let waiting =
        format!("Esperando a que {blocker} tenga réplicas listas; se sigue sirviendo {serving}");
    set(
        &mut next,
        *generation,
        now,
        PROGRESSING,
        true,
        reason,
        &waiting,
    );
    set(
        &mut next,
        *generation,
        now,
        READY,
        false,
        "Switching",
        &waiting,
    );
    let waiting_since = condition(&next, PROGRESSING).map_or(*now, |c| c.last_transition_time.0);
    let waited = Duration::try_from(now.duration_since(waiting_since)).unwrap_or_default();
    if waited >= progress_deadline {
        let was_degraded = condition(previous, DEGRADED).is_some_and(|c| c.status == "True");
        let message = format!(
            "{blocker} no estuvo listo en {} s; se sigue sirviendo {serving}",
            progress_deadline.as_secs()
        );
        set(
            &mut next,
            *generation,
            now,
            DEGRADED,
            true,
            "TargetNotReady",
            &message,
        );
        let notice = (!was_degraded).then_some(Notice {
            warning: true,
            reason: "Degraded",
            note: message,
        });
        return Decision {
            status: next,
            notice,
            requeue: Some(WAIT_POLL),
        };
    }
    set(
        &mut next,
        *generation,
        now,
        DEGRADED,
        false,
        "Waiting",
        "Dentro del plazo de espera",
    );
    let first_wait = condition(previous, PROGRESSING).is_none_or(|c| c.status != "True");
    let notice = first_wait.then_some(Notice {
        warning: false,
        reason: "Waiting",
        note: waiting,
    });
    let until_deadline = progress_deadline.saturating_sub(waited);
    Decision {
        status: next,
        notice,
        requeue: Some(WAIT_POLL.min(until_deadline.max(Duration::from_millis(100)))),
    }
}

/// The conditions of a resource serving the version it asks for. The same after a switch and
/// on every later pass, so a steady resource's status never changes (no write, no churn).
fn serving(status: &mut ReportVersionStatus, generation: i64, now: &Timestamp, version: Version) {
    let message = format!("Sirviendo la versión {}", version.as_str());
    set(status, generation, now, READY, true, "Serving", &message);
    set(
        status,
        generation,
        now,
        PROGRESSING,
        false,
        "Stable",
        "No hay cambio de versión en curso",
    );
    set(
        status,
        generation,
        now,
        DEGRADED,
        false,
        "Healthy",
        "La versión activa está disponible",
    );
}

/// `2026-11-28T06:22:56Z`: the precision of `switchedAt` in API.md §8.
fn rfc3339_seconds(now: Timestamp) -> String {
    Timestamp::from_second(now.as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now.to_string())
}

fn condition<'a>(status: &'a ReportVersionStatus, kind: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == kind)
}

/// Whether `status` says `Degraded`.
pub fn is_degraded(status: &ReportVersionStatus) -> bool {
    condition(status, DEGRADED).is_some_and(|c| c.status == "True")
}

/// Sets a condition; `lastTransitionTime` moves only when its status flips (metav1 semantics).
fn set(
    status: &mut ReportVersionStatus,
    generation: i64,
    now: &Timestamp,
    kind: &str,
    value: bool,
    reason: &str,
    message: &str,
) {
    let value = if value { "True" } else { "False" };
    let transition = match condition(status, kind) {
        Some(existing) if existing.status == value => existing.last_transition_time.clone(),
        _ => Time(*now),
    };
    status.conditions.retain(|c| c.type_ != kind);
    status.conditions.push(Condition {
        type_: kind.to_owned(),
        status: value.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: Some(generation),
        last_transition_time: transition,
    });
    status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn observe(
        status: &ReportVersionStatus,
        desired: Version,
        ready: bool,
        now: Timestamp,
    ) -> Observed {
        Observed {
            generation: 2,
            desired,
            status: status.clone(),
            target_ready: ready,
            reports_ready: true,
            now,
        }
    }

    fn cond<'a>(status: &'a ReportVersionStatus, kind: &str) -> &'a str {
        condition(status, kind).map_or("absent", |c| c.status.as_str())
    }

    const DEADLINE: Duration = Duration::from_secs(60);

    #[test]
    fn a_new_resource_becomes_ready_when_its_target_is() {
        let d = decide(
            &observe(&ReportVersionStatus::default(), Version::V1, true, at(0)),
            DEADLINE,
        );
        assert_eq!(d.status.active_version, Some(Version::V1));
        assert_eq!(
            (
                cond(&d.status, READY),
                cond(&d.status, PROGRESSING),
                cond(&d.status, DEGRADED)
            ),
            ("True", "False", "False")
        );
        assert_eq!(d.status.observed_generation, Some(2));
        assert!(d.status.switched_at.is_some());
        assert_eq!(d.notice.as_ref().map(|n| n.reason), Some("Switched"));
    }

    #[test]
    fn a_switch_waits_for_the_target_keeps_the_old_version_and_then_switches() {
        let serving_v1 = decide(
            &observe(&ReportVersionStatus::default(), Version::V1, true, at(0)),
            DEADLINE,
        )
        .status;
        let waiting = decide(&observe(&serving_v1, Version::V2, false, at(10)), DEADLINE);
        assert_eq!(
            waiting.status.active_version,
            Some(Version::V1),
            "never serves a version that is not ready"
        );
        assert_eq!(
            (
                cond(&waiting.status, READY),
                cond(&waiting.status, PROGRESSING)
            ),
            ("False", "True")
        );
        assert_eq!(cond(&waiting.status, DEGRADED), "False");
        assert_eq!(waiting.notice.as_ref().map(|n| n.reason), Some("Waiting"));
        assert!(waiting.requeue.is_some());

        let still = decide(
            &observe(&waiting.status, Version::V2, false, at(20)),
            DEADLINE,
        );
        assert_eq!(still.notice, None, "no event for every poll");
        assert_eq!(
            condition(&still.status, PROGRESSING)
                .unwrap()
                .last_transition_time
                .0,
            at(10)
        );

        let switched = decide(&observe(&still.status, Version::V2, true, at(30)), DEADLINE);
        assert_eq!(switched.status.active_version, Some(Version::V2));
        assert_eq!(cond(&switched.status, READY), "True");
        assert_eq!(switched.notice.unwrap().note, "Versión cambiada de v1 a v2");
        assert_eq!(
            switched.status.switched_at.as_deref(),
            Some("2027-01-15T08:00:30Z")
        );
    }

    #[test]
    fn a_target_that_never_becomes_ready_degrades_once_and_keeps_the_old_version() {
        let serving_v1 = decide(
            &observe(&ReportVersionStatus::default(), Version::V1, true, at(0)),
            DEADLINE,
        )
        .status;
        let waiting = decide(&observe(&serving_v1, Version::V2, false, at(10)), DEADLINE).status;
        let degraded = decide(&observe(&waiting, Version::V2, false, at(70)), DEADLINE);
        assert_eq!(cond(&degraded.status, DEGRADED), "True");
        assert_eq!(degraded.status.active_version, Some(Version::V1));
        assert!(
            degraded
                .notice
                .as_ref()
                .is_some_and(|n| n.warning && n.reason == "Degraded")
        );
        let again = decide(
            &observe(&degraded.status, Version::V2, false, at(80)),
            DEADLINE,
        );
        assert_eq!(again.notice, None, "the warning is emitted once");
        // Going back to the served version heals everything.
        let back = decide(
            &observe(&again.status, Version::V1, false, at(90)),
            DEADLINE,
        );
        assert_eq!(
            (
                cond(&back.status, READY),
                cond(&back.status, DEGRADED),
                cond(&back.status, PROGRESSING)
            ),
            ("True", "False", "False")
        );
    }

    #[test]
    fn a_switch_waits_for_the_reports_replicas_too() {
        let serving_v1 = decide(
            &observe(&ReportVersionStatus::default(), Version::V1, true, at(0)),
            DEADLINE,
        )
        .status;
        let no_reports = Observed {
            reports_ready: false,
            ..observe(&serving_v1, Version::V2, true, at(10))
        };
        let waiting = decide(&no_reports, DEADLINE);
        assert_eq!(waiting.status.active_version, Some(Version::V1));
        let progressing = condition(&waiting.status, PROGRESSING).unwrap();
        assert_eq!(progressing.reason, "WaitingForReports");
        assert!(
            progressing.message.contains("reports"),
            "{}",
            progressing.message
        );
        let degraded = decide(
            &Observed {
                reports_ready: false,
                ..observe(&waiting.status, Version::V2, true, at(80))
            },
            DEADLINE,
        );
        assert_eq!(cond(&degraded.status, DEGRADED), "True");
        assert!(
            degraded
                .notice
                .unwrap()
                .note
                .starts_with("reports no estuvo listo"),
            "names what it waited for"
        );
        let switched = decide(
            &observe(&waiting.status, Version::V2, true, at(20)),
            DEADLINE,
        );
        assert_eq!(switched.status.active_version, Some(Version::V2));
    }

    #[test]
    fn a_steady_resource_changes_nothing_but_observed_generation() {
        let serving = decide(
            &observe(&ReportVersionStatus::default(), Version::V2, true, at(0)),
            DEADLINE,
        )
        .status;
        let again = decide(&observe(&serving, Version::V2, true, at(100)), DEADLINE);
        assert_eq!(again.status, serving);
        assert_eq!(again.notice, None);
        assert_eq!(again.requeue, None);
    }
}
