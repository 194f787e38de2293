//! What the fleet holds, folded from fleet events: per host its capacity, health, shadow
//! reservations and placed workloads. The simulator restores its own state with it; the shadow
//! manager (and later the interceptor and the history checker) use it as their view of the
//! fleet. `apply` is pure and order-sensitive only per host, which is how fleet events are
//! partitioned (keyed by host id).

use std::collections::{BTreeMap, HashMap, HashSet};

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
    answered: HashSet<String>,
}

impl Ledger {
    /// Applies one event.
    pub fn apply(&mut self, e: &FleetEvent) {
        if let Some(c) = &e.command_id {
            self.answered.insert(c.clone());
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
                            *held = held.minus(&e.resources);
                            if held.is_zero() {
                                h.workloads.remove(w);
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
        self.answered.contains(command_id)
    }

    /// Resources placed for `workload` across the fleet: what it holds now.
    pub fn held(&self, workload: &str) -> Resources {
        self.hosts
            .values()
            .filter_map(|h| h.workloads.get(workload))
            .fold(Resources::ZERO, |a, r| a.plus(r))
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
