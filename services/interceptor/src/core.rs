//! The interceptor's decisions, pure over local state: match a request to its workload's
//! shadow row, claim the best healthy shadow, or place it by best fit and follow the fleet's
//! answer (retrying refused placements on other hosts), and answer every request exactly
//! once. No I/O: the service feeds it requests, fleet events and the other instances' claims
//! and decisions, and sends what it returns.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use umbra_ledger::{HostRecord, Ledger};
use umbra_schemas::{
    AllocationDecision, BadDataPolicy, Claim, FleetCommand, FleetCommandKind, FleetEventKind,
    HostHealth, HostState, Outcome, Resources, ShadowEntry, ShadowState, ShadowStatus,
    WorkloadRequest,
};

/// Settings of the interceptor (`[service]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// A request matches a shadow row when it arrives this long before the predicted start
    /// or after the predicted end, in milliseconds.
    pub window_tolerance_ms: i64,
    /// A request matches when each resource is at most the shadow's size × (1 + this).
    /// Above 0 the fleet must admit the difference when the shadow expands.
    pub size_tolerance: f64,
    /// A placement the fleet has not answered after this long is sent again (same id), in ms.
    pub placement_timeout_ms: i64,
    /// Hosts tried for one request before it is rejected.
    pub max_placement_attempts: u32,
    /// Largest CPU one request may ask for, in millicores.
    pub max_cpu_millicores: i64,
    /// Largest memory one request may ask for, in bytes.
    pub max_memory_bytes: i64,
    /// Largest disk I/O one request may ask for, in bytes per second.
    pub max_disk_io_bytes_per_s: i64,
    /// Requests made longer ago than this are rejected as stale, in milliseconds.
    pub max_request_age_ms: i64,
    /// Requests dated further in the future than this are rejected, in milliseconds.
    pub max_future_ms: i64,
    /// Requests decoded but not yet answered, at most (back-pressure on the consumer).
    pub max_in_flight: usize,
    /// After a partition is assigned, wait this long for its previous owner's last writes
    /// before reading the claims and decisions up to their end, in milliseconds.
    pub assignment_grace_ms: u64,
    /// What to do with requests that cannot be decoded.
    pub bad_data: BadDataPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            window_tolerance_ms: 15 * 60_000,
            size_tolerance: 0.0,
            placement_timeout_ms: 5_000,
            max_placement_attempts: 3,
            max_cpu_millicores: 1_000_000,
            max_memory_bytes: 16 << 40,
            max_disk_io_bytes_per_s: 100 << 30,
            max_request_age_ms: 24 * 3_600_000,
            max_future_ms: 3_600_000,
            max_in_flight: 1_000,
            assignment_grace_ms: 1_000,
            bad_data: BadDataPolicy::DeadLetter,
        }
    }
}

/// What the core reads besides its own state.
pub struct World<'a> {
    /// Wall-clock time (ms).
    pub now: i64,
    /// The shadow table.
    pub table: &'a HashMap<String, ShadowEntry>,
    /// Host state.
    pub hosts: &'a HashMap<String, HostState>,
    /// The fleet, folded from its events.
    pub ledger: &'a Ledger,
    /// Workloads umbra knows (they have a forecast or a shadow row or a placement).
    pub known: &'a HashSet<String>,
}

/// A host's capacity and what it commits: the fleet ledger's once it knows the host's
/// capacity, else the last host state's.
fn capacity_and_committed(
    lh: Option<&HostRecord>,
    hs: Option<&HostState>,
) -> Option<(Resources, Resources)> {
    match (lh, hs) {
        (Some(l), _) if !l.capacity.is_zero() => Some((l.capacity, l.committed())),
        (_, Some(h)) => Some((h.capacity, h.committed)),
        _ => None,
    }
}

/// What to do for one request.
// Steps live for one decision and are moved, not stored in bulk: boxing the large variant
// would cost an allocation per decision for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Answer it: the decision, with the claim and the fleet command that go with it.
    Decide {
        /// Claim of a shadow (shadow hits only).
        claim: Option<Claim>,
        /// The decision.
        decision: AllocationDecision,
        /// Expand (shadow hit); none otherwise.
        command: Option<FleetCommand>,
    },
    /// Decided before (a replay): send its command again (same id, the fleet executes it at
    /// most once) and nothing else.
    Replay {
        /// The command of the earlier decision, if it had one.
        command: Option<FleetCommand>,
    },
    /// Placing by standard allocation: send this and wait for the fleet's answer.
    Place(FleetCommand),
    /// Already waiting for the fleet (the same request delivered again).
    Waiting,
}

#[derive(Debug, Clone)]
struct Pending {
    request: WorkloadRequest,
    attempt: u32,
    host: String,
    tried: Vec<String>,
    refusals: Vec<String>,
    miss: String,
    sent_at: i64,
}

/// The interceptor's state.
pub struct Core {
    settings: Settings,
    /// Shadow id → request that claimed it (own claims, and every claim or hit decision read).
    claimed: FastMap<String, String>,
    /// Request id → its decision and command, for idempotency.
    decided: FastMap<String, (i64, Option<FleetCommand>)>,
    pending: BTreeMap<String, Pending>,
    /// Resources of placements sent and not yet answered, per host.
    reserved: FastMap<String, Resources>,
}

/// Maps on the decision path: foldhash is several times faster than SipHash on short string
/// keys and still seeded per process (workload ids come from users).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Most pool rows the interceptor looks for (`pool/0` up to this, exclusive; a pool holding no
/// slots has no row, so every id is tried).
pub const MAX_POOLS: usize = 16;

/// Command id of the expansion for `request_id`.
pub fn expand_id(request_id: &str) -> String {
    format!("expand-{request_id}")
}

/// Command id of placement attempt `attempt` (1-based) for `request_id`.
pub fn place_id(request_id: &str, attempt: u32) -> String {
    format!("place-{request_id}-{attempt}")
}

fn decision(
    req: &WorkloadRequest,
    outcome: Outcome,
    now: i64,
    reason: String,
) -> AllocationDecision {
    AllocationDecision {
        request_id: req.request_id.clone(),
        workload_id: req.workload_id.clone(),
        outcome,
        host_id: None,
        shadow_id: None,
        requested_at: req.requested_at,
        decided_at: now,
        reason,
    }
}

fn scale(r: &Resources, f: f64) -> Resources {
    Resources {
        cpu_millicores: (r.cpu_millicores as f64 * f).floor() as i64,
        memory_bytes: (r.memory_bytes as f64 * f).floor() as i64,
        disk_io_bytes_per_s: (r.disk_io_bytes_per_s as f64 * f).floor() as i64,
    }
}

impl Core {
    /// An empty state.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            claimed: FastMap::default(),
            decided: FastMap::default(),
            pending: BTreeMap::new(),
            reserved: FastMap::default(),
        }
    }

    /// Settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Records a claim read from the claims topic (this instance's or another's).
    pub fn observe_claim(&mut self, c: &Claim) {
        self.claimed
            .entry(c.shadow_id.clone())
            .or_insert_with(|| c.request_id.clone());
    }

    /// Records a decision read from the decisions topic: a request decided elsewhere (or
    /// before a restart) is not decided again, and a hit's shadow counts as claimed.
    pub fn observe_decision(&mut self, d: &AllocationDecision) {
        if d.request_id.is_empty() {
            return;
        }
        if let Some(s) = &d.shadow_id {
            self.claimed
                .entry(s.clone())
                .or_insert_with(|| d.request_id.clone());
        }
        self.decided
            .entry(d.request_id.clone())
            .or_insert((d.decided_at, None));
    }

    /// Requests waiting for the fleet.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Why a request is bad, if it is.
    fn invalid(&self, r: &WorkloadRequest, w: &World<'_>) -> Option<String> {
        let s = &self.settings;
        if r.request_id.trim().is_empty() {
            return Some("request_id is empty; requests need an id to be answered once".into());
        }
        if r.workload_id.trim().is_empty() {
            return Some("workload_id is empty".into());
        }
        let q = &r.resources;
        for (what, v, max) in [
            ("cpu_millicores", q.cpu_millicores, s.max_cpu_millicores),
            ("memory_bytes", q.memory_bytes, s.max_memory_bytes),
            (
                "disk_io_bytes_per_s",
                q.disk_io_bytes_per_s,
                s.max_disk_io_bytes_per_s,
            ),
        ] {
            if v < 0 {
                return Some(format!("resources.{what} is negative ({v})"));
            }
            if v > max {
                return Some(format!(
                    "resources.{what} = {v} is above the largest allowed request ({max})"
                ));
            }
        }
        if q.cpu_millicores == 0 && q.memory_bytes == 0 {
            return Some("the request asks for no CPU and no memory".into());
        }
        if r.requested_at < w.now - s.max_request_age_ms {
            return Some(format!(
                "requested_at {} is more than {} ms old",
                r.requested_at, s.max_request_age_ms
            ));
        }
        if r.requested_at > w.now + s.max_future_ms {
            return Some(format!(
                "requested_at {} is more than {} ms in the future",
                r.requested_at, s.max_future_ms
            ));
        }
        None
    }

    /// The request's own workload's ready shadow if it has one, else the smallest ready slot
    /// of a pool whose labels it carries and whose slots it fits (docs/scale-up.md).
    fn matching_shadow<'w>(
        &self,
        r: &WorkloadRequest,
        w: &'w World<'_>,
    ) -> Result<(&'w ShadowEntry, &'w umbra_schemas::ShadowCandidate), String> {
        let own = match self.own_shadow(r, w) {
            Ok(hit) => return Ok(hit),
            Err(why) => why,
        };
        self.pool_slot(r, w).ok_or(own)
    }

    /// The smallest pool slot the request fits, ready and unclaimed. Pools are the rows
    /// `pool/0`, `pool/1`, ... (one per size class), so they are found by key, without a scan.
    fn pool_slot<'w>(
        &self,
        r: &WorkloadRequest,
        w: &'w World<'_>,
    ) -> Option<(&'w ShadowEntry, &'w umbra_schemas::ShadowCandidate)> {
        let mut best: Option<(&ShadowEntry, &umbra_schemas::ShadowCandidate)> = None;
        for e in (0..MAX_POOLS).filter_map(|c| w.table.get(&umbra_schemas::pool_id(c))) {
            let Some(labels) = &e.pool_labels else {
                continue;
            };
            if !labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
                || !r.resources.fits_within(&e.requirements)
                || best.is_some_and(|(b, _)| {
                    (b.requirements.cpu_millicores, b.requirements.memory_bytes)
                        <= (e.requirements.cpu_millicores, e.requirements.memory_bytes)
                })
            {
                continue;
            }
            if let Some(c) = e
                .candidates
                .iter()
                .filter(|c| {
                    c.status == ShadowStatus::Healthy && !self.claimed.contains_key(&c.shadow_id)
                })
                .min_by_key(|c| c.rank)
            {
                best = Some((e, c));
            }
        }
        best
    }

    /// The best healthy, unclaimed shadow of the request's row, if the request matches it.
    fn own_shadow<'w>(
        &self,
        r: &WorkloadRequest,
        w: &'w World<'_>,
    ) -> Result<(&'w ShadowEntry, &'w umbra_schemas::ShadowCandidate), String> {
        let e = w.table.get(&r.workload_id).ok_or_else(|| {
            // A workload umbra has never seen is not an error: it gets standard allocation
            // and its decision says why no shadow could have been there.
            if !w.known.contains(&r.workload_id) && w.ledger.held(&r.workload_id).is_zero() {
                format!(
                    "new workload '{}': umbra has no history for it yet, so no shadow was predicted",
                    r.workload_id
                )
            } else {
                "no shadow was staged for this workload".to_string()
            }
        })?;
        let tol = self.settings.window_tolerance_ms;
        if r.requested_at < e.predicted_start - tol || r.requested_at >= e.predicted_end + tol {
            return Err(format!(
                "request at {} is outside the predicted window [{}, {})",
                r.requested_at, e.predicted_start, e.predicted_end
            ));
        }
        let limit = scale(&e.requirements, 1.0 + self.settings.size_tolerance);
        let excess = r.resources.excess_over(&limit);
        if !excess.is_empty() {
            return Err(format!("request exceeds the shadow: {}", excess.join(", ")));
        }
        // A row serves as many requests as it predicts replicas, each on its own shadow; with
        // one (alternative hosts for one need) the first claim takes the row.
        let taken = |c: &umbra_schemas::ShadowCandidate| {
            c.status == ShadowStatus::Claimed || self.claimed.contains_key(&c.shadow_id)
        };
        if e.state == ShadowState::Claimed
            || e.candidates.iter().filter(|c| taken(c)).count() >= e.replicas.max(1) as usize
        {
            return Err("the shadow for this workload was already claimed".into());
        }
        // Full shadows first (they rank first); a placeholder on an alternative host
        // (`alternates = "verify"`) serves only while its host has room for the rest of the
        // request, which the fleet admits when it expands the shadow.
        let ready =
            |c: &&umbra_schemas::ShadowCandidate| c.status == ShadowStatus::Healthy && !taken(c);
        if let Some(c) = e
            .candidates
            .iter()
            .filter(ready)
            .filter(|c| c.reserved.is_none())
            .min_by_key(|c| c.rank)
        {
            return Ok((e, c));
        }
        let mut any = false;
        e.candidates
            .iter()
            .filter(ready)
            .inspect(|_| any = true)
            .filter(|c| {
                c.reserved
                    .is_some_and(|held| self.has_room(&c.host_id, &r.resources.minus(&held), w))
            })
            .min_by_key(|c| c.rank)
            .map(|c| (e, c))
            .ok_or_else(|| {
                if any {
                    "no full shadow ready, and no alternative host has room for the request now"
                        .to_string()
                } else {
                    "no healthy shadow yet".to_string()
                }
            })
    }

    /// Whether `host` can take `extra` more now: its capacity against what the ledger says it
    /// commits and the placements sent to it and not yet answered.
    fn has_room(&self, host: &str, extra: &Resources, w: &World<'_>) -> bool {
        let Some((capacity, committed)) =
            capacity_and_committed(w.ledger.host(host), w.hosts.get(host))
        else {
            return false;
        };
        let reserved = self.reserved.get(host).copied().unwrap_or_default();
        committed.plus(&reserved).plus(extra).fits_within(&capacity)
    }

    /// Best fit on live host state: the healthy host with the least room left after the
    /// placement, among those where it fits (host id breaks ties). Where it fits nowhere
    /// beside the shadows, the best fit counting real workloads only: the fleet preempts the
    /// shadows in its way (docs/interceptor.md), so shadows never cost a request its place.
    fn best_fit(&self, need: &Resources, exclude: &[String], w: &World<'_>) -> Option<String> {
        // Every host the ledger knows, then those only host state knows; the order does not
        // matter because ties are broken by host id.
        let from_ledger = w
            .ledger
            .hosts()
            .iter()
            .map(|(id, l)| (id, Some(l), w.hosts.get(id)));
        let from_state = w
            .hosts
            .iter()
            .filter(|(id, _)| w.ledger.host(id).is_none())
            .map(|(id, h)| (id, None, Some(h)));
        let mut best: Option<(f64, &String)> = None;
        let mut preempting: Option<(f64, &String)> = None;
        let better = |room: f64, id: &String, best: Option<(f64, &String)>| match best {
            None => true,
            Some((b, bid)) => room < b || (room == b && id < bid),
        };
        let left = |c: i64, l: i64| {
            if c > 0 {
                (c - l) as f64 / c as f64
            } else {
                1.0
            }
        };
        for (id, lh, hs) in from_ledger.chain(from_state) {
            if hs.is_some_and(|h| h.health == HostHealth::Unhealthy) || exclude.contains(id) {
                continue;
            }
            if lh.is_some_and(|l| !l.capacity.is_zero() && !l.healthy) {
                continue;
            }
            let Some((capacity, committed)) = capacity_and_committed(lh, hs) else {
                continue;
            };
            let mut load = committed.plus(need);
            let reserved = self.reserved.get(id).copied().unwrap_or_default();
            load = load.plus(&reserved);
            if !load.fits_within(&capacity) {
                // Counting the host's real workloads only (what the ledger knows of it).
                if let Some(l) = lh.filter(|l| !l.shadows.is_empty()) {
                    let real = l.committed_by_workloads().plus(need).plus(&reserved);
                    if real.fits_within(&capacity) {
                        let room = left(capacity.cpu_millicores, real.cpu_millicores)
                            .min(left(capacity.memory_bytes, real.memory_bytes));
                        if better(room, id, preempting) {
                            preempting = Some((room, id));
                        }
                    }
                }
                continue;
            }
            let room = left(capacity.cpu_millicores, load.cpu_millicores)
                .min(left(capacity.memory_bytes, load.memory_bytes));
            if better(room, id, best) {
                best = Some((room, id));
            }
        }
        best.or(preempting).map(|(_, id)| id.clone())
    }

    fn place(&mut self, p: Pending, now: i64) -> Step {
        let cmd = FleetCommand {
            command_id: place_id(&p.request.request_id, p.attempt),
            kind: FleetCommandKind::PlaceWorkload,
            host_id: p.host.clone(),
            target_host_id: None,
            shadow_id: None,
            workload_id: p.request.workload_id.clone(),
            request_id: Some(p.request.request_id.clone()),
            resources: p.request.resources,
            issued_at: now,
        };
        let r = self.reserved.entry(p.host.clone()).or_default();
        *r = r.plus(&p.request.resources);
        self.pending
            .insert(p.request.request_id.clone(), Pending { sent_at: now, ..p });
        Step::Place(cmd)
    }

    fn unreserve(&mut self, host: &str, r: &Resources) {
        if let Some(x) = self.reserved.get_mut(host) {
            *x = x.minus(r);
            if x.is_zero() {
                self.reserved.remove(host);
            }
        }
    }

    fn finish(
        &mut self,
        d: AllocationDecision,
        claim: Option<Claim>,
        command: Option<FleetCommand>,
    ) -> Step {
        if let Some(c) = &claim {
            self.claimed
                .insert(c.shadow_id.clone(), c.request_id.clone());
        }
        if !d.request_id.is_empty() {
            self.decided
                .insert(d.request_id.clone(), (d.decided_at, command.clone()));
        }
        Step::Decide {
            claim,
            decision: d,
            command,
        }
    }

    /// Decides one request.
    pub fn decide(&mut self, r: &WorkloadRequest, w: &World<'_>) -> Step {
        if let Some((_, cmd)) = self.decided.get(&r.request_id) {
            return Step::Replay {
                command: cmd.clone(),
            };
        }
        if self.pending.contains_key(&r.request_id) {
            return Step::Waiting;
        }
        if let Some(why) = self.invalid(r, w) {
            return self.finish(decision(r, Outcome::Rejected, w.now, why), None, None);
        }
        let miss = match self.matching_shadow(r, w) {
            Ok((e, c)) => {
                let mut d = decision(
                    r,
                    Outcome::ShadowHit,
                    w.now,
                    format!(
                        "placed on shadow ranked {} of {} (health {}%)",
                        c.rank,
                        e.candidates.len(),
                        (c.health_score * 100.0).round() as i64
                    ),
                );
                d.host_id = Some(c.host_id.clone());
                d.shadow_id = Some(c.shadow_id.clone());
                let claim = Claim {
                    shadow_id: c.shadow_id.clone(),
                    workload_id: r.workload_id.clone(),
                    request_id: r.request_id.clone(),
                    host_id: c.host_id.clone(),
                    entry_version: e.version,
                    claimed_at: w.now,
                };
                let cmd = FleetCommand {
                    command_id: expand_id(&r.request_id),
                    kind: FleetCommandKind::ExpandShadow,
                    host_id: c.host_id.clone(),
                    target_host_id: None,
                    shadow_id: Some(c.shadow_id.clone()),
                    workload_id: r.workload_id.clone(),
                    request_id: Some(r.request_id.clone()),
                    resources: r.resources,
                    issued_at: w.now,
                };
                return self.finish(d, Some(claim), Some(cmd));
            }
            Err(why) => why,
        };
        // Standard allocation. After a restart, earlier attempts may have been answered.
        let mut tried = Vec::new();
        let mut refusals = Vec::new();
        let mut attempt = 1;
        while let Some(a) = w.ledger.answer(&place_id(&r.request_id, attempt)) {
            if a.kind == FleetEventKind::Placed {
                let mut d = decision(
                    r,
                    Outcome::Standard,
                    w.now,
                    format!("{miss}; placed by standard allocation"),
                );
                d.host_id = Some(a.host_id.clone());
                return self.finish(d, None, None);
            }
            tried.push(a.host_id.clone());
            refusals.push(format!("{}: {}", a.host_id, a.reason));
            attempt += 1;
        }
        self.next_attempt(r.clone(), attempt, tried, refusals, miss, w)
    }

    /// Stops waiting for the placement of `request_id` (its partition moved to another
    /// instance, which decides it).
    pub fn abandon(&mut self, request_id: &str) {
        if let Some(p) = self.pending.remove(request_id) {
            self.unreserve(&p.host, &p.request.resources);
        }
    }

    /// Forgets decisions made more than twice the maximum request age ago: a request that
    /// old is rejected as stale before it could be decided again.
    pub fn prune(&mut self, now: i64) {
        let horizon = now - 2 * self.settings.max_request_age_ms;
        self.decided.retain(|_, (at, _)| *at >= horizon);
    }

    fn next_attempt(
        &mut self,
        request: WorkloadRequest,
        attempt: u32,
        tried: Vec<String>,
        refusals: Vec<String>,
        miss: String,
        w: &World<'_>,
    ) -> Step {
        let host = if attempt > self.settings.max_placement_attempts {
            None
        } else {
            self.best_fit(&request.resources, &tried, w)
        };
        match host {
            Some(host) => self.place(
                Pending {
                    request,
                    attempt,
                    host,
                    tried,
                    refusals,
                    miss,
                    sent_at: w.now,
                },
                w.now,
            ),
            None => {
                let why = if refusals.is_empty() {
                    format!(
                        "{miss}; no healthy host has room for cpu {}m, memory {} B",
                        request.resources.cpu_millicores, request.resources.memory_bytes
                    )
                } else {
                    format!("{miss}; refused by the fleet: {}", refusals.join("; "))
                };
                let d = decision(&request, Outcome::Rejected, w.now, why);
                self.finish(d, None, None)
            }
        }
    }

    /// Follows up waiting placements with the fleet's answers (call after the ledger has
    /// applied new events) and re-sends those unanswered for too long. Returns the steps for
    /// the requests concerned.
    pub fn follow_up(&mut self, w: &World<'_>) -> Vec<(String, Step)> {
        let ids: Vec<String> = self.pending.keys().cloned().collect();
        let mut out = Vec::new();
        for id in ids {
            let Some(p) = self.pending.get(&id) else {
                continue;
            };
            let cid = place_id(&id, p.attempt);
            match w.ledger.answer(&cid).cloned() {
                Some(a) => {
                    let Some(p) = self.pending.remove(&id) else {
                        continue;
                    };
                    self.unreserve(&p.host, &p.request.resources);
                    if a.kind == FleetEventKind::Placed {
                        let mut d = decision(
                            &p.request,
                            Outcome::Standard,
                            w.now,
                            format!("{}; placed by standard allocation", p.miss),
                        );
                        d.host_id = Some(a.host_id.clone());
                        out.push((id, self.finish(d, None, None)));
                    } else {
                        let mut tried = p.tried;
                        tried.push(p.host.clone());
                        let mut refusals = p.refusals;
                        refusals.push(format!("{}: {}", a.host_id, a.reason));
                        let step =
                            self.next_attempt(p.request, p.attempt + 1, tried, refusals, p.miss, w);
                        out.push((id, step));
                    }
                }
                None if w.now - p.sent_at >= self.settings.placement_timeout_ms => {
                    let Some(p) = self.pending.remove(&id) else {
                        continue;
                    };
                    self.unreserve(&p.host, &p.request.resources);
                    // Same attempt, same id: the fleet executes it at most once.
                    out.push((id, self.place(p, w.now)));
                }
                None => {}
            }
        }
        out
    }
}
