//! The shadow manager's decisions, pure over local state: the predicted window and size of
//! each workload's demand, the ranked candidate hosts, and what to write and command so that
//! the shadow table and the fleet match them. No I/O: the service feeds it the restored
//! inputs and sends what it returns.
//!
//! It works like a Kubernetes controller: every pass compares what should exist (from
//! forecasts, claims and re-shadow requests) with what does (the table it writes and the fleet
//! ledger folded from fleet events) and emits the difference. Command ids are derived from
//! shadow ids, so a pass repeated after a crash re-sends the same commands and the fleet
//! executes each at most once.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use umbra_ledger::{Ledger, ShadowEnd, ShadowHealth};
use umbra_schemas::{
    Claim, DemandForecast, FleetCommand, FleetCommandKind, HostHealth, HostState, Interval,
    ReshadowRequest, Resources, ScaleUpForecast, ScaleUpSubject, ShadowCandidate, ShadowEntry,
    ShadowState, ShadowStatus,
};

/// Which forecast value sizes a shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantile {
    /// The point forecast (not recommended: half the time demand is above it).
    Mean,
    /// Upper bound of the 80% interval (the 90th percentile).
    Upper80,
    /// Upper bound of the 95% interval (the 97.5th percentile).
    Upper95,
}

impl Quantile {
    fn of(self, i: &Interval) -> f64 {
        let v = match self {
            Quantile::Mean => i.mean,
            Quantile::Upper80 => i.upper_80,
            Quantile::Upper95 => i.upper_95,
        };
        if v.is_finite() {
            v.max(0.0)
        } else {
            0.0
        }
    }
}

/// What a workload row's shadows on its alternative hosts hold (docs/shadows.md,
/// *Alternates*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alternates {
    /// Only the shadows that can be claimed at once (one per replica the row still expects)
    /// reserve the full size; the other ranked hosts hold a minimal placeholder, chosen where
    /// the full size fits, that verifies the host. A claim of a placeholder needs room on its
    /// host at that moment.
    Verify,
    /// Every ranked host reserves the full size (K full shadows for one need).
    Reserve,
}

/// Settings of the shadow manager (`[service]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Candidate hosts per workload (K): shadows staged on distinct hosts.
    pub candidates: usize,
    /// Forecast value that sizes a shadow, per resource.
    pub quantile: Quantile,
    /// How long before the predicted start shadows are created, in milliseconds.
    pub lead_time_ms: i64,
    /// How far ahead forecasts are searched for demand, in milliseconds.
    pub planning_horizon_ms: i64,
    /// How long after the predicted end shadows are kept, in milliseconds.
    pub release_grace_ms: i64,
    /// A new forecast re-sizes shadows only when a resource changes by more than this
    /// fraction (so that every refit does not churn the fleet).
    pub resize_tolerance: f64,
    /// Smallest CPU demand above what a workload holds that is worth a shadow, in millicores.
    pub min_cpu_millicores: i64,
    /// Smallest memory demand above what a workload holds that is worth a shadow, in bytes.
    pub min_memory_bytes: i64,
    /// Smallest disk I/O demand above what a workload holds that is worth a shadow, in bytes/s.
    pub min_disk_io_bytes_per_s: i64,
    /// Shadow CPU is rounded up to a multiple of this, in millicores.
    pub cpu_granularity_millicores: i64,
    /// Shadow memory is rounded up to a multiple of this, in bytes.
    pub memory_granularity_bytes: i64,
    /// A command the fleet has not answered after this long is sent again (same id), in ms.
    pub command_timeout_ms: i64,
    /// After this many unanswered attempts a shadow is given up and replaced elsewhere.
    pub max_command_attempts: u32,
    /// Fraction of a host's capacity that workloads and shadows may commit, in (0, 1].
    pub max_host_commit_fraction: f64,
    /// How often the manager compares desired and actual state, in milliseconds (it also
    /// runs whenever an input changes).
    pub reconcile_interval_ms: u64,
    /// Once the fleet has placed the workload, a shadow is one replica of its last placement's
    /// size, staged while the predicted CPU exceeds what it holds (workloads scale out on CPU,
    /// like an HPA with a CPU target): the next request asks for one replica, a claim takes a
    /// whole shadow, and after it the row goes on for the next replica if more is predicted.
    /// Off, or before the first placement, a shadow is the predicted excess itself.
    pub replica_shadows: bool,
    /// With replica shadows, the most replicas one row stages for at once (the row then holds
    /// `candidates + replicas - 1` shadows on distinct hosts, and as many requests may claim
    /// one each).
    pub max_replicas_per_row: u32,
    /// Stage workload rows from demand forecasts (the per-workload policy). Pool rows, from
    /// the scale-up forecasts of pools, are staged either way; `false` leaves only them (the
    /// pooled policy of docs/scale-up.md).
    pub workload_rows: bool,
    /// A pool forecast whose step began more than this many steps ago holds no slots (its
    /// forecaster has stopped, or lags that far), in steps.
    pub pool_forecast_max_age_steps: i64,
    /// A host where a row's shadow failed (refused, preempted, or never answered) gets no
    /// shadow of that row again for this long, in clock milliseconds. The fleet refuses on
    /// what it knows now, which the host metrics the manager plans with may not show yet
    /// (placements since their last report): without a pause the row would stage on the same
    /// host every pass, and under a driven clock that stands still, forever.
    pub failed_host_backoff_ms: i64,
    /// What a workload row's alternative hosts hold: `verify` (a minimal placeholder) or
    /// `reserve` (the full size). Pool rows' slots are each a full shadow either way.
    pub alternates: Alternates,
    /// The placeholder of `alternates = "verify"`: what a shadow on an alternative host holds.
    pub placeholder: Resources,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            candidates: 3,
            quantile: Quantile::Upper80,
            lead_time_ms: 15 * 60_000,
            planning_horizon_ms: 24 * 3_600_000,
            release_grace_ms: 5 * 60_000,
            resize_tolerance: 0.25,
            min_cpu_millicores: 50,
            min_memory_bytes: 64 << 20,
            min_disk_io_bytes_per_s: 10 << 20,
            cpu_granularity_millicores: 50,
            memory_granularity_bytes: 64 << 20,
            command_timeout_ms: 10_000,
            max_command_attempts: 5,
            max_host_commit_fraction: 1.0,
            reconcile_interval_ms: 500,
            replica_shadows: true,
            max_replicas_per_row: 8,
            workload_rows: true,
            pool_forecast_max_age_steps: 12,
            failed_host_backoff_ms: 60_000,
            alternates: Alternates::Verify,
            placeholder: Resources {
                cpu_millicores: 10,
                memory_bytes: 16 << 20,
                disk_io_bytes_per_s: 0,
            },
        }
    }
}

impl Settings {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.candidates == 0 {
            return Err("service.candidates must be at least 1".into());
        }
        if !(self.max_host_commit_fraction > 0.0 && self.max_host_commit_fraction <= 1.0) {
            return Err("service.max_host_commit_fraction must be in (0, 1]".into());
        }
        if !(self.resize_tolerance >= 0.0 && self.resize_tolerance.is_finite()) {
            return Err("service.resize_tolerance must be a non-negative number".into());
        }
        if self.cpu_granularity_millicores <= 0 || self.memory_granularity_bytes <= 0 {
            return Err("service.*_granularity_* must be positive".into());
        }
        if self.command_timeout_ms <= 0 || self.max_command_attempts == 0 {
            return Err(
                "service.command_timeout_ms and max_command_attempts must be positive".into(),
            );
        }
        Ok(())
    }
}

/// A workload's predicted demand above what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// First step where demand exceeds what the workload holds (ms).
    pub start: i64,
    /// End of that run of steps (ms, exclusive).
    pub end: i64,
    /// Largest excess over the run, per resource, rounded up: the shadow's size.
    pub requirement: Resources,
    /// Requests the demand is expected to bring: the replicas predicted above what is held
    /// (1 without a replica size).
    pub replicas: u32,
}

fn round_up(v: i64, g: i64) -> i64 {
    if v <= 0 {
        0
    } else {
        v.div_euclid(g) * g + if v % g == 0 { 0 } else { g }
    }
}

/// The first run of forecast steps in the planning horizon where demand (at the configured
/// quantile) exceeds `held` by a significant amount, and the largest excess over it.
/// Horizons are merged finest first: the hour and day horizons (5-minute steps) cover the
/// near future, the week horizon (hourly) only what they do not.
pub fn demand(f: &DemandForecast, held: &Resources, s: &Settings, now: i64) -> Option<Demand> {
    demand_until(f, held, None, s, now).0
}

/// [`demand`], and until when (ms) the answer stays the same for the same forecast and
/// holdings: until the first step in range ends or the next step enters the horizon. With a
/// `replica` size (and `replica_shadows` on), only CPU above what is held opens a window and
/// the requirement is one replica (see [`Settings::replica_shadows`]).
pub fn demand_until(
    f: &DemandForecast,
    held: &Resources,
    replica: Option<&Resources>,
    s: &Settings,
    now: i64,
) -> (Option<Demand>, i64) {
    let mut valid_until = i64::MAX;
    let mut steps: Vec<(i64, i64, &umbra_schemas::ForecastPoint)> = Vec::new();
    for h in f.horizons.iter().filter(|h| h.step_seconds > 0) {
        let step = i64::from(h.step_seconds) * 1000;
        for p in &h.points {
            if p.time + step <= now {
                continue;
            }
            if p.time >= now + s.planning_horizon_ms {
                valid_until = valid_until.min(p.time - s.planning_horizon_ms + 1);
                continue;
            }
            valid_until = valid_until.min(p.time + step);
            steps.push((p.time, step, p));
        }
    }
    // Horizons are each in time order: the sort only merges them.
    steps.sort_by_key(|(t, step, _)| (*t, *step));
    let mut covered = i64::MIN;
    let mut run: Option<Demand> = None;
    for (t, step, p) in steps {
        if t < covered {
            continue;
        }
        covered = t + step;
        let excess = Resources {
            cpu_millicores: s.quantile.of(&p.cpu_millicores).ceil() as i64 - held.cpu_millicores,
            memory_bytes: s.quantile.of(&p.memory_bytes).ceil() as i64 - held.memory_bytes,
            disk_io_bytes_per_s: s.quantile.of(&p.disk_io_bytes_per_s).ceil() as i64
                - held.disk_io_bytes_per_s,
        };
        let significant = match replica {
            Some(_) => excess.cpu_millicores >= s.min_cpu_millicores,
            None => {
                excess.cpu_millicores >= s.min_cpu_millicores
                    || excess.memory_bytes >= s.min_memory_bytes
                    || excess.disk_io_bytes_per_s >= s.min_disk_io_bytes_per_s
            }
        };
        match (&mut run, significant) {
            (None, true) => {
                run = Some(Demand {
                    start: t,
                    end: t + step,
                    requirement: excess.max(&Resources::ZERO),
                    replicas: 1,
                })
            }
            (Some(d), true) => {
                d.end = t + step;
                d.requirement = d.requirement.max(&excess);
            }
            (Some(_), false) => break,
            (None, false) => {}
        }
    }
    let d = run.map(|mut d| {
        if let Some(r) = replica {
            let n = (d.requirement.cpu_millicores + r.cpu_millicores - 1) / r.cpu_millicores;
            d.replicas = n.clamp(1, i64::from(s.max_replicas_per_row.max(1))) as u32;
            d.requirement = *r;
            return d;
        }
        d.requirement = Resources {
            cpu_millicores: round_up(d.requirement.cpu_millicores, s.cpu_granularity_millicores),
            memory_bytes: round_up(d.requirement.memory_bytes, s.memory_granularity_bytes),
            disk_io_bytes_per_s: d.requirement.disk_io_bytes_per_s.max(0),
        };
        d
    });
    (d, valid_until)
}

/// One host as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSlot {
    /// Capacity.
    pub capacity: Resources,
    /// What may be committed: capacity × `max_host_commit_fraction`.
    pub limit: Resources,
    /// Committed (or used, if more) plus reservations requested and not yet confirmed.
    pub load: Resources,
    /// Health score in [0, 1]; 0 excludes the host.
    pub score: f64,
}

impl HostSlot {
    /// Fraction of capacity left with `extra` added, the scarcest resource deciding.
    pub fn headroom(&self, extra: &Resources) -> f64 {
        let after = self.load.plus(extra);
        let frac = |limit: i64, load: i64, cap: i64| {
            if cap <= 0 {
                1.0
            } else {
                (limit - load) as f64 / cap as f64
            }
        };
        let h = frac(
            self.limit.cpu_millicores,
            after.cpu_millicores,
            self.capacity.cpu_millicores,
        )
        .min(frac(
            self.limit.memory_bytes,
            after.memory_bytes,
            self.capacity.memory_bytes,
        ))
        .min(frac(
            self.limit.disk_io_bytes_per_s,
            after.disk_io_bytes_per_s,
            self.capacity.disk_io_bytes_per_s,
        ));
        h.clamp(0.0, 1.0)
    }

    /// True when `need` fits on top of the load.
    pub fn fits(&self, need: &Resources) -> bool {
        self.score > 0.0 && self.load.plus(need).fits_within(&self.limit)
    }
}

fn scale(r: &Resources, f: f64) -> Resources {
    Resources {
        cpu_millicores: (r.cpu_millicores as f64 * f).floor() as i64,
        memory_bytes: (r.memory_bytes as f64 * f).floor() as i64,
        disk_io_bytes_per_s: (r.disk_io_bytes_per_s as f64 * f).floor() as i64,
    }
}

/// What `c`, a shadow of `e`, holds on its host.
pub fn held_by(e: &ShadowEntry, c: &ShadowCandidate) -> Resources {
    c.reserved.unwrap_or(e.requirements)
}

/// A full shadow that can serve a claim: one on a sick host or reported unhealthy cannot, so
/// another is staged (it stays, ranked last, in case its host recovers).
fn usable_full(c: &ShadowCandidate, slots: &BTreeMap<String, HostSlot>) -> bool {
    c.reserved.is_none()
        && matches!(c.status, ShadowStatus::Requested | ShadowStatus::Healthy)
        && slots.get(&c.host_id).is_some_and(|s| s.score > 0.0)
}

fn is_live(st: ShadowStatus) -> bool {
    matches!(
        st,
        ShadowStatus::Requested | ShadowStatus::Healthy | ShadowStatus::Unhealthy
    )
}

/// The hosts placement can use: every host the ledger or host state knows, with its load
/// counting reservations the table requested and the fleet has not confirmed yet.
pub fn host_slots<'a>(
    ledger: &Ledger,
    host_state: &HashMap<String, HostState>,
    entries: impl Iterator<Item = &'a ShadowEntry>,
    s: &Settings,
) -> BTreeMap<String, HostSlot> {
    let mut pending: HashMap<&str, Resources> = HashMap::new();
    for e in entries {
        for c in &e.candidates {
            if c.status == ShadowStatus::Requested
                && ledger.shadow(&c.shadow_id).is_none()
                && ledger.ended(&c.shadow_id).is_none()
            {
                let p = pending.entry(c.host_id.as_str()).or_default();
                *p = p.plus(&held_by(e, c));
            }
        }
    }
    let ids: std::collections::BTreeSet<&String> =
        ledger.hosts().keys().chain(host_state.keys()).collect();
    ids.into_iter()
        .map(|id| {
            let hs = host_state.get(id);
            let lh = ledger.host(id);
            let capacity = match (lh, hs) {
                (Some(l), _) if !l.capacity.is_zero() => l.capacity,
                (_, Some(h)) => h.capacity,
                _ => Resources::ZERO,
            };
            let committed = match (lh, hs) {
                (Some(l), _) => l.committed(),
                (None, Some(h)) => h.committed,
                _ => Resources::ZERO,
            };
            let used = hs.map(|h| h.used).unwrap_or_default();
            let mut score = hs.map_or(1.0, |h| match h.health {
                HostHealth::Unhealthy => 0.0,
                _ if h.health_score.is_finite() => h.health_score.clamp(0.0, 1.0),
                _ => 0.0,
            });
            if lh.is_some_and(|l| !l.healthy) || capacity.is_zero() {
                score = 0.0;
            }
            let slot = HostSlot {
                capacity,
                limit: scale(&capacity, s.max_host_commit_fraction),
                load: committed
                    .max(&used)
                    .plus(pending.get(id.as_str()).unwrap_or(&Resources::ZERO)),
                score,
            };
            (id.clone(), slot)
        })
        .collect()
}

/// Up to `k` distinct hosts that can hold `need`, best first: by health score, then by
/// headroom left with the shadow in place, then by host id (so the order is total and the
/// same input always gives the same answer).
pub fn choose_hosts(
    slots: &BTreeMap<String, HostSlot>,
    need: &Resources,
    k: usize,
    exclude: &HashSet<String>,
) -> Vec<(String, f64)> {
    let order = |a: &(&String, f64, f64), b: &(&String, f64, f64)| {
        b.1.total_cmp(&a.1)
            .then(b.2.total_cmp(&a.2))
            .then_with(|| a.0.cmp(b.0))
    };
    // Keep only the best k while scanning: no per-decision allocation beyond k entries.
    let mut best: Vec<(&String, f64, f64)> = Vec::with_capacity(k + 1);
    for (id, slot) in slots {
        if !slot.fits(need) || (!exclude.is_empty() && exclude.contains(id)) {
            continue;
        }
        let c = (id, slot.score, slot.headroom(need));
        if best.len() == k && best.last().is_none_or(|w| order(&c, w).is_ge()) {
            continue;
        }
        let at = best.partition_point(|b| order(b, &c).is_lt());
        best.insert(at, c);
        best.truncate(k);
    }
    best.into_iter().map(|(id, _, h)| (id.clone(), h)).collect()
}

/// What a reconcile pass asks the service to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this row to the shadow table.
    Upsert(ShadowEntry),
    /// Delete the row of this workload (a tombstone).
    Delete(String),
    /// Send this command to the fleet.
    Command(FleetCommand),
}

/// What the manager reads besides its own table.
pub struct Inputs<'a> {
    /// Wall-clock time of the pass (ms).
    pub now: i64,
    /// Latest forecast per workload.
    pub forecasts: &'a HashMap<String, DemandForecast>,
    /// Latest host state per host.
    pub host_state: &'a HashMap<String, HostState>,
    /// The fleet, folded from its events.
    pub ledger: &'a Ledger,
    /// Claims by shadow id.
    pub claims: &'a HashMap<String, Claim>,
    /// Re-shadow requests received since the last pass.
    pub reshadows: &'a [ReshadowRequest],
    /// Latest scale-up forecast per subject (pools hold slots; workload subjects are ignored).
    pub scale_ups: &'a HashMap<String, ScaleUpForecast>,
}

/// A row a pass may rewrite: as it was (none for a new row), as it should be, and why.
type Touched = (Option<ShadowEntry>, ShadowEntry, Vec<String>);

/// The single writer of the shadow table.
pub struct Manager {
    settings: Settings,
    table: BTreeMap<String, ShadowEntry>,
    /// Command id → (last sent, attempts). Lost on restart, which only means that
    /// unanswered commands are sent again at once.
    sent: HashMap<String, (i64, u32)>,
    /// Demand per workload with the forecast time and holdings it was computed for, valid
    /// until a time: a pass over unchanged forecasts does not rescan them.
    demand_cache: HashMap<String, CachedDemand>,
    /// Per pool, the step of the forecast in force and the slots claimed under it: a claimed
    /// slot is refilled at the next step's forecast, not at once (docs/scale-up.md), so that a
    /// pool holds what the forecast of the step says, as the offline core does. Lost on
    /// restart, which only refills a step's claimed slots early.
    pool_claimed: HashMap<String, PoolClaims>,
    /// Row id → host → when a shadow of the row last failed there (see
    /// `failed_host_backoff_ms`). Lost on restart, which only retries those hosts early.
    failed_hosts: HashMap<String, HashMap<String, i64>>,
}

#[derive(Default)]
struct PoolClaims {
    /// `step_start` of the forecast in force.
    step: i64,
    /// Slots claimed under it.
    claimed: usize,
    /// Claimed slots already counted, while they are still in the row.
    seen: HashSet<String>,
}

struct CachedDemand {
    generated_at: i64,
    held: Resources,
    replica: Option<Resources>,
    valid_until: i64,
    demand: Option<Demand>,
}

/// Command id of the creation of `shadow_id`.
pub fn create_id(shadow_id: &str) -> String {
    format!("create-{shadow_id}")
}

/// Command id of the release of `shadow_id`.
pub fn release_id(shadow_id: &str) -> String {
    format!("release-{shadow_id}")
}

fn status_factor(st: ShadowStatus) -> f64 {
    match st {
        ShadowStatus::Healthy | ShadowStatus::Claimed => 1.0,
        ShadowStatus::Requested => 0.5,
        ShadowStatus::Unhealthy => 0.1,
        _ => 0.0,
    }
}

fn differs(a: &Resources, b: &Resources, tol: f64) -> bool {
    let rel = |x: i64, y: i64| {
        let m = x.max(y);
        m > 0 && ((x - y).abs() as f64 / m as f64) > tol
    };
    rel(a.cpu_millicores, b.cpu_millicores)
        || rel(a.memory_bytes, b.memory_bytes)
        || rel(a.disk_io_bytes_per_s, b.disk_io_bytes_per_s)
}

/// Names new shadows from what they are: the row, the host, the clock time of the pass and a
/// sequence within that time, so that two replays of one trace stage the same ids: the fleet
/// breaks ties between equal shadows by id (which one standard allocation preempts), and with
/// random ids that choice, and the hosts' loads after it, differed run to run. An id repeats only if a
/// manager restarted at the very clock millisecond it stopped at and staged the same row on
/// the same host again; a driven clock is not restarted under a running replay.
#[derive(Debug, Default)]
pub struct ShadowIds {
    now: i64,
    issued: u32,
}

impl ShadowIds {
    /// The next shadow id for `row` on `host` in a pass at clock time `now` (ms).
    pub fn next(&mut self, row: &str, host: &str, now: i64) -> String {
        if now != self.now {
            self.now = now;
            self.issued = 0;
        }
        let id = format!("{row}@{host}:{now}.{}", self.issued);
        self.issued += 1;
        id
    }
}

impl Manager {
    /// A manager over the restored table.
    pub fn new(settings: Settings, table: HashMap<String, ShadowEntry>) -> Self {
        Self {
            settings,
            table: table.into_iter().collect(),
            sent: HashMap::new(),
            demand_cache: HashMap::new(),
            pool_claimed: HashMap::new(),
            failed_hosts: HashMap::new(),
        }
    }

    /// The table as written so far.
    pub fn table(&self) -> &BTreeMap<String, ShadowEntry> {
        &self.table
    }

    /// Settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn command(
        &mut self,
        kind: FleetCommandKind,
        shadow_id: &str,
        host: &str,
        workload: &str,
        resources: Resources,
        now: i64,
    ) -> Action {
        let id = match kind {
            FleetCommandKind::CreateShadow => create_id(shadow_id),
            _ => release_id(shadow_id),
        };
        let e = self.sent.entry(id.clone()).or_insert((now, 0));
        e.0 = now;
        e.1 += 1;
        Action::Command(FleetCommand {
            command_id: id,
            kind,
            host_id: host.to_string(),
            target_host_id: None,
            shadow_id: Some(shadow_id.to_string()),
            workload_id: workload.to_string(),
            request_id: None,
            resources,
            issued_at: now,
        })
    }

    fn cached_demand(
        &mut self,
        f: &DemandForecast,
        held: &Resources,
        replica: Option<Resources>,
        now: i64,
    ) -> Option<Demand> {
        let replica = replica.filter(|r| self.settings.replica_shadows && r.cpu_millicores > 0);
        if let Some(c) = self.demand_cache.get(&f.workload_id) {
            if c.generated_at == f.generated_at
                && c.held == *held
                && c.replica == replica
                && now < c.valid_until
            {
                return c.demand.clone();
            }
        }
        let (d, valid_until) = demand_until(f, held, replica.as_ref(), &self.settings, now);
        self.demand_cache.insert(
            f.workload_id.clone(),
            CachedDemand {
                generated_at: f.generated_at,
                held: *held,
                replica,
                valid_until,
                demand: d.clone(),
            },
        );
        d
    }

    fn due(&self, command_id: &str, now: i64) -> bool {
        self.sent
            .get(command_id)
            .is_none_or(|(at, _)| now - at >= self.settings.command_timeout_ms)
    }

    /// One pass: compares desired and actual state and returns the writes and commands that
    /// close the gap. The table is updated in place (the caller sends the writes before the
    /// commands and stops on a send failure; a restart re-derives everything).
    pub fn reconcile(
        &mut self,
        inp: &Inputs<'_>,
        new_id: &mut dyn FnMut(&str, &str) -> String,
    ) -> Vec<Action> {
        let now = inp.now;
        let mut slots = host_slots(
            inp.ledger,
            inp.host_state,
            self.table.values(),
            &self.settings,
        );
        let mut out = Vec::new();
        let mut touched: Vec<Touched> = Vec::new();
        let mut reshadows: HashMap<&str, Vec<&ReshadowRequest>> = HashMap::new();
        for r in inp.reshadows {
            reshadows.entry(r.workload_id.as_str()).or_default().push(r);
        }
        let workload_rows = self.settings.workload_rows;
        let workloads: std::collections::BTreeSet<String> = inp
            .forecasts
            .keys()
            .filter(|_| workload_rows)
            .chain(
                self.table
                    .iter()
                    .filter(|(_, e)| e.pool_labels.is_none())
                    .map(|(k, _)| k),
            )
            .cloned()
            .collect();
        for w in workloads {
            let held = inp.ledger.held(&w);
            let replica = inp.ledger.replica(&w);
            let d = inp
                .forecasts
                .get(&w)
                .filter(|_| workload_rows)
                .and_then(|f| self.cached_demand(f, &held, replica, now));
            let rs = reshadows.remove(w.as_str()).unwrap_or_default();
            match self.table.get(&w).cloned() {
                None => {
                    if let Some(d) = d.filter(|d| d.start - self.settings.lead_time_ms <= now) {
                        let mut e = ShadowEntry {
                            workload_id: w.clone(),
                            version: now.max(1),
                            state: ShadowState::Pending,
                            predicted_start: d.start,
                            predicted_end: d.end,
                            requirements: d.requirement,
                            replicas: d.replicas as i32,
                            pool_labels: None,
                            candidates: Vec::new(),
                            host_ranking: Vec::new(),
                            reason: String::new(),
                            updated_at: now,
                        };
                        let mut reasons = vec!["forecast".to_string()];
                        let open = d.replicas as usize;
                        let avoid = self.failed_hosts.get(&w).map_or_else(HashSet::new, |h| {
                            h.iter()
                                .filter(|(_, at)| now - **at < self.settings.failed_host_backoff_ms)
                                .map(|(h, _)| h.clone())
                                .collect()
                        });
                        self.refill(
                            &mut e,
                            &mut slots,
                            &avoid,
                            open,
                            &mut reasons,
                            &mut out,
                            new_id,
                            now,
                        );
                        touched.push((None, e, reasons));
                    }
                }
                Some(old) => {
                    if let Some(t) = self.update(old, d, &rs, inp, &mut slots, &mut out, new_id) {
                        touched.push(t);
                    }
                }
            }
        }
        let pools: std::collections::BTreeSet<String> = inp
            .scale_ups
            .iter()
            .filter(|(_, f)| f.kind == ScaleUpSubject::Pool)
            .map(|(k, _)| k)
            .chain(
                self.table
                    .iter()
                    .filter(|(_, e)| e.pool_labels.is_some())
                    .map(|(k, _)| k),
            )
            .cloned()
            .collect();
        for p in pools {
            let f = inp
                .scale_ups
                .get(&p)
                .filter(|f| f.kind == ScaleUpSubject::Pool);
            if let Some(t) = self.update_pool(&p, f, inp, &mut slots, &mut out, new_id) {
                touched.push(t);
            }
        }
        // Ranks and headroom are computed once every placement of the pass is known, so that
        // a row is not rewritten next pass only because later rows filled its hosts.
        let mut writes = Vec::new();
        for (old, mut e, reasons) in touched {
            self.rank(&mut e, &slots);
            let changed = old.as_ref().is_none_or(|o| Self::materially_changed(o, &e));
            if changed {
                if let Some(o) = &old {
                    e.version = (o.version + 1).max(now);
                    e.updated_at = now;
                }
                e.reason = if reasons.is_empty() {
                    "health".into()
                } else {
                    reasons.join("; ")
                };
                self.table.insert(e.workload_id.clone(), e.clone());
                writes.push(Action::Upsert(e));
            }
        }
        writes.append(&mut out);
        if self.demand_cache.len() > 2 * inp.forecasts.len() + 16 {
            self.demand_cache
                .retain(|w, _| inp.forecasts.contains_key(w));
        }
        self.collect_orphans(inp, &mut writes);
        let backoff = self.settings.failed_host_backoff_ms;
        self.failed_hosts
            .retain(|_, h| h.values().any(|at| now - *at < backoff));
        writes
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        old: ShadowEntry,
        d: Option<Demand>,
        rs: &[&ReshadowRequest],
        inp: &Inputs<'_>,
        slots: &mut BTreeMap<String, HostSlot>,
        out: &mut Vec<Action>,
        new_id: &mut dyn FnMut(&str, &str) -> String,
    ) -> Option<Touched> {
        let now = inp.now;
        let w = old.workload_id.clone();
        let mut e = old.clone();
        let mut reasons: Vec<String> = Vec::new();
        let mut avoid: HashSet<String> = HashSet::new();
        self.observe_candidates(&mut e, inp, out, &mut reasons, &mut avoid);
        // Once a claimed shadow has become the workload, what the workload holds includes it
        // (the demand above was computed from that): the claimed candidate leaves the row,
        // and the others stay staged if the forecast still asks for more (a workload scaling
        // out replica by replica finds its next shadow ready), or are released with the row.
        let before = e.candidates.len();
        e.candidates.retain(|c| {
            c.status != ShadowStatus::Claimed
                || !matches!(inp.ledger.ended(&c.shadow_id), Some(ShadowEnd::Expanded))
        });
        if e.candidates.len() < before {
            reasons.push("claimed shadow became the workload".into());
        }
        let claims = e
            .candidates
            .iter()
            .filter(|c| c.status == ShadowStatus::Claimed)
            .count();
        let claimed = claims > 0;
        let finished = now >= e.predicted_end + self.settings.release_grace_ms;
        let gone = !claimed
            && match &d {
                None => true,
                Some(d) => d.start - self.settings.lead_time_ms > now,
            };
        if finished || gone {
            // Release whatever is still reserved and unclaimed.
            let live: Vec<ShadowCandidate> = e
                .candidates
                .iter()
                .filter(|c| is_live(c.status))
                .cloned()
                .collect();
            for c in live {
                let a = self.command(
                    FleetCommandKind::ReleaseShadow,
                    &c.shadow_id,
                    &c.host_id,
                    &w,
                    held_by(&e, &c),
                    now,
                );
                out.push(a);
            }
            self.table.remove(&w);
            out.push(Action::Delete(w));
            return None;
        }
        e.candidates
            .retain(|c| is_live(c.status) || c.status == ShadowStatus::Claimed);
        // Every claim the row allows is taken: nothing to stage until they are workloads.
        let full = claims >= e.replicas.max(1) as usize;
        if !claimed {
            if let Some(d) = &d {
                if d.replicas as i32 != e.replicas {
                    reasons.push(format!("{} replicas predicted", d.replicas));
                    e.replicas = d.replicas as i32;
                }
                if differs(
                    &d.requirement,
                    &e.requirements,
                    self.settings.resize_tolerance,
                ) {
                    for c in std::mem::take(&mut e.candidates) {
                        let a = self.command(
                            FleetCommandKind::ReleaseShadow,
                            &c.shadow_id,
                            &c.host_id,
                            &w,
                            held_by(&e, &c),
                            now,
                        );
                        out.push(a);
                    }
                    reasons.push(format!(
                        "resized from {}m/{}B to {}m/{}B",
                        e.requirements.cpu_millicores,
                        e.requirements.memory_bytes,
                        d.requirement.cpu_millicores,
                        d.requirement.memory_bytes
                    ));
                    e.requirements = d.requirement;
                }
                e.predicted_start = d.start;
                e.predicted_end = d.end;
            }
        }
        if !full {
            for r in rs {
                let Some(pos) = e.candidates.iter().position(|c| {
                    c.shadow_id == r.shadow_id && c.host_id == r.from_host_id && is_live(c.status)
                }) else {
                    continue;
                };
                let c = e.candidates.remove(pos);
                let a = self.command(
                    FleetCommandKind::ReleaseShadow,
                    &c.shadow_id,
                    &c.host_id,
                    &w,
                    held_by(&e, &c),
                    now,
                );
                out.push(a);
                avoid.insert(c.host_id.clone());
                reasons.push(format!("reshadow {}: {}", r.request_id, r.reason));
                if let Some(to) = &r.to_host_id {
                    let taken: HashSet<&str> =
                        e.candidates.iter().map(|c| c.host_id.as_str()).collect();
                    if !taken.contains(to.as_str())
                        && slots.get(to).is_some_and(|s| s.fits(&e.requirements))
                    {
                        // The moved shadow keeps what it held.
                        let full = c.reserved.is_none();
                        self.add_candidate(&mut e, to, full, slots, out, new_id, now);
                    }
                }
            }
            let open = (e.replicas.max(1) as usize).saturating_sub(claims);
            self.refill(&mut e, slots, &avoid, open, &mut reasons, out, new_id, now);
        }
        e.state = if full {
            ShadowState::Claimed
        } else if e
            .candidates
            .iter()
            .any(|c| c.status == ShadowStatus::Healthy)
        {
            ShadowState::Active
        } else {
            ShadowState::Pending
        };
        Some((Some(old), e, reasons))
    }

    /// What the fleet and the interceptor say about each shadow of `e`: statuses, failures
    /// (their hosts avoided), and creations re-sent after the timeout or given up.
    fn observe_candidates(
        &mut self,
        e: &mut ShadowEntry,
        inp: &Inputs<'_>,
        out: &mut Vec<Action>,
        reasons: &mut Vec<String>,
        avoid: &mut HashSet<String>,
    ) {
        let now = inp.now;
        let size = e.requirements;
        let w = e.workload_id.clone();
        let mut failed = Vec::new();
        for c in &mut e.candidates {
            let was = c.status;
            if let Some(claim) = inp.claims.get(&c.shadow_id) {
                if was != ShadowStatus::Claimed {
                    c.status = ShadowStatus::Claimed;
                    reasons.push(format!("claimed by request {}", claim.request_id));
                }
                continue;
            }
            if was == ShadowStatus::Claimed {
                continue;
            }
            match (
                inp.ledger.shadow(&c.shadow_id),
                inp.ledger.ended(&c.shadow_id),
            ) {
                (Some(r), _) => {
                    c.status = match r.health {
                        ShadowHealth::Created => ShadowStatus::Requested,
                        ShadowHealth::Healthy => ShadowStatus::Healthy,
                        ShadowHealth::Unhealthy => ShadowStatus::Unhealthy,
                    };
                    if r.host_id != c.host_id {
                        c.host_id = r.host_id.clone();
                    }
                }
                (None, Some(ShadowEnd::Expanded)) => c.status = ShadowStatus::Claimed,
                (None, Some(ShadowEnd::Released)) => c.status = ShadowStatus::Released,
                (None, Some(ShadowEnd::Failed(why) | ShadowEnd::Refused(why))) => {
                    c.status = ShadowStatus::Failed;
                    reasons.push(format!("shadow on {} failed: {why}", c.host_id));
                    avoid.insert(c.host_id.clone());
                    failed.push(c.host_id.clone());
                }
                (None, None) => {
                    // Not answered yet: send again after the timeout, give up after the limit.
                    let cid = create_id(&c.shadow_id);
                    if inp.ledger.answered(&cid) || !self.due(&cid, now) {
                        continue;
                    }
                    let attempts = self.sent.get(&cid).map_or(0, |s| s.1);
                    let kind = if attempts >= self.settings.max_command_attempts {
                        c.status = ShadowStatus::Failed;
                        reasons.push(format!(
                            "no answer from {} after {attempts} attempts",
                            c.host_id
                        ));
                        avoid.insert(c.host_id.clone());
                        failed.push(c.host_id.clone());
                        FleetCommandKind::ReleaseShadow
                    } else {
                        FleetCommandKind::CreateShadow
                    };
                    let cmd = self.command(kind, &c.shadow_id, &c.host_id, &w, size, now);
                    out.push(cmd);
                }
            }
        }
        let backoff = self.settings.failed_host_backoff_ms;
        let hosts = self.failed_hosts.entry(w.clone()).or_default();
        for h in failed {
            hosts.insert(h, now);
        }
        hosts.retain(|_, at| now - *at < backoff);
        avoid.extend(hosts.keys().cloned());
        if hosts.is_empty() {
            self.failed_hosts.remove(&w);
        }
    }

    /// One pool row: as many live slots as the pool's forecast holds for its step (the newest
    /// released first when it wants fewer, so slots keep their identity), claimed slots
    /// dropped once they are workloads, and the row deleted when it holds nothing.
    fn update_pool(
        &mut self,
        id: &str,
        f: Option<&ScaleUpForecast>,
        inp: &Inputs<'_>,
        slots: &mut BTreeMap<String, HostSlot>,
        out: &mut Vec<Action>,
        new_id: &mut dyn FnMut(&str, &str) -> String,
    ) -> Option<Touched> {
        let now = inp.now;
        let fresh = f.filter(|f| {
            let step = i64::from(f.step_seconds.max(1)) * 1000;
            now < f.step_start + step * self.settings.pool_forecast_max_age_steps.max(1)
        });
        let want = fresh.map_or(0, |f| f.slots.max(0) as usize);
        let old = self.table.get(id).cloned();
        let mut e = match (&old, fresh) {
            (Some(o), _) => o.clone(),
            (None, Some(f)) if want > 0 => ShadowEntry {
                workload_id: id.to_string(),
                version: now.max(1),
                state: ShadowState::Pending,
                predicted_start: f.step_start,
                predicted_end: f.step_start + i64::from(f.step_seconds) * 1000,
                requirements: f.size,
                candidates: Vec::new(),
                host_ranking: Vec::new(),
                reason: String::new(),
                updated_at: now,
                replicas: 0,
                pool_labels: Some(f.labels.clone()),
            },
            _ => return None,
        };
        let mut reasons = Vec::new();
        let mut avoid = HashSet::new();
        self.observe_candidates(&mut e, inp, out, &mut reasons, &mut avoid);
        let step = fresh.map_or(e.predicted_start, |f| f.step_start);
        let pc = self.pool_claimed.entry(id.to_string()).or_default();
        if pc.step != step {
            pc.step = step;
            pc.claimed = 0;
        }
        for c in &e.candidates {
            let taken = c.status == ShadowStatus::Claimed
                || inp.claims.contains_key(&c.shadow_id)
                || matches!(inp.ledger.ended(&c.shadow_id), Some(ShadowEnd::Expanded));
            // A claim counts against the step it was made in, not the step in force when this
            // pass sees it: on a driven clock the manager sees a step's claims at the next
            // step's mark, and counting them there would hold fewer slots than the next
            // forecast asks. (A claim known only from the table or the ledger has no time.)
            let this_step = inp
                .claims
                .get(&c.shadow_id)
                .is_none_or(|k| k.claimed_at >= step);
            if taken && pc.seen.insert(c.shadow_id.clone()) && this_step {
                pc.claimed += 1;
            }
        }
        let want = want.saturating_sub(pc.claimed);
        let before = e.candidates.len();
        e.candidates.retain(|c| {
            (is_live(c.status) || c.status == ShadowStatus::Claimed)
                && !matches!(inp.ledger.ended(&c.shadow_id), Some(ShadowEnd::Expanded))
        });
        pc.seen
            .retain(|s| e.candidates.iter().any(|c| c.shadow_id == *s));
        if e.candidates.len() < before {
            reasons.push("claimed slots became workloads".into());
        }
        let release =
            |m: &mut Self, c: &ShadowCandidate, size: Resources, out: &mut Vec<Action>| {
                let a = m.command(
                    FleetCommandKind::ReleaseShadow,
                    &c.shadow_id,
                    &c.host_id,
                    id,
                    size,
                    now,
                );
                out.push(a);
            };
        if let Some(f) = fresh {
            if f.size != e.requirements {
                let size = e.requirements;
                let (gone, kept): (Vec<_>, Vec<_>) =
                    e.candidates.drain(..).partition(|c| is_live(c.status));
                for c in &gone {
                    release(self, c, size, out);
                }
                e.candidates = kept;
                reasons.push(format!(
                    "slot resized from {}m to {}m",
                    size.cpu_millicores, f.size.cpu_millicores
                ));
                e.requirements = f.size;
            }
            e.pool_labels = Some(f.labels.clone());
            e.predicted_start = f.step_start;
            e.predicted_end = f.step_start + i64::from(f.step_seconds) * 1000;
        }
        let live: Vec<usize> = (0..e.candidates.len())
            .filter(|k| is_live(e.candidates[*k].status))
            .collect();
        if live.len() > want {
            let size = e.requirements;
            for k in live[want..].iter().rev() {
                let c = e.candidates.remove(*k);
                release(self, &c, size, out);
            }
            reasons.push(format!("{want} slots held"));
        } else if live.len() < want {
            for staged in 0..want - live.len() {
                let Some((h, _)) = choose_hosts(slots, &e.requirements, 1, &avoid).pop() else {
                    reasons.push(format!(
                        "{} of {want} slots: no host can hold {}m CPU, {} B memory",
                        live.len() + staged,
                        e.requirements.cpu_millicores,
                        e.requirements.memory_bytes
                    ));
                    break;
                };
                self.add_candidate(&mut e, &h, true, slots, out, new_id, now);
            }
            reasons.push(format!("{want} slots held"));
        }
        e.replicas = want as i32;
        if e.candidates.is_empty() && want == 0 {
            // A row never written (its step's slots all claimed already) needs no tombstone:
            // one every pass would keep the table moving while nothing changes.
            if self.table.remove(id).is_some() {
                out.push(Action::Delete(id.to_string()));
            }
            return None;
        }
        e.state = if e
            .candidates
            .iter()
            .any(|c| c.status == ShadowStatus::Healthy)
        {
            ShadowState::Active
        } else {
            ShadowState::Pending
        };
        Some((old, e, reasons))
    }

    fn materially_changed(a: &ShadowEntry, b: &ShadowEntry) -> bool {
        a.state != b.state
            || a.replicas != b.replicas
            || a.requirements != b.requirements
            || a.predicted_start != b.predicted_start
            || a.predicted_end != b.predicted_end
            || a.host_ranking != b.host_ranking
            || a.candidates.len() != b.candidates.len()
            || a.candidates.iter().zip(&b.candidates).any(|(x, y)| {
                x.shadow_id != y.shadow_id
                    || x.host_id != y.host_id
                    || x.status != y.status
                    || (x.health_score - y.health_score).abs() > 0.05
                    || (x.headroom - y.headroom).abs() > 0.05
            })
    }

    /// Stages a shadow of `e` on `host`: the full size, or the placeholder of
    /// `alternates = "verify"` when `full` is false.
    #[allow(clippy::too_many_arguments)]
    fn add_candidate(
        &mut self,
        e: &mut ShadowEntry,
        host: &str,
        full: bool,
        slots: &mut BTreeMap<String, HostSlot>,
        out: &mut Vec<Action>,
        new_id: &mut dyn FnMut(&str, &str) -> String,
        now: i64,
    ) {
        let sid = new_id(&e.workload_id, host);
        let reserved = (!full).then_some(self.settings.placeholder);
        let size = reserved.unwrap_or(e.requirements);
        if let Some(s) = slots.get_mut(host) {
            s.load = s.load.plus(&size);
        }
        e.candidates.push(ShadowCandidate {
            shadow_id: sid.clone(),
            host_id: host.to_string(),
            rank: 0,
            health_score: 0.0,
            headroom: 0.0,
            status: ShadowStatus::Requested,
            reserved,
        });
        let a = self.command(
            FleetCommandKind::CreateShadow,
            &sid,
            host,
            &e.workload_id,
            size,
            now,
        );
        out.push(a);
    }

    #[allow(clippy::too_many_arguments)]
    fn refill(
        &mut self,
        e: &mut ShadowEntry,
        slots: &mut BTreeMap<String, HostSlot>,
        avoid: &HashSet<String>,
        open_claims: usize,
        reasons: &mut Vec<String>,
        out: &mut Vec<Action>,
        new_id: &mut dyn FnMut(&str, &str) -> String,
        now: i64,
    ) {
        // K alternatives for the first of the claims still open, one more per further claim.
        let k = self.settings.candidates + open_claims.saturating_sub(1);
        // Under `verify` only as many shadows as can be claimed at once hold the full size;
        // under `reserve` every one does. (Pool rows stage their slots elsewhere.)
        let verify = self.settings.alternates == Alternates::Verify;
        let want_full = open_claims.max(1).min(k);
        let mut exclude: HashSet<String> = avoid.clone();
        exclude.extend(e.candidates.iter().map(|c| c.host_id.clone()));
        let mut full_now = e
            .candidates
            .iter()
            .filter(|c| usable_full(c, slots))
            .count();
        // A full shadow lost (failed, moved, on a sick host, or claimed while more are
        // expected) is replaced by a full one on a new host (hosts stay distinct), and the
        // worst-ranked placeholders go so that the row stays at K.
        if verify && full_now < want_full {
            for (h, _) in choose_hosts(slots, &e.requirements, want_full - full_now, &exclude) {
                exclude.insert(h.clone());
                self.add_candidate(e, &h, true, slots, out, new_id, now);
                full_now += 1;
            }
            let live = e.candidates.iter().filter(|c| is_live(c.status)).count();
            let mut surplus: Vec<usize> = (0..e.candidates.len())
                .filter(|i| is_live(e.candidates[*i].status) && e.candidates[*i].reserved.is_some())
                .collect();
            surplus.sort_by_key(|i| std::cmp::Reverse(e.candidates[*i].rank));
            surplus.truncate(live.saturating_sub(k));
            surplus.sort_unstable_by(|a, b| b.cmp(a));
            for i in surplus {
                let c = e.candidates.remove(i);
                let a = self.command(
                    FleetCommandKind::ReleaseShadow,
                    &c.shadow_id,
                    &c.host_id,
                    &e.workload_id,
                    held_by(e, &c),
                    now,
                );
                out.push(a);
            }
        }
        let live = e.candidates.iter().filter(|c| is_live(c.status)).count();
        if live >= k {
            return;
        }
        // Alternatives go where the full size fits, so that a claim of one can expand.
        let chosen = choose_hosts(slots, &e.requirements, k - live, &exclude);
        if chosen.len() < k - live {
            reasons.push(format!(
                "{} of {k} candidate hosts can hold {}m CPU, {} B memory",
                live + chosen.len(),
                e.requirements.cpu_millicores,
                e.requirements.memory_bytes
            ));
        }
        for (h, _) in chosen {
            let full = !verify || full_now < want_full;
            full_now += usize::from(full);
            self.add_candidate(e, &h, full, slots, out, new_id, now);
        }
    }

    fn rank(&self, e: &mut ShadowEntry, slots: &BTreeMap<String, HostSlot>) {
        for c in &mut e.candidates {
            let (score, head) = slots
                .get(&c.host_id)
                .map_or((0.0, 0.0), |s| (s.score, s.headroom(&Resources::ZERO)));
            c.health_score = ((score * status_factor(c.status)) * 1000.0).round() / 1000.0;
            c.headroom = (head * 1000.0).round() / 1000.0;
        }
        // A pool's slots are interchangeable: they keep the order they were staged in (the
        // newest go first when the pool shrinks).
        if e.pool_labels.is_none() {
            // Shadows on sick hosts last; then full shadows before placeholders, so that a
            // claim takes the best full one first.
            let sick = |c: &ShadowCandidate| c.health_score <= 0.0;
            e.candidates.sort_by(|a, b| {
                sick(a)
                    .cmp(&sick(b))
                    .then(a.reserved.is_some().cmp(&b.reserved.is_some()))
                    .then(b.health_score.total_cmp(&a.health_score))
                    .then(b.headroom.total_cmp(&a.headroom))
                    .then_with(|| a.host_id.cmp(&b.host_id))
            });
        }
        for (i, c) in e.candidates.iter_mut().enumerate() {
            c.rank = i as i32;
        }
        e.host_ranking = e.candidates.iter().map(|c| c.host_id.clone()).collect();
    }

    /// Shadows the fleet holds that no row references (a row deleted while its release was
    /// lost, or commands sent before a crash lost the row's write): released.
    fn collect_orphans(&mut self, inp: &Inputs<'_>, out: &mut Vec<Action>) {
        let referenced: HashSet<&str> = self
            .table
            .values()
            .flat_map(|e| e.candidates.iter())
            .filter(|c| is_live(c.status) || c.status == ShadowStatus::Claimed)
            .map(|c| c.shadow_id.as_str())
            .collect();
        let mut orphans: Vec<(String, String, String, Resources)> = inp
            .ledger
            .shadows()
            .iter()
            .filter(|(id, _)| !referenced.contains(id.as_str()))
            .filter(|(id, _)| self.due(&release_id(id), inp.now))
            .map(|(id, r)| {
                (
                    id.clone(),
                    r.host_id.clone(),
                    r.workload_id.clone(),
                    r.resources,
                )
            })
            .collect();
        orphans.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, host, w, res) in orphans {
            let a = self.command(
                FleetCommandKind::ReleaseShadow,
                &id,
                &host,
                &w,
                res,
                inp.now,
            );
            out.push(a);
        }
    }
}
