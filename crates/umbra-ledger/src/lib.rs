//! What the fleet holds, folded from fleet events: per host its capacity, health, shadow
//! reservations and placed workloads. The fleet simulator restores its own state with it; the
//! shadow manager, the interceptor, the rebalancer, the Kubernetes agent and the history
//! checker use it as their view of the fleet. A crate of its own, depending on the contracts
//! alone, so that the decision cores that read it need no Kafka runtime. `apply` is pure and order-sensitive only per host, which is how fleet events are
//! partitioned (keyed by host id).

use std::collections::{BTreeMap, HashMap};

use umbra_schemas::{FleetEvent, FleetEventKind, Resources};

/// Health of a shadow as its health checks report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowHealth {
    /// Reserved, not yet checked.
    Created,
    /// Passing its health check.
    Healthy,
    /// Failing its health check (it still holds its reservation).
    Unhealthy,
}

/// One live shadow reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowRecord {
    /// Workload it was staged for.
    pub workload_id: String,
    /// Host it reserves capacity on.
    pub host_id: String,
    /// Reserved resources.
    pub resources: Resources,
    /// Last health reported.
    pub health: ShadowHealth,
}

/// How a shadow stopped existing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowEnd {
    /// Released on request.
    Released,
    /// Failed (health check, preemption, eviction), with the fleet's reason.
    Failed(String),
    /// Its creation was refused, with the fleet's reason.
    Refused(String),
    /// Expanded into the real workload.
    Expanded,
}

/// The fleet's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What happened (`CREATED`, `PLACED`, `REFUSED`, ...).
    pub kind: FleetEventKind,
    /// Host the answer came from.
    pub host_id: String,
    /// The fleet's reason.
    pub reason: String,
}

/// One host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    /// Allocatable capacity.
    pub capacity: Resources,
    /// False after an UNHEALTHY host event, until a HEALTHY one.
    pub healthy: bool,
    /// Live shadows on the host, by shadow id.
    pub shadows: BTreeMap<String, Resources>,
    /// Resources of placed workloads, by workload id.
    pub workloads: BTreeMap<String, Resources>,
}

impl HostRecord {
    fn new(capacity: Resources) -> Self {
        Self {
            capacity,
            healthy: true,
            shadows: BTreeMap::new(),
            workloads: BTreeMap::new(),
        }
    }

    /// Placed workloads plus live shadows.
    pub fn committed(&self) -> Resources {
        self.shadows
            .values()
            .chain(self.workloads.values())
            .fold(Resources::ZERO, |a, r| a.plus(r))
    }

    /// Placed workloads only: what standard allocation cannot take back (shadows it can).
    pub fn committed_by_workloads(&self) -> Resources {
        self.workloads
            .values()
            .fold(Resources::ZERO, |a, r| a.plus(r))
    }

    /// Capacity not committed.
    pub fn free(&self) -> Resources {
        self.capacity.minus(&self.committed())
    }
}

/// The fleet as its events describe it.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    hosts: BTreeMap<String, HostRecord>,
    shadows: HashMap<String, ShadowRecord>,
    ended: HashMap<String, ShadowEnd>,
    answers: HashMap<String, Answer>,
    /// Placed resources per workload across hosts: an index of `hosts[*].workloads`.
    held: HashMap<String, Resources>,
    /// Size of each workload's most recent placement (a replica): see [`Ledger::replica`].
    replica: HashMap<String, Resources>,
}

impl Ledger {
    /// Applies one event.
    pub fn apply(&mut self, e: &FleetEvent) {
        if let Some(c) = &e.command_id {
            self.answers.entry(c.clone()).or_insert_with(|| Answer {
                kind: e.kind,
                host_id: e.host_id.clone(),
                reason: e.reason.clone(),
            });
        }
        let shadow = e.shadow_id.as_deref();
        let workload = e.workload_id.as_deref();
        match e.kind {
            FleetEventKind::HostCapacity => {
                self.hosts
                    .entry(e.host_id.clone())
                    .and_modify(|h| h.capacity = e.resources)
                    .or_insert_with(|| HostRecord::new(e.resources));
            }
            FleetEventKind::Created => {
                if let (Some(s), Some(w)) = (shadow, workload) {
                    self.hosts
                        .entry(e.host_id.clone())
                        .or_insert_with(|| HostRecord::new(Resources::ZERO))
                        .shadows
                        .insert(s.to_string(), e.resources);
                    self.shadows.insert(
                        s.to_string(),
                        ShadowRecord {
                            workload_id: w.to_string(),
                            host_id: e.host_id.clone(),
                            resources: e.resources,
                            health: ShadowHealth::Created,
                        },
                    );
                }
            }
            FleetEventKind::Healthy | FleetEventKind::Unhealthy => {
                let healthy = e.kind == FleetEventKind::Healthy;
                match (shadow, workload) {
                    (Some(s), _) => {
                        if let Some(r) = self.shadows.get_mut(s) {
                            r.health = if healthy {
                                ShadowHealth::Healthy
                            } else {
                                ShadowHealth::Unhealthy
                            };
                        }
                    }
                    // A workload starting up: nothing to account.
                    (None, Some(_)) => {}
                    (None, None) => {
                        if let Some(h) = self.hosts.get_mut(&e.host_id) {
                            h.healthy = healthy;
                        }
                    }
                }
            }
            FleetEventKind::Failed => {
                if let Some(s) = shadow {
                    self.end_shadow(s, ShadowEnd::Failed(e.reason.clone()));
                }
            }
            FleetEventKind::Released => match (shadow, workload) {
                (Some(s), _) => self.end_shadow(s, ShadowEnd::Released),
                (None, Some(w)) => {
                    if let Some(h) = self.hosts.get_mut(&e.host_id) {
                        if let Some(held) = h.workloads.get_mut(w) {
                            let freed = e.resources.max(&Resources::ZERO);
                            let freed = Resources {
                                cpu_millicores: freed.cpu_millicores.min(held.cpu_millicores),
                                memory_bytes: freed.memory_bytes.min(held.memory_bytes),
                                disk_io_bytes_per_s: freed
                                    .disk_io_bytes_per_s
                                    .min(held.disk_io_bytes_per_s),
                            };
                            *held = held.minus(&freed);
                            if held.is_zero() {
                                h.workloads.remove(w);
                            }
                            if let Some(total) = self.held.get_mut(w) {
                                *total = total.minus(&freed);
                                if total.is_zero() {
                                    self.held.remove(w);
                                }
                            }
                        }
                    }
                }
                (None, None) => {}
            },
            FleetEventKind::Refused => {
                // Only a refused creation ends a shadow; a refused expand or move leaves it.
                if let Some(s) = shadow {
                    if !self.shadows.contains_key(s) {
                        self.ended
                            .entry(s.to_string())
                            .or_insert(ShadowEnd::Refused(e.reason.clone()));
                    }
                }
            }
            FleetEventKind::Moved => {
                if let Some(s) = shadow {
                    if let Some(r) = self.shadows.get_mut(s) {
                        if let Some(old) = self.hosts.get_mut(&r.host_id) {
                            old.shadows.remove(s);
                        }
                        r.host_id = e.host_id.clone();
                        r.health = ShadowHealth::Created;
                        self.hosts
                            .entry(e.host_id.clone())
                            .or_insert_with(|| HostRecord::new(Resources::ZERO))
                            .shadows
                            .insert(s.to_string(), r.resources);
                    }
                }
            }
            FleetEventKind::Expanded => {
                if let (Some(s), Some(w)) = (shadow, workload) {
                    if self.shadows.contains_key(s) {
                        self.end_shadow(s, ShadowEnd::Expanded);
                        self.add_workload(&e.host_id, w, &e.resources);
                    }
                }
            }
            FleetEventKind::Placed => {
                if let Some(w) = workload {
                    self.add_workload(&e.host_id, w, &e.resources);
                }
            }
            FleetEventKind::Unknown => {}
        }
    }

    fn end_shadow(&mut self, shadow_id: &str, how: ShadowEnd) {
        if let Some(r) = self.shadows.remove(shadow_id) {
            if let Some(h) = self.hosts.get_mut(&r.host_id) {
                h.shadows.remove(shadow_id);
            }
        }
        self.ended.insert(shadow_id.to_string(), how);
    }

    fn add_workload(&mut self, host: &str, workload: &str, r: &Resources) {
        let h = self
            .hosts
            .entry(host.to_string())
            .or_insert_with(|| HostRecord::new(Resources::ZERO));
        let held = h.workloads.entry(workload.to_string()).or_default();
        *held = held.plus(r);
        let total = self.held.entry(workload.to_string()).or_default();
        *total = total.plus(r);
        if !r.is_zero() {
            self.replica.insert(workload.to_string(), *r);
        }
    }

    /// Hosts by id.
    pub fn hosts(&self) -> &BTreeMap<String, HostRecord> {
        &self.hosts
    }

    /// One host.
    pub fn host(&self, id: &str) -> Option<&HostRecord> {
        self.hosts.get(id)
    }

    /// A live shadow.
    pub fn shadow(&self, id: &str) -> Option<&ShadowRecord> {
        self.shadows.get(id)
    }

    /// Live shadows by id.
    pub fn shadows(&self) -> &HashMap<String, ShadowRecord> {
        &self.shadows
    }

    /// How a shadow that no longer exists ended.
    pub fn ended(&self, id: &str) -> Option<&ShadowEnd> {
        self.ended.get(id)
    }

    /// True when the fleet answered `command_id`: it was executed or refused.
    pub fn answered(&self, command_id: &str) -> bool {
        self.answers.contains_key(command_id)
    }

    /// The fleet's first answer to `command_id`.
    pub fn answer(&self, command_id: &str) -> Option<&Answer> {
        self.answers.get(command_id)
    }

    /// The size of the workload's most recent placement or expansion. Workloads scale out in
    /// replicas of one size, so this is what its next request most likely asks for; it stays
    /// known after the workload's replicas are released.
    pub fn replica(&self, workload: &str) -> Option<Resources> {
        self.replica.get(workload).copied()
    }

    /// Resources placed for `workload` across the fleet: what it holds now.
    pub fn held(&self, workload: &str) -> Resources {
        self.held.get(workload).copied().unwrap_or_default()
    }

    /// Hosts whose commitments exceed their capacity, with the excess: must always be empty.
    pub fn overcommitted(&self) -> Vec<(String, Vec<String>)> {
        self.hosts
            .iter()
            .filter_map(|(id, h)| {
                let excess = h.committed().excess_over(&h.capacity);
                (!excess.is_empty()).then(|| (id.clone(), excess))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(kind: FleetEventKind, host: u8, w: u8, cpu: i64) -> FleetEvent {
        FleetEvent {
            event_id: String::new(),
            command_id: None,
            kind,
            host_id: format!("h{host}"),
            shadow_id: None,
            workload_id: Some(format!("w{w}")),
            resources: Resources {
                cpu_millicores: cpu,
                memory_bytes: 0,
                disk_io_bytes_per_s: 0,
            },
            reason: String::new(),
            occurred_at: 0,
        }
    }

    proptest! {
        /// The per-workload index always equals the sum over hosts.
        #[test]
        fn held_index_matches_the_hosts(ops in proptest::collection::vec((any::<bool>(), 0u8..3, 0u8..3, 0i64..1_000), 0..100)) {
            let mut l = Ledger::default();
            for (place, h, w, cpu) in ops {
                let kind = if place { FleetEventKind::Placed } else { FleetEventKind::Released };
                l.apply(&ev(kind, h, w, cpu));
                for w in 0..3u8 {
                    let id = format!("w{w}");
                    let sum = l.hosts().values().filter_map(|h| h.workloads.get(&id)).fold(Resources::ZERO, |a, r| a.plus(r));
                    prop_assert_eq!(l.held(&id), sum);
                }
            }
        }
    }
}
