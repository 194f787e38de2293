//! A replay's workloads on the step grid: usage, requests, releases and running replicas per
//! workload and step, the form the scale-up model and the slot simulator read.

use crate::{scale_events, Change, Placeholder, ReplicaModel, ScaleEvent, Workload};

/// Per workload and step (index `[w][i]`): usage, requests made at the step, releases and
/// the replicas running after the step's changes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTrace {
    /// Seconds per step.
    pub step_s: i64,
    /// Unix seconds of step 0 (time of day and weekday are read from it).
    pub origin_s: i64,
    /// Workload ids.
    pub ids: Vec<String>,
    /// One replica of each workload.
    pub sizes: Vec<Placeholder>,
    /// CPU use, millicores (NaN: no sample).
    pub cpu: Vec<Vec<f64>>,
    /// Requests (one replica each) made at the step.
    pub ups: Vec<Vec<u32>>,
    /// Replicas released at the step.
    pub downs: Vec<Vec<u32>>,
    /// Replicas running after the step's requests and releases.
    pub running: Vec<Vec<u32>>,
}

impl StepTrace {
    /// The trace of `workloads` served by `models`, from the requests and releases that
    /// [`scale_events`] makes of them; `origin_s` is the Unix time of the first step.
    pub fn new(
        workloads: &[Workload],
        models: &[ReplicaModel],
        step_s: i64,
        origin_s: i64,
    ) -> Self {
        let events = scale_events(workloads, step_s, models);
        Self::from_events(workloads, models, &events, step_s, origin_s)
    }

    /// As [`StepTrace::new`], from events already computed.
    pub fn from_events(
        workloads: &[Workload],
        models: &[ReplicaModel],
        events: &[ScaleEvent],
        step_s: i64,
        origin_s: i64,
    ) -> Self {
        let steps = workloads
            .iter()
            .map(|w| w.cpu_millicores.len())
            .max()
            .unwrap_or(0);
        let n = workloads.len();
        let mut ups = vec![vec![0u32; steps]; n];
        let mut downs = vec![vec![0u32; steps]; n];
        for e in events {
            let i = (e.t_s / step_s) as usize;
            if i >= steps {
                continue;
            }
            match e.change {
                Change::Up => ups[e.workload][i] += 1,
                Change::Down => downs[e.workload][i] += 1,
            }
        }
        let running = workloads
            .iter()
            .zip(models)
            .enumerate()
            .map(|(w, (wl, m))| {
                // Before the first sample nothing runs; from it, the replicas it needs (the
                // replicas running at the start are a given, as in `scale_events`).
                let first = wl.cpu_millicores.iter().position(|c| c.is_finite());
                let mut run = 0i64;
                (0..steps)
                    .map(|i| {
                        if Some(i) == first {
                            run = i64::from(m.needed(wl.cpu_millicores[i]));
                        }
                        run += i64::from(ups[w][i]) - i64::from(downs[w][i]);
                        run.max(0) as u32
                    })
                    .collect()
            })
            .collect();
        Self {
            step_s,
            origin_s,
            ids: workloads.iter().map(|w| w.id.clone()).collect(),
            sizes: models
                .iter()
                .map(|m| Placeholder {
                    cpu_millicores: m.cpu_millicores,
                    memory_bytes: m.memory_bytes,
                })
                .collect(),
            cpu: workloads.iter().map(|w| w.cpu_millicores.clone()).collect(),
            ups,
            downs,
            running,
        }
    }

    /// Steps in the trace.
    pub fn steps(&self) -> usize {
        self.cpu.first().map_or(0, Vec::len)
    }

    /// Workloads in the trace.
    pub fn workloads(&self) -> usize {
        self.cpu.len()
    }

    /// Requests over the whole trace.
    pub fn requests(&self) -> u64 {
        self.ups.iter().flatten().map(|u| u64::from(*u)).sum()
    }

    /// CPU the workloads used, core-seconds, at step `i`.
    pub fn used_core_s(&self, i: usize) -> f64 {
        self.cpu
            .iter()
            .map(|c| c[i])
            .filter(|c| c.is_finite())
            .map(|c| c / 1000.0 * self.step_s as f64)
            .sum()
    }

    /// `self` followed by `next` (the same workloads, `next` starting where `self` ends): the
    /// history and the live week as one causal timeline for the scale-up model.
    pub fn then(&self, next: &StepTrace) -> StepTrace {
        fn cat<T: Clone>(a: &[Vec<T>], b: &[Vec<T>]) -> Vec<Vec<T>> {
            a.iter()
                .zip(b)
                .map(|(x, y)| [x.as_slice(), y].concat())
                .collect()
        }
        StepTrace {
            step_s: self.step_s,
            origin_s: self.origin_s,
            ids: self.ids.clone(),
            sizes: self.sizes.clone(),
            cpu: cat(&self.cpu, &next.cpu),
            ups: cat(&self.ups, &next.ups),
            downs: cat(&self.downs, &next.downs),
            running: cat(&self.running, &next.running),
        }
    }

    /// Steps `range` of the trace (the live part of a joined timeline, a window before now).
    pub fn slice(&self, range: std::ops::Range<usize>) -> StepTrace {
        fn cut<T: Clone>(a: &[Vec<T>], r: &std::ops::Range<usize>) -> Vec<Vec<T>> {
            a.iter().map(|x| x[r.clone()].to_vec()).collect()
        }
        StepTrace {
            step_s: self.step_s,
            origin_s: self.origin_s + range.start as i64 * self.step_s,
            ids: self.ids.clone(),
            sizes: self.sizes.clone(),
            cpu: cut(&self.cpu, &range),
            ups: cut(&self.ups, &range),
            downs: cut(&self.downs, &range),
            running: cut(&self.running, &range),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_replicas_follow_requests_and_releases() {
        let m = ReplicaModel {
            cpu_millicores: 1_000.0,
            memory_bytes: 1.0,
            stabilization_s: 300,
            tolerance: 0.0,
        };
        let w = Workload {
            id: "w".into(),
            cpu_millicores: vec![f64::NAN, 900.0, 2_500.0, 2_500.0, 900.0, 900.0, 900.0],
            memory_bytes: vec![0.0; 7],
        };
        let t = StepTrace::new(&[w], &[m], 300, 0);
        assert_eq!(t.ups[0], vec![0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(t.downs[0], vec![0, 0, 0, 0, 0, 2, 0]);
        assert_eq!(t.running[0], vec![0, 1, 3, 3, 3, 1, 1]);
        assert_eq!(t.requests(), 2);
        let joined = t.then(&t);
        assert_eq!(joined.steps(), 14);
        let back = joined.slice(7..14);
        assert_eq!(
            (back.origin_s, &back.ups, &back.running),
            (2_100, &t.ups, &t.running)
        );
        assert!((t.used_core_s(2) - 2.5 * 300.0).abs() < 1e-9);
    }
}
