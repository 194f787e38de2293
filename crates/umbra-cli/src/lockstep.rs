//! The lockstep replay's barrier (docs/replay.md): the trace clock of every service is driven
//! by the replay (`POST /clock`), and it moves on only once the pipeline has settled at the
//! current time: every service reports (`GET /progress`) every partition it reads taken up to
//! the end offsets read from the broker, with the outputs acknowledged and, for services that
//! act in passes, a pass at this time finished; and the end offsets did not move while the
//! reports were read. Results then depend on the trace and the seed, not on the machine.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use umbra_stream::config::KafkaSettings;
use umbra_stream::progress::Report;

type Ends = BTreeMap<String, BTreeMap<i32, i64>>;

/// The driven clock of a set of services and the barrier between its steps.
pub struct Lockstep {
    services: Vec<(String, String)>,
    http: reqwest::Client,
    consumer: std::sync::Arc<BaseConsumer>,
    partitions: TopicPartitionList,
    /// Barriers passed, and their wall time in all: the replay reports the cost of lockstep.
    pub settles: u64,
    /// Wall time spent waiting at barriers.
    pub waited: Duration,
    /// Barriers and wall time by what they wait for.
    pub by_kind: BTreeMap<&'static str, (u64, Duration)>,
    /// The barrier that took longest, and what it last waited for.
    pub slowest: Option<SlowBarrier>,
    /// Print every barrier slower than this (`umbra replay --trace-barriers-ms`), to find
    /// where a replay spends its time.
    pub trace_slower_than: Option<Duration>,
    trim: Option<Trim>,
    /// The latest mark sent to each service ([`Self::mark`]): a service acting on marks is
    /// behind until it has acted on its latest.
    marks: BTreeMap<String, i64>,
}

/// The retention of the replay's own broker: the trimmed topics (tables too) lose the
/// records every reader passed a trim period ago (docs/replay.md, *What it costs*).
struct Trim {
    admin: AdminClient<DefaultClientContext>,
    topics: std::collections::BTreeSet<String>,
    /// The end offsets at the last trim: the next trim deletes below them.
    mark: Option<Ends>,
    /// Records below the last cut, in all (what every trim so far deleted).
    deleted: i64,
}

/// A barrier's account: its kind, its clock time, how long it took, and what the last look
/// before it passed was still waiting for.
#[derive(Debug, Clone)]
pub struct SlowBarrier {
    /// What the barrier waited for (`samples`, `requests`...).
    pub kind: &'static str,
    /// Its trace time.
    pub now_ms: i64,
    /// Its wall time.
    pub took: Duration,
    /// Who or what was behind at the last look before it passed (`None`: settled at once).
    pub waiting_for: Option<String>,
}

impl Lockstep {
    /// `services`: (name, base URL of its HTTP endpoint); `topics`: every topic of the
    /// pipeline with its partitions.
    pub fn new(
        kafka: &KafkaSettings,
        services: Vec<(String, String)>,
        topics: &[(String, i32)],
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = umbra_stream::kafka::client_config(kafka)
            .create()
            .context("creating the lockstep's offsets client")?;
        let mut partitions = TopicPartitionList::new();
        for (t, n) in topics {
            for p in 0..*n {
                partitions
                    .add_partition_offset(t, p, Offset::End)
                    .context("listing the pipeline's partitions")?;
            }
        }
        Ok(Self {
            services,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            consumer: std::sync::Arc::new(consumer),
            partitions,
            settles: 0,
            waited: Duration::ZERO,
            by_kind: BTreeMap::new(),
            slowest: None,
            trace_slower_than: None,
            trim: None,
            marks: BTreeMap::new(),
        })
    }

    /// Trims `topics` at every [`Self::trim`]. Only for a broker of the replay's own: the
    /// topics are gone with it anyway, and the in-memory broker's fetch lists every batch
    /// of a partition, so a fetch costs more the longer the partition (docs/replay.md).
    pub fn trim_topics(
        &mut self,
        kafka: &KafkaSettings,
        topics: impl IntoIterator<Item = String>,
    ) -> anyhow::Result<()> {
        let admin = umbra_stream::kafka::client_config(kafka)
            .create()
            .context("creating the lockstep's admin client")?;
        self.trim = Some(Trim {
            admin,
            topics: topics.into_iter().collect(),
            mark: None,
            deleted: 0,
        });
        Ok(())
    }

    /// Records deleted by trims so far.
    pub fn trimmed(&self) -> i64 {
        self.trim.as_ref().map_or(0, |t| t.deleted)
    }

    /// Deletes the records of the trimmed topics below the end offsets of the trim before
    /// this one, and marks the end offsets now for the next. Called at a settled barrier,
    /// so every service's position is at the ends now; a trim period behind them, the
    /// replay's own followers are past the cut too.
    pub async fn trim(&mut self) -> anyhow::Result<()> {
        if self.trim.is_none() {
            return Ok(());
        }
        let ends = self.ends().await?;
        let Some(t) = self.trim.as_mut() else {
            return Ok(());
        };
        let Some(mark) = t.mark.replace(ends) else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        let mut cut = 0i64;
        for (topic, parts) in mark.iter().filter(|(n, _)| t.topics.contains(*n)) {
            for (p, end) in parts {
                if *end > 0 {
                    tpl.add_partition_offset(topic, *p, Offset::Offset(*end))
                        .context("listing the partitions to trim")?;
                    cut += end;
                }
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let done = t
            .admin
            .delete_records(&tpl, &opts)
            .await
            .context("trimming the replay's topics")?;
        for e in done.elements() {
            if let Err(err) = e.error() {
                bail!("trimming {}[{}] refused: {err}", e.topic(), e.partition());
            }
        }
        // Offsets below the cut: what was deleted at this trim and every one before.
        t.deleted = cut;
        Ok(())
    }

    /// Sets every service's clock to `now_ms`.
    pub async fn set_clock(&self, now_ms: i64) -> anyhow::Result<()> {
        self.post_clock(now_ms, false, |_| true).await
    }

    /// Declares the pipeline settled at `now_ms` (the clock's time) to `service`: a service
    /// acting on marks (the shadow manager, the rebalancer) acts then, on inputs that no
    /// longer move, and the next barrier waits until it has. Marks go to one service at a
    /// time so that two services acting on marks never act on the same inputs at once.
    async fn mark(&mut self, now_ms: i64, service: &str) -> anyhow::Result<()> {
        if !self.services.iter().any(|(n, _)| n == service) {
            bail!("no service '{service}' to mark");
        }
        self.post_clock(now_ms, true, |n| n == service).await?;
        self.marks.insert(service.to_string(), now_ms);
        Ok(())
    }

    /// [`Self::mark`] for one service, then the barrier (`kind`) that waits until it has
    /// acted on the mark and what that caused has settled.
    pub async fn mark_and_settle(
        &mut self,
        kind: &'static str,
        now_ms: i64,
        service: &str,
        timeout: Duration,
        alive: impl FnMut() -> Option<String>,
    ) -> anyhow::Result<()> {
        self.mark(now_ms, service).await?;
        self.settle(kind, now_ms, timeout, alive, || Ok(())).await
    }

    /// `POST /clock` to the services `to` selects: the clock at `now_ms`, declared settled or
    /// not.
    async fn post_clock(
        &self,
        now_ms: i64,
        settled: bool,
        to: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let body = serde_json::json!({ "now_ms": now_ms, "settled": settled });
        for (name, url) in self.services.iter().filter(|(n, _)| to(n)) {
            let r = self
                .http
                .post(format!("{url}/clock"))
                .json(&body)
                .send()
                .await
                .with_context(|| format!("setting the clock of {name} (settled: {settled})"))?;
            if !r.status().is_success() {
                bail!(
                    "{name} refused the clock (settled: {settled}): {}",
                    r.status()
                );
            }
        }
        Ok(())
    }

    /// The end offset of every partition of the pipeline, in one request per broker.
    async fn ends(&self) -> anyhow::Result<Ends> {
        let (consumer, tpl) = (self.consumer.clone(), self.partitions.clone());
        let got = tokio::task::spawn_blocking(move || {
            consumer.offsets_for_times(tpl, Duration::from_secs(10))
        })
        .await?
        .context("reading end offsets")?;
        let mut ends: Ends = BTreeMap::new();
        for e in got.elements() {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                // A partition with nothing written has no offset to report.
                _ => 0,
            };
            ends.entry(e.topic().to_string())
                .or_default()
                .insert(e.partition(), o);
        }
        Ok(ends)
    }

    async fn reports(&self) -> anyhow::Result<Vec<(String, Report)>> {
        let mut out = Vec::with_capacity(self.services.len());
        for (name, url) in &self.services {
            let r: Report = self
                .http
                .get(format!("{url}/progress"))
                .send()
                .await
                .with_context(|| format!("reading the progress of {name}"))?
                .json()
                .await
                .with_context(|| format!("decoding the progress of {name}"))?;
            out.push((name.clone(), r));
        }
        Ok(out)
    }

    /// Waits until the pipeline has settled at `now_ms` and `done()` is `Ok` (what the replay
    /// itself waits for, as every request decided; `Err` says what is missing). Fails after `timeout`, naming who was
    /// behind, or as soon as `alive()` reports a service gone.
    pub async fn settle(
        &mut self,
        kind: &'static str,
        now_ms: i64,
        timeout: Duration,
        mut alive: impl FnMut() -> Option<String>,
        mut done: impl FnMut() -> Result<(), String>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        let mut before = self.ends().await?;
        let mut last_wait: Option<String> = None;
        loop {
            if let Some(e) = alive() {
                bail!("at trace time {now_ms}: {e}");
            }
            let reports = self.reports().await?;
            let behind: Vec<&str> = reports
                .iter()
                .filter(|(n, r)| {
                    !r.settled_at(now_ms, &before)
                        || self.marks.get(n.as_str()).is_some_and(|m| !r.acted_on(*m))
                })
                .map(|(n, _)| n.as_str())
                .collect();
            let own = done();
            let settled = behind.is_empty() && own.is_ok();
            // What the services reported after `before`: unchanged ends mean nothing moved.
            let after = self.ends().await?;
            if settled && after == before {
                let took = start.elapsed();
                self.settles += 1;
                self.waited += took;
                let k = self.by_kind.entry(kind).or_default();
                k.0 += 1;
                k.1 += took;
                if self.slowest.as_ref().is_none_or(|s| took > s.took) {
                    self.slowest = Some(SlowBarrier {
                        kind,
                        now_ms,
                        took,
                        waiting_for: last_wait.clone(),
                    });
                }
                if self.trace_slower_than.is_some_and(|t| took > t) {
                    eprintln!(
                        "lockstep: barrier {kind} at {now_ms} took {:.0} ms, last waiting for: {}",
                        took.as_secs_f64() * 1000.0,
                        last_wait.as_deref().unwrap_or("nothing")
                    );
                }
                return Ok(());
            }
            // Who was behind at this look: kept for the slowest barrier's account.
            let detail = reports
                .iter()
                .filter(|(n, _)| behind.contains(&n.as_str()))
                .map(|(n, r)| {
                    let mark = self.marks.get(n.as_str()).copied();
                    format!("{n}: {}", lag(r, now_ms, mark, &before))
                })
                .collect::<Vec<_>>()
                .join("; ");
            last_wait = Some(if !detail.is_empty() {
                detail.clone()
            } else if let Err(own) = &own {
                own.clone()
            } else {
                "end offsets moved while the reports were read".to_string()
            });
            if start.elapsed() > timeout {
                let why = if !detail.is_empty() {
                    detail
                } else if let Err(own) = own {
                    format!("every service is settled, but {own}")
                } else {
                    // Settled each time it looked, yet something wrote in between: a loop.
                    let moved: Vec<String> = after
                        .iter()
                        .flat_map(|(t, ps)| {
                            let was = before.get(t);
                            ps.iter().filter_map(move |(p, end)| {
                                let from = was.and_then(|w| w.get(p)).copied().unwrap_or(0);
                                (from != *end).then(|| format!("{t}[{p}] {from} -> {end}"))
                            })
                        })
                        .collect();
                    format!(
                        "every service is settled, but topics are still written: {}",
                        moved.join(", ")
                    )
                };
                bail!(
                    "the pipeline did not settle at trace time {now_ms} within {timeout:?}: {why}"
                );
            }
            if after != before {
                before = after;
                pause = Duration::from_millis(1);
                continue;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// What a report is behind on, for the error of a barrier that timed out.
fn lag(r: &Report, now_ms: i64, mark: Option<i64>, ends: &Ends) -> String {
    let mut parts = Vec::new();
    if r.clock_ms != Some(now_ms) {
        parts.push(format!("clock at {:?}", r.clock_ms));
    }
    if let Some(m) = mark.filter(|m| !r.acted_on(*m)) {
        parts.push(format!(
            "mark {m} not acted on (last {:?})",
            r.acted_mark_ms
        ));
    }
    if r.passes && r.pass_clock_ms.is_none_or(|p| p < now_ms) {
        parts.push(format!("last pass at {:?}", r.pass_clock_ms));
    }
    for (t, ps) in &r.settled {
        for (p, at) in ps {
            if let Some(end) = ends.get(t).and_then(|e| e.get(p)) {
                if at < end {
                    parts.push(format!("{t}[{p}] at {at} of {end}"));
                }
            }
        }
    }
    parts.join(", ")
}
