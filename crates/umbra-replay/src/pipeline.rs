//! umbra's own row of the comparison, from what the pipeline decided: the same arithmetic
//! the offline baselines get (`result` in the crate root), so that the rows compare.

use crate::report::{DecisionCounts, PolicyRow};
use crate::{hit_rate, percentile};

/// How the pipeline decided a request (its first decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// Placed at once on a ready shadow or pool slot.
    Hit,
    /// Placed by standard allocation once the fleet admitted it.
    Standard,
    /// Refused, with a reason.
    Rejected,
    /// An outcome this replay does not know (a newer writer's enum symbol).
    Other,
}

/// What the pipeline did with one request of the trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestFate {
    /// Its first decision.
    pub decided: Decided,
    /// Trace milliseconds from the request to its first decision.
    pub decided_after_ms: i64,
    /// How many decisions it got (more than one is a duplicate).
    pub decisions: usize,
}

/// What the replay measured of the pipeline beside the decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineRun {
    /// Trace milliseconds per wall millisecond of the decisions' clock (1 in lockstep, where
    /// decision latency in trace time is zero anyway).
    pub speed: f64,
    /// Seconds a standard placement waits to start (the fleet's start-up delay).
    pub startup_s: f64,
    /// Per step: cores and GiB held in shadows and pool slots and not used.
    pub reserved: Vec<(f64, f64)>,
    /// Seconds per step.
    pub step_s: i64,
    /// Core-hours the workloads used.
    pub used_core_hours: f64,
    /// Host-steps over capacity.
    pub overload_steps: usize,
    /// Shadows moved off overloaded hosts.
    pub rebalances: usize,
    /// Shadows and slots given up to standard allocation.
    pub preempted_shadows: usize,
}

/// umbra's row and the decision counts, from each request's fate (`None`: never decided).
/// A hit starts at once (its decision latency); a standard placement waits the start-up delay
/// as well; a rejected or undecided request has no placement delay.
pub fn umbra_row(fates: &[Option<RequestFate>], run: &PipelineRun) -> (PolicyRow, DecisionCounts) {
    let speed = if run.speed > 0.0 { run.speed } else { 1.0 };
    let latency_s = |f: &RequestFate| f.decided_after_ms.max(0) as f64 / speed / 1000.0;
    let (mut hits, mut decided, mut duplicated, mut rejected) = (0, 0, 0, 0);
    let mut delays = Vec::new();
    let mut behind = Vec::new();
    for f in fates.iter().flatten() {
        decided += 1;
        duplicated += usize::from(f.decisions > 1);
        behind.push(f.decided_after_ms.max(0) as f64 / 60_000.0);
        match f.decided {
            Decided::Hit => {
                hits += 1;
                delays.push(latency_s(f));
            }
            Decided::Standard => delays.push(latency_s(f) + run.startup_s),
            Decided::Rejected => rejected += 1,
            Decided::Other => {}
        }
    }
    let requests = fates.len();
    let step_h = run.step_s as f64 / 3600.0;
    let row = PolicyRow {
        policy: "umbra".into(),
        requests,
        hits,
        hit_rate: hit_rate(hits, requests),
        placement_delay_p50_s: percentile(&mut delays.clone(), 0.5),
        placement_delay_p99_s: percentile(&mut delays, 0.99),
        used_core_hours: run.used_core_hours,
        unclaimed_core_hours: run.reserved.iter().map(|r| r.0).sum::<f64>() * step_h,
        unclaimed_gib_hours: run.reserved.iter().map(|r| r.1).sum::<f64>() * step_h,
        overload_minutes: run.overload_steps as f64 * run.step_s as f64 / 60.0,
        rebalances: run.rebalances,
        rejected,
        undecided: requests - decided,
    };
    let counts = DecisionCounts {
        requests,
        decided,
        duplicated,
        behind_trace_minutes_p50: percentile(&mut behind.clone(), 0.5),
        behind_trace_minutes_p99: percentile(&mut behind, 0.99),
        preempted_shadows: run.preempted_shadows,
    };
    (row, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fate(decided: Decided, after_ms: i64, decisions: usize) -> Option<RequestFate> {
        Some(RequestFate {
            decided,
            decided_after_ms: after_ms,
            decisions,
        })
    }

    fn run() -> PipelineRun {
        PipelineRun {
            speed: 1.0,
            startup_s: 30.0,
            reserved: vec![(2.0, 1.0), (1.0, 0.5)],
            step_s: 300,
            used_core_hours: 10.0,
            overload_steps: 3,
            rebalances: 1,
            preempted_shadows: 2,
        }
    }

    #[test]
    fn every_request_counts_once_whatever_became_of_it() {
        let fates = [
            fate(Decided::Hit, 0, 1),
            fate(Decided::Standard, 1_000, 2),
            fate(Decided::Rejected, 0, 1),
            None,
        ];
        let (row, counts) = umbra_row(&fates, &run());
        assert_eq!(
            (row.requests, row.hits, row.rejected, row.undecided),
            (4, 1, 1, 1)
        );
        // The hit rate is over every request, the undecided and rejected ones included.
        assert_eq!(row.hit_rate, 0.25);
        assert_eq!((counts.decided, counts.duplicated), (3, 1));
        assert_eq!(counts.preempted_shadows, 2);
    }

    #[test]
    fn a_standard_placement_waits_the_start_up_delay_and_a_hit_does_not() {
        let fates = [
            fate(Decided::Hit, 500, 1),
            fate(Decided::Standard, 2_000, 1),
        ];
        let (row, _) = umbra_row(&fates, &run());
        // Delays: 0.5 s for the hit, 2 s + 30 s for the standard placement.
        assert_eq!(row.placement_delay_p50_s, 32.0);
        assert_eq!(row.placement_delay_p99_s, 32.0);
        let (hit_only, _) = umbra_row(&fates[..1], &run());
        assert_eq!(hit_only.placement_delay_p50_s, 0.5);
    }

    #[test]
    fn a_compressed_clock_turns_trace_latency_into_wall_seconds() {
        let fates = [fate(Decided::Hit, 60_000, 1)];
        let fast = PipelineRun {
            speed: 60.0,
            ..run()
        };
        let (row, counts) = umbra_row(&fates, &fast);
        assert_eq!(row.placement_delay_p50_s, 1.0);
        // How far behind the trace stays in trace minutes.
        assert_eq!(counts.behind_trace_minutes_p50, 1.0);
    }

    #[test]
    fn reserve_is_summed_over_steps_in_hours() {
        let (row, _) = umbra_row(&[], &run());
        // (2 + 1) cores over 5-minute steps: 0.25 core-hours; (1 + 0.5) GiB: 0.125 GiB-hours.
        assert_eq!(row.unclaimed_core_hours, 0.25);
        assert_eq!(row.unclaimed_gib_hours, 0.125);
        assert_eq!(row.overload_minutes, 15.0);
        assert_eq!((row.requests, row.hit_rate, row.undecided), (0, 0.0, 0));
    }
}
