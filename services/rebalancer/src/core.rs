//! The rebalancer's decisions, pure over local state: which hosts are overloaded (with a
//! dwell time and hysteresis, so that a host does not flap), and which shadows to move off
//! them, to where, within a move budget and without ping-pong.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use umbra_ledger::Ledger;
use umbra_schemas::{
    DemandForecast, HostHealth, HostState, ReshadowRequest, Resources, ShadowEntry, ShadowStatus,
};

/// Settings of the rebalancer (`[service]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// A host is over when its utilization (the busiest resource, used / capacity, now or
    /// predicted over `prediction_window_ms`) is above this fraction.
    pub threshold: f64,
    /// An overloaded host is clear again only below `threshold - hysteresis`.
    pub hysteresis: f64,
    /// How long a host must stay over (or clear) before it counts as overloaded (or not), ms.
    pub dwell_ms: i64,
    /// How far ahead forecasts of the workloads on a host count toward its utilization, ms.
    pub prediction_window_ms: i64,
    /// Re-shadow requests per planning interval, at most.
    pub max_moves_per_interval: usize,
    /// How often moves are planned, in milliseconds.
    pub interval_ms: u64,
    /// A shadow never moves from A to B within this long of a move from B to A, ms.
    pub cooldown_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            threshold: 0.85,
            hysteresis: 0.10,
            dwell_ms: 10 * 60_000,
            prediction_window_ms: 3_600_000,
            max_moves_per_interval: 10,
            interval_ms: 30_000,
            cooldown_ms: 30 * 60_000,
        }
    }
}

impl Settings {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err("service.threshold must be in (0, 1]".into());
        }
        if !(self.hysteresis >= 0.0 && self.hysteresis < self.threshold) {
            return Err("service.hysteresis must be in [0, threshold)".into());
        }
        if self.dwell_ms < 0 || self.cooldown_ms < 0 || self.interval_ms == 0 {
            return Err("service.dwell_ms, cooldown_ms must be ≥ 0 and interval_ms > 0".into());
        }
        Ok(())
    }
}

/// Utilization of `used` on `capacity`: the busiest resource's fraction.
pub fn utilization(used: &Resources, capacity: &Resources) -> f64 {
    let f = |u: i64, c: i64| if c > 0 { u as f64 / c as f64 } else { 0.0 };
    f(used.cpu_millicores, capacity.cpu_millicores)
        .max(f(used.memory_bytes, capacity.memory_bytes))
        .max(f(used.disk_io_bytes_per_s, capacity.disk_io_bytes_per_s))
}

/// Per-host overload state with dwell and hysteresis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Watch {
    /// Counted as overloaded.
    pub overloaded: bool,
    /// Since when the host has been on the other side of its current state's line.
    pub crossing_since: Option<i64>,
    /// Last utilization seen.
    pub last: f64,
}

impl Watch {
    /// Takes a new utilization sample at `now`; returns true when the state flipped.
    pub fn observe(&mut self, util: f64, now: i64, s: &Settings) -> bool {
        self.last = util;
        let crossing = if self.overloaded {
            util < s.threshold - s.hysteresis
        } else {
            util > s.threshold
        };
        if !crossing {
            self.crossing_since = None;
            return false;
        }
        let since = *self.crossing_since.get_or_insert(now);
        if now - since >= s.dwell_ms {
            self.overloaded = !self.overloaded;
            self.crossing_since = None;
            return true;
        }
        false
    }
}

/// A host as planning sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    /// Capacity.
    pub capacity: Resources,
    /// Measured use.
    pub used: Resources,
    /// Predicted use over the window (≥ used).
    pub predicted: Resources,
    /// Committed: placed workloads plus shadows.
    pub committed: Resources,
    /// Healthy enough to receive shadows.
    pub healthy: bool,
}

/// The use a host's workloads are predicted to reach over the window: each workload's
/// forecast peak (80% bound) split by the share of its placements on this host, never below
/// what is measured now.
pub fn predicted_use(
    host: &str,
    used: &Resources,
    ledger: &Ledger,
    forecasts: &HashMap<String, DemandForecast>,
    now: i64,
    window_ms: i64,
) -> Resources {
    let Some(h) = ledger.host(host) else {
        return *used;
    };
    let mut total = Resources::ZERO;
    for (w, placed) in &h.workloads {
        let held = ledger.held(w);
        let share = |p: i64, t: i64| if t > 0 { p as f64 / t as f64 } else { 0.0 };
        let Some(f) = forecasts.get(w) else {
            total = total.plus(placed);
            continue;
        };
        let mut peak = [0.0f64; 3];
        for hz in &f.horizons {
            for p in &hz.points {
                if p.time + i64::from(hz.step_seconds) * 1000 <= now || p.time >= now + window_ms {
                    continue;
                }
                peak[0] = peak[0].max(p.cpu_millicores.upper_80);
                peak[1] = peak[1].max(p.memory_bytes.upper_80);
                peak[2] = peak[2].max(p.disk_io_bytes_per_s.upper_80);
            }
        }
        let part = Resources {
            cpu_millicores: (peak[0] * share(placed.cpu_millicores, held.cpu_millicores)) as i64,
            memory_bytes: (peak[1] * share(placed.memory_bytes, held.memory_bytes)) as i64,
            disk_io_bytes_per_s: (peak[2]
                * share(placed.disk_io_bytes_per_s, held.disk_io_bytes_per_s))
                as i64,
        };
        total = total.plus(&part);
    }
    total.max(used)
}

/// A planned move.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// Workload of the shadow.
    pub workload_id: String,
    /// Shadow to move.
    pub shadow_id: String,
    /// Overloaded host it leaves.
    pub from: String,
    /// Destination.
    pub to: String,
    /// Size of the shadow.
    pub size: Resources,
    /// Why.
    pub reason: String,
}

/// The rebalancer's state: per-host watches, recent moves, shadows already asked to move.
#[derive(Debug, Default)]
pub struct Planner {
    watches: BTreeMap<String, Watch>,
    recent: Vec<(String, String, i64)>,
    requested: HashSet<String>,
}

impl Planner {
    /// Overload state of a host.
    pub fn watch(&self, host: &str) -> Option<&Watch> {
        self.watches.get(host)
    }

    /// Hosts counted as overloaded.
    pub fn overloaded(&self) -> Vec<String> {
        self.watches
            .iter()
            .filter(|(_, w)| w.overloaded)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Updates every host's watch from its current and predicted utilization.
    pub fn observe(&mut self, hosts: &BTreeMap<String, HostView>, now: i64, s: &Settings) {
        for (id, h) in hosts {
            let util =
                utilization(&h.used, &h.capacity).max(utilization(&h.predicted, &h.capacity));
            self.watches
                .entry(id.clone())
                .or_default()
                .observe(util, now, s);
        }
        self.watches.retain(|id, _| hosts.contains_key(id));
    }

    /// Plans at most `max_moves_per_interval` moves of shadows off overloaded hosts. A move
    /// never makes its destination cross `threshold - hysteresis` (current or predicted, with
    /// the shadow counted as used), never goes to a host the row already uses, never reverses
    /// a recent move, and never exceeds the destination's capacity.
    pub fn plan(
        &mut self,
        hosts: &BTreeMap<String, HostView>,
        table: &HashMap<String, ShadowEntry>,
        now: i64,
        s: &Settings,
    ) -> Vec<Move> {
        self.recent.retain(|(_, _, at)| now - at < s.cooldown_ms);
        // Shadows that are gone from the table need no more asking.
        let live: HashSet<&str> = table
            .values()
            .flat_map(|e| e.candidates.iter().map(|c| c.shadow_id.as_str()))
            .collect();
        self.requested.retain(|id| live.contains(id.as_str()));
        let mut load: BTreeMap<&String, (Resources, Resources, Resources)> = hosts
            .iter()
            .map(|(id, h)| (id, (h.used, h.predicted, h.committed)))
            .collect();
        let mut sources: Vec<(&String, f64)> = self
            .watches
            .iter()
            .filter(|(id, w)| w.overloaded && hosts.contains_key(*id))
            .map(|(id, w)| (id, w.last))
            .collect();
        sources.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut entries: Vec<&ShadowEntry> = table.values().collect();
        entries.sort_by(|a, b| a.workload_id.cmp(&b.workload_id));
        let mut moves = Vec::new();
        for (from, util) in sources {
            for e in &entries {
                if moves.len() >= s.max_moves_per_interval {
                    return moves;
                }
                let Some(c) = e.candidates.iter().find(|c| {
                    &c.host_id == from
                        && matches!(
                            c.status,
                            ShadowStatus::Healthy
                                | ShadowStatus::Unhealthy
                                | ShadowStatus::Requested
                        )
                        && !self.requested.contains(&c.shadow_id)
                }) else {
                    continue;
                };
                let used_hosts: HashSet<&str> =
                    e.candidates.iter().map(|c| c.host_id.as_str()).collect();
                let size = e.requirements;
                let limit = s.threshold - s.hysteresis;
                let mut best: Option<(f64, &String)> = None;
                for (to, h) in hosts {
                    if to == from || used_hosts.contains(to.as_str()) || !h.healthy {
                        continue;
                    }
                    if self.watches.get(to).is_some_and(|w| w.overloaded) {
                        continue;
                    }
                    if self.recent.iter().any(|(a, b, _)| a == to && b == from) {
                        continue;
                    }
                    let (used, predicted, committed) = load[to];
                    if !committed.plus(&size).fits_within(&h.capacity) {
                        continue;
                    }
                    let after = utilization(&used.plus(&size), &h.capacity)
                        .max(utilization(&predicted.plus(&size), &h.capacity));
                    if after > limit {
                        continue;
                    }
                    if best.is_none_or(|(b, bid)| after < b || (after == b && to < bid)) {
                        best = Some((after, to));
                    }
                }
                let Some((_, to)) = best else { continue };
                let to = to.clone();
                if let Some(l) = load.get_mut(&to) {
                    l.0 = l.0.plus(&size);
                    l.1 = l.1.plus(&size);
                    l.2 = l.2.plus(&size);
                }
                self.requested.insert(c.shadow_id.clone());
                self.recent.push((from.clone(), to.clone(), now));
                moves.push(Move {
                    workload_id: e.workload_id.clone(),
                    shadow_id: c.shadow_id.clone(),
                    from: from.clone(),
                    to,
                    size,
                    reason: format!(
                        "{} at {:.0}% > {:.0}% for {} s",
                        from,
                        util * 100.0,
                        s.threshold * 100.0,
                        s.dwell_ms / 1000
                    ),
                });
            }
        }
        moves
    }
}

/// The re-shadow request of a move (id derived from the shadow: a shadow moves at most once).
pub fn request_of(m: &Move, now: i64) -> ReshadowRequest {
    ReshadowRequest {
        request_id: format!("reshadow-{}", m.shadow_id),
        workload_id: m.workload_id.clone(),
        shadow_id: m.shadow_id.clone(),
        from_host_id: m.from.clone(),
        to_host_id: Some(m.to.clone()),
        reason: m.reason.clone(),
        requested_at: now,
    }
}

/// Host views from host state and the ledger.
pub fn host_views(
    host_state: &HashMap<String, HostState>,
    ledger: &Ledger,
    forecasts: &HashMap<String, DemandForecast>,
    now: i64,
    s: &Settings,
) -> BTreeMap<String, HostView> {
    host_state
        .iter()
        .map(|(id, h)| {
            let committed = ledger.host(id).map_or(h.committed, |l| l.committed());
            (
                id.clone(),
                HostView {
                    capacity: h.capacity,
                    used: h.used,
                    predicted: predicted_use(
                        id,
                        &h.used,
                        ledger,
                        forecasts,
                        now,
                        s.prediction_window_ms,
                    ),
                    committed,
                    healthy: h.health != HostHealth::Unhealthy
                        && ledger.host(id).is_none_or(|l| l.healthy),
                },
            )
        })
        .collect()
}
