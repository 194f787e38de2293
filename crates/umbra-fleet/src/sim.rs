//! The fleet simulator's decisions, pure over its own state: admission of fleet commands,
//! delayed health checks and workload start-ups, injected faults. The simulator's state is a
//! [`Ledger`] of the events it emitted, so a restart restores it by folding its own events.

use std::collections::{BTreeMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use umbra_schemas::{
    FleetCommand, FleetCommandKind, FleetEvent, FleetEventKind, HostMetrics, Resources,
};

use umbra_ledger::{Ledger, ShadowHealth};

/// Fault injection driven by chance (reproducible for a seed). Faults on request go through
/// the simulator's HTTP API instead (see the crate docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSettings {
    /// Seed of the random draws.
    pub seed: u64,
    /// Probability that a command is lost: consumed and never executed.
    pub lose_command_probability: f64,
    /// Probability that a command is delivered twice (the copy must change nothing).
    pub duplicate_command_probability: f64,
    /// Probability that a new shadow fails its first health check.
    pub shadow_failure_probability: f64,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            seed: 1,
            lose_command_probability: 0.0,
            duplicate_command_probability: 0.0,
            shadow_failure_probability: 0.0,
        }
    }
}

/// The simulated fleet (`[service]` of `umbra-fleet-sim`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    /// Number of hosts, named `<host_prefix>000`, `<host_prefix>001`, ...
    pub hosts: usize,
    /// Prefix of host names.
    pub host_prefix: String,
    /// Capacity of every host.
    pub host_capacity: Resources,
    /// Time the fleet takes to act on any command, in milliseconds (a slow control plane).
    pub command_delay_ms: u64,
    /// Time from a shadow's creation to its first health check, in milliseconds.
    pub shadow_ready_delay_ms: u64,
    /// Start-up time of a workload placed by standard allocation (container start, or a new
    /// host), in milliseconds; a workload expanded into a ready shadow starts at once.
    pub workload_start_delay_ms: u64,
    /// How often host metrics are published, in milliseconds.
    pub metrics_interval_ms: u64,
    /// Faults by chance.
    pub faults: FaultSettings,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            hosts: 8,
            host_prefix: "host-".into(),
            host_capacity: Resources {
                cpu_millicores: 16_000,
                memory_bytes: 64 << 30,
                disk_io_bytes_per_s: 500 << 20,
            },
            command_delay_ms: 0,
            shadow_ready_delay_ms: 200,
            workload_start_delay_ms: 30_000,
            metrics_interval_ms: 1_000,
            faults: FaultSettings::default(),
        }
    }
}

impl SimSettings {
    /// Host ids of the configured fleet.
    pub fn host_ids(&self) -> Vec<String> {
        (0..self.hosts)
            .map(|i| format!("{}{i:03}", self.host_prefix))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Timer {
    ShadowCheck(String),
    WorkloadStart { host: String, workload: String },
}

/// Which shadows an injected health-check failure hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowSelector {
    /// One shadow by id.
    Shadow(String),
    /// Every live shadow of a workload.
    Workload(String),
}

/// The simulated fleet.
pub struct Simulator {
    settings: SimSettings,
    ledger: Ledger,
    timers: BTreeMap<(i64, u64), Timer>,
    seq: u64,
    doomed: HashSet<String>,
    rng: StdRng,
}

/// How the reason of a shadow failed to make room for a real workload begins.
pub const PREEMPTED: &str = "preempted";

fn event(kind: FleetEventKind, host: &str, now: i64) -> FleetEvent {
    FleetEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        command_id: None,
        kind,
        host_id: host.to_string(),
        shadow_id: None,
        workload_id: None,
        resources: Resources::ZERO,
        reason: String::new(),
        occurred_at: now,
    }
}

impl Simulator {
    /// A simulator over a ledger restored from its own events.
    pub fn new(settings: SimSettings, ledger: Ledger) -> Self {
        let rng = StdRng::seed_from_u64(settings.faults.seed);
        Self {
            settings,
            ledger,
            timers: BTreeMap::new(),
            seq: 0,
            doomed: HashSet::new(),
            rng,
        }
    }

    /// The fleet as the simulator holds it.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Settings.
    pub fn settings(&self) -> &SimSettings {
        &self.settings
    }

    /// Events that bring a restored fleet in line with the configuration (capacity of new or
    /// resized hosts), and timers for checks that were due when the previous run stopped.
    pub fn boot(&mut self, now: i64) -> Vec<FleetEvent> {
        let mut out = Vec::new();
        for id in self.settings.host_ids() {
            let cap = self.settings.host_capacity;
            if self.ledger.host(&id).map(|h| h.capacity) != Some(cap) {
                let mut e = event(FleetEventKind::HostCapacity, &id, now);
                e.resources = cap;
                e.reason = "configured capacity".into();
                self.emit(e, &mut out);
            }
        }
        let unchecked: Vec<String> = self
            .ledger
            .shadows()
            .iter()
            .filter(|(_, s)| s.health == ShadowHealth::Created)
            .map(|(id, _)| id.clone())
            .collect();
        for s in unchecked {
            self.schedule(now, Timer::ShadowCheck(s));
        }
        out
    }

    fn emit(&mut self, e: FleetEvent, out: &mut Vec<FleetEvent>) {
        self.ledger.apply(&e);
        out.push(e);
    }

    fn schedule(&mut self, due: i64, t: Timer) {
        self.seq += 1;
        self.timers.insert((due, self.seq), t);
    }

    /// Draws whether the next command is lost.
    pub fn roll_lost(&mut self) -> bool {
        let p = self.settings.faults.lose_command_probability;
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    /// Draws whether the next command is delivered twice.
    pub fn roll_duplicate(&mut self) -> bool {
        let p = self.settings.faults.duplicate_command_probability;
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    /// True when the command was executed (or refused) before: a duplicate or a replay.
    pub fn is_duplicate(&self, cmd: &FleetCommand) -> bool {
        self.ledger.answered(&cmd.command_id)
    }

    /// Executes one command. A command id already answered changes nothing and emits nothing.
    pub fn execute(&mut self, cmd: &FleetCommand, now: i64) -> Vec<FleetEvent> {
        let mut out = Vec::new();
        if self.is_duplicate(cmd) {
            return out;
        }
        let answer = |kind: FleetEventKind, host: &str, resources: Resources, reason: String| {
            let mut e = event(kind, host, now);
            e.command_id = Some(cmd.command_id.clone());
            e.shadow_id = cmd.shadow_id.clone();
            e.workload_id = Some(cmd.workload_id.clone());
            e.resources = resources;
            e.reason = reason;
            e
        };
        let refuse =
            |reason: String| answer(FleetEventKind::Refused, &cmd.host_id, cmd.resources, reason);
        let checked = self.check(cmd);
        if checked.is_ok() && cmd.kind == FleetCommandKind::PlaceWorkload {
            for e in self.preempt_for(cmd, now) {
                self.emit(e, &mut out);
            }
        }
        let e = match checked {
            Err(reason) => refuse(reason),
            Ok(()) => match cmd.kind {
                FleetCommandKind::CreateShadow => {
                    let shadow = cmd.shadow_id.clone().unwrap_or_default();
                    self.schedule(
                        now + self.settings.shadow_ready_delay_ms as i64,
                        Timer::ShadowCheck(shadow),
                    );
                    answer(
                        FleetEventKind::Created,
                        &cmd.host_id,
                        cmd.resources,
                        "reserved".into(),
                    )
                }
                FleetCommandKind::ExpandShadow => {
                    // Expanding to zero keeps the shadow's size.
                    let size = match cmd.shadow_id.as_deref().and_then(|s| self.ledger.shadow(s)) {
                        Some(s) if cmd.resources.is_zero() => s.resources,
                        _ => cmd.resources,
                    };
                    answer(
                        FleetEventKind::Expanded,
                        &cmd.host_id,
                        size,
                        format!(
                            "request {} started on its shadow",
                            cmd.request_id.as_deref().unwrap_or("-")
                        ),
                    )
                }
                FleetCommandKind::ReleaseShadow => {
                    let live = cmd
                        .shadow_id
                        .as_deref()
                        .and_then(|s| self.ledger.shadow(s))
                        .map(|s| s.resources);
                    let reason = if live.is_some() {
                        "released"
                    } else {
                        "already gone"
                    };
                    answer(
                        FleetEventKind::Released,
                        &cmd.host_id,
                        live.unwrap_or(Resources::ZERO),
                        reason.into(),
                    )
                }
                FleetCommandKind::MoveShadow => {
                    let target = cmd.target_host_id.clone().unwrap_or_default();
                    let size = cmd
                        .shadow_id
                        .as_deref()
                        .and_then(|s| self.ledger.shadow(s))
                        .map(|s| s.resources)
                        .unwrap_or_default();
                    self.schedule(
                        now + self.settings.shadow_ready_delay_ms as i64,
                        Timer::ShadowCheck(cmd.shadow_id.clone().unwrap_or_default()),
                    );
                    answer(
                        FleetEventKind::Moved,
                        &target,
                        size,
                        format!("moved from {}", cmd.host_id),
                    )
                }
                FleetCommandKind::PlaceWorkload => {
                    self.schedule(
                        now + self.settings.workload_start_delay_ms as i64,
                        Timer::WorkloadStart {
                            host: cmd.host_id.clone(),
                            workload: cmd.workload_id.clone(),
                        },
                    );
                    answer(
                        FleetEventKind::Placed,
                        &cmd.host_id,
                        cmd.resources,
                        "admitted; starting".into(),
                    )
                }
                FleetCommandKind::ReleaseWorkload => {
                    let held = self
                        .ledger
                        .host(&cmd.host_id)
                        .and_then(|h| h.workloads.get(&cmd.workload_id))
                        .copied()
                        .unwrap_or_default();
                    let freed = if cmd.resources.is_zero() {
                        held
                    } else {
                        Resources {
                            cpu_millicores: cmd.resources.cpu_millicores.min(held.cpu_millicores),
                            memory_bytes: cmd.resources.memory_bytes.min(held.memory_bytes),
                            disk_io_bytes_per_s: cmd
                                .resources
                                .disk_io_bytes_per_s
                                .min(held.disk_io_bytes_per_s),
                        }
                    };
                    let reason = if freed.is_zero() {
                        "nothing placed"
                    } else {
                        "released"
                    };
                    let mut e =
                        answer(FleetEventKind::Released, &cmd.host_id, freed, reason.into());
                    e.shadow_id = None;
                    e
                }
                FleetCommandKind::Unknown => refuse("unknown command kind".into()),
            },
        };
        self.emit(e, &mut out);
        out
    }

    /// Why a command cannot be executed, or `Ok` when it can.
    fn check(&self, cmd: &FleetCommand) -> Result<(), String> {
        if cmd.command_id.is_empty() {
            return Err("command_id is empty".into());
        }
        if !cmd.resources.is_non_negative() {
            return Err(format!("negative resources {:?}", cmd.resources));
        }
        let host = self
            .ledger
            .host(&cmd.host_id)
            .ok_or_else(|| format!("unknown host '{}'", cmd.host_id))?;
        let shadow = cmd.shadow_id.as_deref().filter(|s| !s.is_empty());
        let live = shadow.and_then(|s| self.ledger.shadow(s));
        let admit = |host_id: &str, need: &Resources| -> Result<(), String> {
            let h = self
                .ledger
                .host(host_id)
                .ok_or_else(|| format!("unknown host '{host_id}'"))?;
            if !h.healthy {
                return Err(format!("host {host_id} is unhealthy"));
            }
            let excess = need.excess_over(&h.free());
            if excess.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "insufficient capacity on {host_id}: {}",
                    excess.join(", ")
                ))
            }
        };
        match cmd.kind {
            FleetCommandKind::CreateShadow => {
                let s = shadow.ok_or("CREATE_SHADOW without shadow_id")?;
                if self.ledger.shadow(s).is_some() || self.ledger.ended(s).is_some() {
                    return Err(format!("shadow {s} exists or existed already"));
                }
                if cmd.resources.is_zero() {
                    return Err("empty reservation".into());
                }
                admit(&cmd.host_id, &cmd.resources)
            }
            FleetCommandKind::ExpandShadow => {
                let s = shadow.ok_or("EXPAND_SHADOW without shadow_id")?;
                let r = live.ok_or_else(|| format!("shadow {s} is not live"))?;
                if r.host_id != cmd.host_id {
                    return Err(format!(
                        "shadow {s} is on {}, not {}",
                        r.host_id, cmd.host_id
                    ));
                }
                // A pool's slot serves any workload; another workload's shadow does not.
                if r.workload_id != cmd.workload_id && !umbra_schemas::is_pool_id(&r.workload_id) {
                    return Err(format!("shadow {s} belongs to workload {}", r.workload_id));
                }
                admit(&cmd.host_id, &cmd.resources.minus(&r.resources))
            }
            FleetCommandKind::ReleaseShadow => {
                shadow.ok_or("RELEASE_SHADOW without shadow_id")?;
                Ok(())
            }
            FleetCommandKind::MoveShadow => {
                let s = shadow.ok_or("MOVE_SHADOW without shadow_id")?;
                let r = live.ok_or_else(|| format!("shadow {s} is not live"))?;
                if r.host_id != cmd.host_id {
                    return Err(format!(
                        "shadow {s} is on {}, not {}",
                        r.host_id, cmd.host_id
                    ));
                }
                let target = cmd
                    .target_host_id
                    .as_deref()
                    .ok_or("MOVE_SHADOW without target_host_id")?;
                if target == cmd.host_id {
                    return Err("MOVE_SHADOW to the host it is on".into());
                }
                admit(target, &r.resources)
            }
            FleetCommandKind::PlaceWorkload => {
                if cmd.resources.is_zero() {
                    return Err("empty placement".into());
                }
                // Shadows give way to a real workload, as the Kubernetes scheduler preempts
                // placeholder pods of negative priority: only real workloads can refuse it.
                if !host.healthy {
                    return Err(format!("host {} is unhealthy", cmd.host_id));
                }
                let excess = cmd
                    .resources
                    .excess_over(&host.capacity.minus(&host.committed_by_workloads()));
                if excess.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "insufficient capacity on {} (real workloads fill it): {}",
                        cmd.host_id,
                        excess.join(", ")
                    ))
                }
            }
            FleetCommandKind::ReleaseWorkload | FleetCommandKind::Unknown => {
                let _ = host;
                Ok(())
            }
        }
    }

    /// The shadows on `cmd`'s host to fail so that its workload fits, largest first: as few
    /// as the placement needs (none when it fits beside them).
    fn preempt_for(&self, cmd: &FleetCommand, now: i64) -> Vec<FleetEvent> {
        let Some(h) = self.ledger.host(&cmd.host_id) else {
            return Vec::new();
        };
        let mut free = h.free();
        let mut shadows: Vec<(&String, &Resources)> = h.shadows.iter().collect();
        shadows.sort_by(|a, b| {
            (b.1.cpu_millicores, b.1.memory_bytes, a.0).cmp(&(
                a.1.cpu_millicores,
                a.1.memory_bytes,
                b.0,
            ))
        });
        let mut out = Vec::new();
        for (id, r) in shadows {
            if cmd.resources.excess_over(&free).is_empty() {
                break;
            }
            free = free.plus(r);
            let mut e = event(FleetEventKind::Failed, &cmd.host_id, now);
            e.shadow_id = Some(id.clone());
            e.workload_id = self.ledger.shadow(id).map(|s| s.workload_id.clone());
            e.resources = *r;
            e.reason = format!(
                "{PREEMPTED}: workload {} placed on the host (command {})",
                cmd.workload_id, cmd.command_id
            );
            out.push(e);
        }
        out
    }

    /// Events of timers due at `now`: health checks of new shadows, workload start-ups.
    pub fn tick(&mut self, now: i64) -> Vec<FleetEvent> {
        let mut out = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            match timer {
                Timer::ShadowCheck(s) => {
                    let Some(r) = self.ledger.shadow(&s).cloned() else {
                        continue;
                    };
                    let host_ok = self.ledger.host(&r.host_id).is_some_and(|h| h.healthy);
                    let p = self.settings.faults.shadow_failure_probability;
                    let by_chance = p > 0.0 && self.rng.random_bool(p.min(1.0));
                    let mut e;
                    if self.doomed.remove(&s) || by_chance {
                        e = event(FleetEventKind::Failed, &r.host_id, now);
                        e.reason = "health check failed (injected)".into();
                    } else if host_ok {
                        e = event(FleetEventKind::Healthy, &r.host_id, now);
                        e.reason = "health check passed".into();
                    } else {
                        e = event(FleetEventKind::Unhealthy, &r.host_id, now);
                        e.reason = format!("host {} is unhealthy", r.host_id);
                    }
                    e.shadow_id = Some(s);
                    e.workload_id = Some(r.workload_id);
                    e.resources = r.resources;
                    self.emit(e, &mut out);
                }
                Timer::WorkloadStart { host, workload } => {
                    let mut e = event(FleetEventKind::Healthy, &host, now);
                    e.workload_id = Some(workload);
                    e.reason = "workload started".into();
                    self.emit(e, &mut out);
                }
            }
        }
        out
    }

    /// Makes the selected shadows fail their health check now. Returns the events.
    pub fn fail_shadows(&mut self, sel: &ShadowSelector, now: i64) -> Vec<FleetEvent> {
        let ids: Vec<String> = match sel {
            ShadowSelector::Shadow(s) => vec![s.clone()],
            ShadowSelector::Workload(w) => {
                let mut v: Vec<String> = self
                    .ledger
                    .shadows()
                    .iter()
                    .filter(|(_, r)| &r.workload_id == w)
                    .map(|(id, _)| id.clone())
                    .collect();
                v.sort();
                v
            }
        };
        let mut out = Vec::new();
        for s in ids {
            let Some(r) = self.ledger.shadow(&s).cloned() else {
                continue;
            };
            let mut e = event(FleetEventKind::Failed, &r.host_id, now);
            e.shadow_id = Some(s);
            e.workload_id = Some(r.workload_id);
            e.resources = r.resources;
            e.reason = "health check failed (injected)".into();
            self.emit(e, &mut out);
        }
        out
    }

    /// Marks a shadow to fail its next scheduled health check.
    pub fn doom(&mut self, shadow_id: &str) {
        self.doomed.insert(shadow_id.to_string());
    }

    /// Turns a host unhealthy or healthy again; its shadows' health checks follow.
    pub fn set_host_health(&mut self, host: &str, healthy: bool, now: i64) -> Vec<FleetEvent> {
        let mut out = Vec::new();
        let Some(h) = self.ledger.host(host) else {
            return out;
        };
        if h.healthy == healthy {
            return out;
        }
        let shadows: Vec<String> = h.shadows.keys().cloned().collect();
        let kind = if healthy {
            FleetEventKind::Healthy
        } else {
            FleetEventKind::Unhealthy
        };
        let mut e = event(kind, host, now);
        e.reason = if healthy {
            "host recovered (injected)"
        } else {
            "host unhealthy (injected)"
        }
        .into();
        self.emit(e, &mut out);
        for s in shadows {
            let Some(r) = self.ledger.shadow(&s).cloned() else {
                continue;
            };
            let mut e = event(kind, host, now);
            e.shadow_id = Some(s);
            e.workload_id = Some(r.workload_id);
            e.resources = r.resources;
            e.reason = format!(
                "host {host} is {}",
                if healthy { "healthy" } else { "unhealthy" }
            );
            self.emit(e, &mut out);
        }
        out
    }

    /// One metrics sample per host. Used is what placed workloads requested (shadows are
    /// pause containers and use next to nothing); committed adds the shadow reservations.
    pub fn host_metrics(&self, now: i64) -> Vec<HostMetrics> {
        self.ledger
            .hosts()
            .iter()
            .map(|(id, h)| HostMetrics {
                host_id: id.clone(),
                sample_time: now,
                capacity: h.capacity,
                used: h.workloads.values().fold(Resources::ZERO, |a, r| a.plus(r)),
                healthy: h.healthy,
                committed: Some(h.committed()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res(cpu: i64, mem_gib: i64) -> Resources {
        Resources {
            cpu_millicores: cpu,
            memory_bytes: mem_gib << 30,
            disk_io_bytes_per_s: 0,
        }
    }

    fn sim(hosts: usize) -> Simulator {
        let mut s = Simulator::new(
            SimSettings {
                hosts,
                host_capacity: res(4_000, 16),
                shadow_ready_delay_ms: 10,
                workload_start_delay_ms: 100,
                ..SimSettings::default()
            },
            Ledger::default(),
        );
        s.boot(0);
        s
    }

    fn cmd(
        id: &str,
        kind: FleetCommandKind,
        host: &str,
        shadow: Option<&str>,
        r: Resources,
    ) -> FleetCommand {
        FleetCommand {
            command_id: id.into(),
            kind,
            host_id: host.into(),
            target_host_id: None,
            shadow_id: shadow.map(Into::into),
            workload_id: "w1".into(),
            request_id: None,
            resources: r,
            issued_at: 0,
        }
    }

    #[test]
    fn create_check_expand_release() {
        let mut s = sim(2);
        let e = s.execute(
            &cmd(
                "c1",
                FleetCommandKind::CreateShadow,
                "host-000",
                Some("s1"),
                res(1_000, 2),
            ),
            1,
        );
        assert_eq!(e[0].kind, FleetEventKind::Created);
        assert!(s.tick(5).is_empty(), "check not due yet");
        let e = s.tick(11);
        assert_eq!(e[0].kind, FleetEventKind::Healthy);
        assert_eq!(
            s.ledger().host("host-000").map(|h| h.committed()),
            Some(res(1_000, 2))
        );
        let e = s.execute(
            &cmd(
                "c2",
                FleetCommandKind::ExpandShadow,
                "host-000",
                Some("s1"),
                res(1_500, 2),
            ),
            12,
        );
        assert_eq!(e[0].kind, FleetEventKind::Expanded, "{:?}", e[0].reason);
        assert_eq!(s.ledger().held("w1"), res(1_500, 2));
        assert!(s.ledger().shadow("s1").is_none());
        let e = s.execute(
            &cmd(
                "c3",
                FleetCommandKind::ReleaseWorkload,
                "host-000",
                None,
                Resources::ZERO,
            ),
            13,
        );
        assert_eq!(e[0].kind, FleetEventKind::Released);
        assert_eq!(s.ledger().held("w1"), Resources::ZERO);
    }

    #[test]
    fn refuses_beyond_capacity_and_says_why() {
        let mut s = sim(1);
        let e = s.execute(
            &cmd(
                "c1",
                FleetCommandKind::CreateShadow,
                "host-000",
                Some("s1"),
                res(3_000, 2),
            ),
            1,
        );
        assert_eq!(e[0].kind, FleetEventKind::Created);
        // A second shadow does not fit beside the first.
        let e = s.execute(
            &cmd(
                "c2",
                FleetCommandKind::CreateShadow,
                "host-000",
                Some("s1b"),
                res(2_000, 2),
            ),
            2,
        );
        assert_eq!(e[0].kind, FleetEventKind::Refused);
        assert!(
            e[0].reason
                .contains("insufficient capacity on host-000: cpu 2000m > 1000m"),
            "{}",
            e[0].reason
        );
        // A real workload does: the shadow in its way is preempted first.
        let e = s.execute(
            &cmd(
                "c2w",
                FleetCommandKind::PlaceWorkload,
                "host-000",
                None,
                res(2_000, 2),
            ),
            2,
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].kind, FleetEventKind::Failed);
        assert_eq!(e[0].shadow_id.as_deref(), Some("s1"));
        assert!(e[0].reason.starts_with(PREEMPTED), "{}", e[0].reason);
        assert_eq!(e[1].kind, FleetEventKind::Placed);
        assert!(s.ledger().overcommitted().is_empty());
        // Beyond what real workloads leave, it is refused.
        let e = s.execute(
            &cmd(
                "c2x",
                FleetCommandKind::PlaceWorkload,
                "host-000",
                None,
                res(3_000, 2),
            ),
            2,
        );
        assert_eq!(e[0].kind, FleetEventKind::Refused);
        assert!(
            e[0].reason
                .contains("(real workloads fill it): cpu 3000m > 2000m"),
            "{}",
            e[0].reason
        );
        let e = s.execute(
            &cmd(
                "c3",
                FleetCommandKind::CreateShadow,
                "nowhere",
                Some("s2"),
                res(1, 0),
            ),
            3,
        );
        assert!(e[0].reason.contains("unknown host"));
        assert!(s.ledger().overcommitted().is_empty());
    }

    #[test]
    fn duplicate_command_changes_nothing() {
        let mut s = sim(1);
        let c = cmd(
            "c1",
            FleetCommandKind::PlaceWorkload,
            "host-000",
            None,
            res(1_000, 1),
        );
        assert_eq!(s.execute(&c, 1).len(), 1);
        assert!(s.execute(&c, 2).is_empty());
        assert_eq!(s.ledger().held("w1"), res(1_000, 1));
    }

    #[test]
    fn move_and_unhealthy_host() {
        let mut s = sim(2);
        s.execute(
            &cmd(
                "c1",
                FleetCommandKind::CreateShadow,
                "host-000",
                Some("s1"),
                res(1_000, 1),
            ),
            0,
        );
        let mut m = cmd(
            "c2",
            FleetCommandKind::MoveShadow,
            "host-000",
            Some("s1"),
            Resources::ZERO,
        );
        m.target_host_id = Some("host-001".into());
        let e = s.execute(&m, 1);
        assert_eq!(e[0].kind, FleetEventKind::Moved);
        assert_eq!(
            s.ledger().shadow("s1").map(|r| r.host_id.as_str()),
            Some("host-001")
        );
        assert_eq!(
            s.ledger().host("host-000").map(|h| h.committed()),
            Some(Resources::ZERO)
        );
        let e = s.set_host_health("host-001", false, 2);
        assert_eq!(e.len(), 2, "host event and one shadow event");
        assert_eq!(
            s.ledger().shadow("s1").map(|r| r.health),
            Some(ShadowHealth::Unhealthy)
        );
        let e = s.execute(
            &cmd(
                "c3",
                FleetCommandKind::CreateShadow,
                "host-001",
                Some("s2"),
                res(1, 0),
            ),
            3,
        );
        assert_eq!(e[0].kind, FleetEventKind::Refused);
    }

    #[test]
    fn restored_ledger_equals_live_one() {
        let mut s = sim(2);
        let mut log = Vec::new();
        log.extend(s.execute(
            &cmd(
                "c1",
                FleetCommandKind::CreateShadow,
                "host-000",
                Some("s1"),
                res(1_000, 1),
            ),
            0,
        ));
        log.extend(s.tick(100));
        log.extend(s.execute(
            &cmd(
                "c2",
                FleetCommandKind::PlaceWorkload,
                "host-001",
                None,
                res(500, 1),
            ),
            1,
        ));
        s.doom("s1");
        let mut fresh = Ledger::default();
        // The boot events came first.
        for h in s.settings().host_ids() {
            let mut e = event(FleetEventKind::HostCapacity, &h, 0);
            e.resources = s.settings().host_capacity;
            fresh.apply(&e);
        }
        for e in &log {
            fresh.apply(e);
        }
        assert_eq!(fresh.hosts(), s.ledger().hosts());
        assert!(fresh.answered("c1") && fresh.answered("c2"));
    }

    proptest! {
        /// Whatever commands arrive, in whatever order and however often, no host is ever
        /// committed beyond its capacity, and every command id is answered at most once.
        #[test]
        fn never_over_capacity(ops in proptest::collection::vec((0u8..6, 0u8..4, 0u8..12, 0i64..3_000, 0i64..8), 1..200)) {
            let mut s = sim(3);
            let mut answers: std::collections::HashMap<String, usize> = Default::default();
            for (i, (kind, host, shadow, cpu, mem)) in ops.into_iter().enumerate() {
                let kind = match kind {
                    0 => FleetCommandKind::CreateShadow,
                    1 => FleetCommandKind::ExpandShadow,
                    2 => FleetCommandKind::ReleaseShadow,
                    3 => FleetCommandKind::PlaceWorkload,
                    4 => FleetCommandKind::ReleaseWorkload,
                    _ => FleetCommandKind::MoveShadow,
                };
                // Ids repeat on purpose: duplicates must be no-ops.
                let id = format!("c{}", i % 50);
                let mut c = cmd(&id, kind, &format!("host-{host:03}"), Some(&format!("s{shadow}")), res(cpu, mem));
                c.target_host_id = Some(format!("host-{:03}", (host + 1) % 3));
                for e in s.execute(&c, i as i64) {
                    if let Some(cid) = &e.command_id { *answers.entry(cid.clone()).or_default() += 1; }
                }
                s.tick(i as i64);
                prop_assert!(s.ledger().overcommitted().is_empty(), "{:?}", s.ledger().overcommitted());
            }
            prop_assert!(answers.values().all(|n| *n == 1));
        }
    }
}
