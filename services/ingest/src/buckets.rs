//! Time buckets of usage samples: out-of-order and late samples are accepted while their
//! bucket is open, a bucket closes when the partition's event-time watermark passes its end
//! plus the allowed lateness (or its partition has been idle for a while, or a driven clock
//! passed it: every partition's watermark is at least the clock), and duplicates and
//! samples for closed buckets are refused with the reason. Offsets of samples held in open
//! buckets are not committable, so that a restart reads them again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use umbra_schemas::{Stats, UsagePoint, UsageSample};

#[derive(Debug, Default)]
struct Acc {
    partition: i32,
    times: BTreeSet<i64>,
    cpu: Vec<f64>,
    memory: Vec<f64>,
    disk: Vec<f64>,
    offsets: Vec<i64>,
    labels: std::collections::HashMap<String, String>,
    cpu_capacity: f64,
    memory_capacity: f64,
}

/// Mean, 95th percentile (nearest rank) and maximum of `v` (not empty).
pub fn stats(v: &[f64]) -> Stats {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
    Stats {
        mean: s.iter().sum::<f64>() / n as f64,
        p95: s[rank - 1],
        max: s[n - 1],
    }
}

/// Open buckets and watermarks.
#[derive(Debug)]
pub struct Bucketer {
    width_ms: i64,
    lateness_ms: i64,
    open: BTreeMap<(String, i64), Acc>,
    /// Highest sample time seen, per partition.
    watermark: HashMap<i32, i64>,
    /// Offsets held by open buckets, per partition (offset → samples at it).
    held: HashMap<i32, BTreeMap<i64, usize>>,
    /// Wall-clock time of the last sample, per partition.
    last_seen: HashMap<i32, i64>,
    /// The driven clock's time ([`Bucketer::advance`]): a floor of every partition's
    /// watermark, so that a partition whose samples stopped still closes its buckets.
    clock_watermark: i64,
}

impl Bucketer {
    /// Buckets of `width_s` seconds, samples accepted up to `lateness_ms` behind the watermark.
    pub fn new(width_s: i32, lateness_ms: i64) -> Self {
        Self {
            width_ms: i64::from(width_s.max(1)) * 1000,
            lateness_ms: lateness_ms.max(0),
            open: BTreeMap::new(),
            watermark: HashMap::new(),
            held: HashMap::new(),
            last_seen: HashMap::new(),
            clock_watermark: i64::MIN,
        }
    }

    /// Open buckets.
    pub fn open_buckets(&self) -> usize {
        self.open.len()
    }

    /// Adds a (valid) sample read at (`partition`, `offset`); returns the buckets it closes,
    /// or why it is refused.
    pub fn add(
        &mut self,
        partition: i32,
        offset: i64,
        s: &UsageSample,
        wall_ms: i64,
    ) -> Result<Vec<UsagePoint>, String> {
        let start = s.sample_time.div_euclid(self.width_ms) * self.width_ms;
        let wm = self
            .watermark
            .get(&partition)
            .copied()
            .unwrap_or(i64::MIN)
            .max(self.clock_watermark);
        if start.saturating_add(self.width_ms + self.lateness_ms) <= wm {
            return Err(format!(
                "sample at {} is too late: its bucket [{start}, {}) closed when the stream reached {wm} (allowed lateness {} ms)",
                s.sample_time,
                start + self.width_ms,
                self.lateness_ms
            ));
        }
        let acc = self.open.entry((s.workload_id.clone(), start)).or_default();
        if !acc.times.insert(s.sample_time) {
            return Err(format!(
                "duplicate sample for {} at {}",
                s.workload_id, s.sample_time
            ));
        }
        acc.partition = partition;
        acc.cpu.push(s.cpu_millicores);
        acc.memory.push(s.memory_bytes);
        acc.disk
            .push(s.disk_read_bytes_per_s + s.disk_write_bytes_per_s);
        acc.offsets.push(offset);
        acc.labels.clone_from(&s.labels);
        acc.cpu_capacity = acc.cpu_capacity.max(s.cpu_capacity_millicores);
        acc.memory_capacity = acc.memory_capacity.max(s.memory_capacity_bytes);
        *self
            .held
            .entry(partition)
            .or_default()
            .entry(offset)
            .or_default() += 1;
        self.last_seen.insert(partition, wall_ms);
        let wm = wm.max(s.sample_time);
        self.watermark.insert(partition, wm);
        Ok(
            self.close(|p, start, width, lateness| {
                p == partition && start + width + lateness <= wm
            }),
        )
    }

    /// The driven clock stands at `clock_ms` and every sample before it has been sent: the
    /// buckets that end, with the lateness, by then close on every partition, and a sample
    /// for one of them later is too late.
    pub fn advance(&mut self, clock_ms: i64) -> Vec<UsagePoint> {
        self.clock_watermark = self.clock_watermark.max(clock_ms);
        let wm = self.clock_watermark;
        self.close(|_, start, width, lateness| start + width + lateness <= wm)
    }

    /// Closes the buckets of partitions idle (no sample) for `idle_ms` of wall-clock time.
    pub fn flush_idle(&mut self, wall_ms: i64, idle_ms: i64) -> Vec<UsagePoint> {
        let idle: Vec<i32> = self
            .last_seen
            .iter()
            .filter(|(_, t)| wall_ms - **t >= idle_ms)
            .map(|(p, _)| *p)
            .collect();
        if idle.is_empty() {
            return Vec::new();
        }
        self.close(|p, _, _, _| idle.contains(&p))
    }

    fn close(&mut self, done: impl Fn(i32, i64, i64, i64) -> bool) -> Vec<UsagePoint> {
        let keys: Vec<(String, i64)> = self
            .open
            .iter()
            .filter(|(k, a)| done(a.partition, k.1, self.width_ms, self.lateness_ms))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(a) = self.open.remove(&k) else {
                continue;
            };
            if let Some(h) = self.held.get_mut(&a.partition) {
                for o in &a.offsets {
                    if let Some(n) = h.get_mut(o) {
                        *n -= 1;
                        if *n == 0 {
                            h.remove(o);
                        }
                    }
                }
            }
            out.push(UsagePoint {
                workload_id: k.0,
                bucket_start: k.1,
                bucket_seconds: (self.width_ms / 1000) as i32,
                sample_count: a.cpu.len() as i32,
                cpu_millicores: stats(&a.cpu),
                memory_bytes: stats(&a.memory),
                disk_io_bytes_per_s: stats(&a.disk),
                labels: a.labels,
                cpu_capacity_millicores: a.cpu_capacity,
                memory_capacity_bytes: a.memory_capacity,
            });
        }
        out
    }

    /// The highest offset of `partition` below every sample still held in an open bucket.
    pub fn committable(&self, partition: i32, processed: i64) -> Option<i64> {
        match self.held.get(&partition).and_then(|h| h.keys().next()) {
            None => Some(processed),
            Some(first) if *first > 0 => Some((*first - 1).min(processed)),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use umbra_schemas::Record;

    fn sample(w: &str, t: i64, cpu: f64) -> UsageSample {
        UsageSample {
            workload_id: w.into(),
            sample_time: t,
            cpu_millicores: cpu,
            ..UsageSample::example()
        }
    }

    const T: i64 = 1_372_636_800_000;

    #[test]
    fn buckets_close_behind_the_watermark_and_late_or_duplicate_samples_are_refused() {
        let mut b = Bucketer::new(300, 60_000);
        assert!(b
            .add(0, 0, &sample("a", T + 10_000, 100.0), 0)
            .unwrap()
            .is_empty());
        // Out of order within the bucket: accepted.
        assert!(b
            .add(0, 1, &sample("a", T + 5_000, 300.0), 0)
            .unwrap()
            .is_empty());
        assert!(b
            .add(0, 2, &sample("a", T + 5_000, 300.0), 0)
            .unwrap_err()
            .contains("duplicate sample for a"));
        assert_eq!(
            b.committable(0, 2),
            None,
            "offset 0 is held by the open bucket"
        );
        // The next bucket, but within the lateness: the first stays open.
        assert!(b
            .add(0, 3, &sample("a", T + 330_000, 200.0), 0)
            .unwrap()
            .is_empty());
        // Past its end + lateness: it closes with its two samples.
        let closed = b.add(0, 4, &sample("a", T + 360_000, 200.0), 0).unwrap();
        assert_eq!(closed.len(), 1);
        let p = &closed[0];
        assert_eq!((p.bucket_start, p.sample_count), (T, 2));
        assert_eq!(
            (
                p.cpu_millicores.mean,
                p.cpu_millicores.p95,
                p.cpu_millicores.max
            ),
            (200.0, 300.0, 300.0)
        );
        assert_eq!(
            b.committable(0, 4),
            Some(2),
            "offsets 3 and 4 are still held"
        );
        let late = b.add(0, 5, &sample("a", T + 1_000, 1.0), 0).unwrap_err();
        assert!(late.contains("too late"), "{late}");
        // A driven clock closes what ends by it on every partition, and what comes for a
        // bucket it closed is too late.
        let mut c = Bucketer::new(300, 0);
        c.add(0, 1, &sample("a", T + 10_000, 100.0), 0).unwrap();
        c.add(1, 1, &sample("b", T + 310_000, 100.0), 0).unwrap();
        assert!(c.advance(T + 299_999).is_empty(), "no bucket ends by then");
        let closed = c.advance(T + 300_000);
        assert_eq!(
            closed.len(),
            1,
            "partition 0's bucket, though its stream stopped"
        );
        assert_eq!(
            (closed[0].workload_id.as_str(), closed[0].bucket_start),
            ("a", T)
        );
        assert!(c
            .add(0, 2, &sample("a", T + 20_000, 1.0), 0)
            .unwrap_err()
            .contains("too late"));
        assert_eq!(c.open_buckets(), 1, "partition 1's next bucket stays open");

        // An idle partition flushes.
        assert_eq!(b.flush_idle(1_000, 5_000).len(), 0);
        assert_eq!(b.flush_idle(5_000, 5_000).len(), 1);
        assert_eq!(b.committable(0, 5), Some(5));
    }

    proptest! {
        /// Every accepted sample ends in exactly one emitted bucket once everything is flushed,
        /// and the committable offset never passes a sample still held.
        #[test]
        fn accepted_samples_are_all_accounted_for(
            samples in proptest::collection::vec((0u8..3, 0i64..3_600_000, 0.0f64..1e4, 0i32..2), 1..200),
        ) {
            let mut b = Bucketer::new(300, 120_000);
            let mut accepted = 0i32;
            let mut emitted = 0i32;
            for (i, (w, t, cpu, p)) in samples.iter().enumerate() {
                let s = sample(&format!("w{w}-{p}"), T + t, *cpu);
                if let Ok(points) = b.add(*p, i as i64, &s, 0) {
                    accepted += 1;
                    for pt in points {
                        emitted += pt.sample_count;
                        prop_assert!(pt.cpu_millicores.mean <= pt.cpu_millicores.max + 1e-9);
                        prop_assert!(pt.cpu_millicores.p95 <= pt.cpu_millicores.max);
                    }
                }
                for part in 0..2 {
                    if let Some(c) = b.committable(part, i as i64) {
                        let open_min = b.held.get(&part).and_then(|h| h.keys().next().copied());
                        if let Some(m) = open_min { prop_assert!(c < m); }
                    }
                }
            }
            for pt in b.flush_idle(1, 0) {
                emitted += pt.sample_count;
            }
            prop_assert_eq!(accepted, emitted);
            prop_assert_eq!(b.open_buckets(), 0);
        }
    }
}
