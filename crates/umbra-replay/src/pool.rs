//! Pooled shadows (docs/scale-up.md): slots of a size class that serve any request they fit,
//! the rule that holds the k-th slot of a class while it pays, the controller that holds a
//! reserve budget, and the slot simulator every policy of the comparison runs on.
//!
//! The simulator's rules are the same for every policy: before each step a policy sets how
//! many slots each of its pools holds (decided from what was known at the end of the previous
//! step); a new slot is ready `ready_delay_s` after it is staged, so a claimed slot is refilled
//! at the next decision and ready one delay later; at the step, each request takes its
//! workload's own ready slot if it has one, else the smallest ready slot of a class it fits,
//! else standard allocation (a miss). What a policy reserves is every slot it holds and no
//! request claimed, over time.

use serde::{Deserialize, Serialize};

use crate::scaleup::KMAX;
use crate::steps::StepTrace;
use crate::Placeholder;

/// How much larger than its smallest member a class's slot may be (CPU): replica sizes, in
/// order, start a new class where one exceeds the class's smallest by more. Classes follow
/// the sizes the workloads have rather than fixed bounds, which split a group of near-equal
/// replicas or join two apart; measured with `umbra replay --sweep` on seeds 1-3 at a budget
/// of 0.2, against fixed bounds at 250m, 600m, 1.2 and 2.3 cores: 82.5 / 79.8 / 82.4% hits
/// against 79.7 / 78.9 / 82.2% (0.2 joined the groups again and gave the fixed bounds'
/// figures within half a point).
pub const CLASS_TOLERANCE: f64 = 0.1;

/// A pool of interchangeable slots.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Size of each slot.
    pub slot: Placeholder,
    /// `Some(w)`: slots only workload `w` claims (its shadows); `None`: a pool any request
    /// that fits may claim.
    pub workload: Option<usize>,
}

/// The size classes of a trace's workloads: per workload its class, per class its slot (the
/// largest replica among its members, so every member fits).
#[derive(Debug, Clone, PartialEq)]
pub struct SizeClasses {
    /// Class of each workload.
    pub class_of: Vec<usize>,
    /// Slot of each class, smallest first.
    pub slots: Vec<Placeholder>,
}

impl SizeClasses {
    /// Each class's requests at step `i` of `t`, written into `n` (one entry per class).
    pub fn requests_at(&self, t: &StepTrace, i: usize, n: &mut [usize]) {
        n.iter_mut().for_each(|x| *x = 0);
        for (w, c) in self.class_of.iter().enumerate() {
            n[*c] += t.ups[w][i] as usize;
        }
    }

    /// Classes of at most [`CLASS_TOLERANCE`] spread in CPU, smallest first.
    pub fn of(sizes: &[Placeholder]) -> Self {
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        order.sort_by(|a, b| {
            sizes[*a]
                .cpu_millicores
                .total_cmp(&sizes[*b].cpu_millicores)
        });
        let mut class_of = vec![0usize; sizes.len()];
        let mut slots: Vec<Placeholder> = Vec::new();
        let mut smallest = f64::NAN;
        for w in order {
            let s = sizes[w];
            if slots.is_empty() || s.cpu_millicores > smallest * (1.0 + CLASS_TOLERANCE) {
                smallest = s.cpu_millicores;
                slots.push(s);
            }
            let c = slots.len() - 1;
            class_of[w] = c;
            slots[c].cpu_millicores = slots[c].cpu_millicores.max(s.cpu_millicores);
            slots[c].memory_bytes = slots[c].memory_bytes.max(s.memory_bytes);
        }
        Self { class_of, slots }
    }

    /// The classes as pools anyone who fits may claim.
    pub fn pools(&self) -> Vec<PoolSpec> {
        self.slots
            .iter()
            .map(|s| PoolSpec {
                slot: *s,
                workload: None,
            })
            .collect()
    }
}

/// How many slots each pool should hold at each step.
pub trait SlotPolicy {
    /// The pools, fixed for the run.
    fn pools(&self) -> Vec<PoolSpec>;
    /// Slots per pool for step `i`, decided at the end of step `i - 1`.
    fn targets(&mut self, i: usize, out: &mut [usize]);
    /// What step `i` cost: core-seconds held in slots and not claimed, and the core-seconds the
    /// workloads used.
    fn observe(&mut self, _i: usize, _reserve_core_s: f64, _used_core_s: f64) {}
}

/// Settings every policy shares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SimSettings {
    /// From staging a slot to its being ready, seconds (also the refill time of a claimed slot).
    pub ready_delay_s: f64,
    /// The fleet every policy places on (`None`: unbounded). Real replicas come first: a
    /// request that misses takes room from slots (preempting them, newest of the largest pool
    /// first, as the scheduler preempts negative-priority placeholders) and is rejected only
    /// when real replicas fill the fleet; a slot is staged only where there is room.
    #[serde(default)]
    pub fleet: Option<FleetCapacity>,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            ready_delay_s: 30.0,
            fleet: None,
        }
    }
}

/// A fleet's capacity in all. Counted in aggregate, not per host: the simulator does not bin
/// the replicas onto hosts, so fragmentation (room in all but on no single host) is not seen
/// here; the pipeline's fleet, which does place on hosts, is the check of that.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FleetCapacity {
    /// CPU, millicores.
    pub cpu_millicores: f64,
    /// Memory, bytes.
    pub memory_bytes: f64,
}

/// What the fleet holds while a step is simulated: real replicas and slots, and its capacity.
struct Room {
    cap: Option<FleetCapacity>,
    real: (f64, f64),
    slots: (f64, f64),
}

impl Room {
    fn fits(&self, size: Placeholder) -> bool {
        self.cap.is_none_or(|c| {
            self.real.0 + self.slots.0 + size.cpu_millicores <= c.cpu_millicores + 1e-6
                && self.real.1 + self.slots.1 + size.memory_bytes <= c.memory_bytes + 1e-6
        })
    }

    fn fits_without_slots(&self, size: Placeholder) -> bool {
        self.cap.is_none_or(|c| {
            self.real.0 + size.cpu_millicores <= c.cpu_millicores + 1e-6
                && self.real.1 + size.memory_bytes <= c.memory_bytes + 1e-6
        })
    }

    fn add(v: &mut (f64, f64), size: Placeholder, n: f64) {
        v.0 += n * size.cpu_millicores;
        v.1 += n * size.memory_bytes;
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    ready_at_s: f64,
}

/// What a policy did over a trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimOutcome {
    /// Requests.
    pub requests: u64,
    /// Requests placed at once on a ready slot.
    pub hits: u64,
    /// Requests that took a slot still being staged (waiting for it to be ready; not hits).
    pub staged_hits: u64,
    /// Their waits, seconds, summed.
    pub staged_wait_s: f64,
    /// Held in slots and never claimed, core-hours.
    pub reserve_core_hours: f64,
    /// The same in GiB-hours of memory.
    pub reserve_gib_hours: f64,
    /// CPU the workloads used, core-hours.
    pub used_core_hours: f64,
    /// Slots staged (a slot that stays across steps is staged once).
    pub staged: u64,
    /// Per step: the cores held in slots and not claimed.
    pub reserve_cores: Vec<f64>,
    /// Requests refused because real replicas filled the fleet (with [`SimSettings::fleet`]).
    #[serde(default)]
    pub rejected: u64,
    /// Slots (or kept replicas) given up to make room for a request that missed.
    #[serde(default)]
    pub preempted: u64,
    /// Slots a policy wanted that the fleet had no room for.
    #[serde(default)]
    pub unstaged_for_room: u64,
    /// Per step, the slots the policy asked for per pool (`[i][pool]`): what the pipeline's
    /// run is compared with step by step.
    #[serde(skip)]
    pub targets: Vec<Vec<usize>>,
}

impl SimOutcome {
    /// hits / requests.
    pub fn hit_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.hits as f64 / self.requests as f64
        }
    }

    /// Reserve over used CPU.
    pub fn reserve_ratio(&self) -> f64 {
        self.reserve_core_hours / self.used_core_hours.max(1e-9)
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Runs `policy` over `trace`.
pub fn simulate(trace: &StepTrace, policy: &mut dyn SlotPolicy, s: &SimSettings) -> SimOutcome {
    let pools = policy.pools();
    let step = trace.step_s as f64;
    let mut held: Vec<Vec<Slot>> = vec![Vec::new(); pools.len()];
    let mut targets = vec![0usize; pools.len()];
    let mut out = SimOutcome {
        requests: trace.requests(),
        ..SimOutcome::default()
    };
    // Pools a request may claim, in the order it tries them: its workload's own, then the
    // shared pools by size.
    let mut shared: Vec<usize> = (0..pools.len())
        .filter(|p| pools[*p].workload.is_none())
        .collect();
    shared.sort_by(|a, b| {
        pools[*a]
            .slot
            .cpu_millicores
            .total_cmp(&pools[*b].slot.cpu_millicores)
            .then(
                pools[*a]
                    .slot
                    .memory_bytes
                    .total_cmp(&pools[*b].slot.memory_bytes),
            )
    });
    let mut own: Vec<Vec<usize>> = vec![Vec::new(); trace.workloads()];
    for (p, spec) in pools.iter().enumerate() {
        if let Some(w) = spec.workload {
            own[w].push(p);
        }
    }
    // Smaller requests choose first, so that they do not take the only slot a larger one fits.
    let mut order: Vec<usize> = (0..trace.workloads()).collect();
    order.sort_by(|a, b| {
        trace.sizes[*a]
            .cpu_millicores
            .total_cmp(&trace.sizes[*b].cpu_millicores)
            .then(a.cmp(b))
    });
    // Largest pools first when room must be made: one preemption frees the most.
    let mut by_size_desc = shared.clone();
    by_size_desc.extend((0..pools.len()).filter(|p| pools[*p].workload.is_some()));
    by_size_desc.sort_by(|a, b| {
        pools[*b]
            .slot
            .cpu_millicores
            .total_cmp(&pools[*a].slot.cpu_millicores)
    });
    let mut room = Room {
        cap: s.fleet,
        real: (0.0, 0.0),
        slots: (0.0, 0.0),
    };
    for i in 0..trace.steps() {
        let decided_s = (i as f64 - 1.0) * step;
        let t = i as f64 * step;
        // Real replicas before the step's requests: what runs after the step, less what it
        // asked for (its releases are done).
        room.real = (0.0, 0.0);
        for w in 0..trace.workloads() {
            let before = trace.running[w][i].saturating_sub(trace.ups[w][i]);
            Room::add(&mut room.real, trace.sizes[w], f64::from(before));
        }
        policy.targets(i, &mut targets);
        out.targets.push(targets.clone());
        room.slots = (0.0, 0.0);
        for (p, slots) in held.iter_mut().enumerate() {
            // Fewer: the newest go first (slots keep their identity while they are wanted).
            slots.truncate(targets[p].min(slots.len()));
            Room::add(&mut room.slots, pools[p].slot, slots.len() as f64);
        }
        for (p, slots) in held.iter_mut().enumerate() {
            while slots.len() < targets[p] {
                if !room.fits(pools[p].slot) {
                    out.unstaged_for_room += (targets[p] - slots.len()) as u64;
                    break;
                }
                slots.push(Slot {
                    ready_at_s: decided_s + s.ready_delay_s,
                });
                Room::add(&mut room.slots, pools[p].slot, 1.0);
                out.staged += 1;
            }
        }
        for &w in &order {
            let size = trace.sizes[w];
            for _ in 0..trace.ups[w][i] {
                let fits = |p: &usize| {
                    size.cpu_millicores <= pools[*p].slot.cpu_millicores
                        && size.memory_bytes <= pools[*p].slot.memory_bytes
                };
                let candidates = || own[w].iter().chain(shared.iter()).filter(|p| fits(p));
                let ready = candidates().find_map(|p| {
                    held[*p]
                        .iter()
                        .position(|x| x.ready_at_s <= t)
                        .map(|k| (*p, k))
                });
                if let Some((p, k)) = ready {
                    held[p].remove(k);
                    Room::add(&mut room.slots, pools[p].slot, -1.0);
                    Room::add(&mut room.real, size, 1.0);
                    out.hits += 1;
                    continue;
                }
                // A slot still staging beats standard allocation when it will be ready sooner.
                let staging = candidates()
                    .filter_map(|p| {
                        held[*p]
                            .iter()
                            .enumerate()
                            .min_by(|a, b| a.1.ready_at_s.total_cmp(&b.1.ready_at_s))
                            .map(|(k, x)| (*p, k, x.ready_at_s))
                    })
                    .min_by(|a, b| a.2.total_cmp(&b.2));
                if let Some((p, k, ready_at)) = staging {
                    held[p].remove(k);
                    Room::add(&mut room.slots, pools[p].slot, -1.0);
                    Room::add(&mut room.real, size, 1.0);
                    out.staged_hits += 1;
                    out.staged_wait_s += ready_at - t;
                    continue;
                }
                // Standard allocation: room from slots if need be, never from real replicas.
                if !room.fits_without_slots(size) {
                    out.rejected += 1;
                    continue;
                }
                while !room.fits(size) {
                    let Some(p) = by_size_desc.iter().copied().find(|p| !held[*p].is_empty())
                    else {
                        break;
                    };
                    held[p].pop();
                    Room::add(&mut room.slots, pools[p].slot, -1.0);
                    out.preempted += 1;
                }
                Room::add(&mut room.real, size, 1.0);
            }
        }
        let (mut cores, mut gib) = (0.0, 0.0);
        for (p, slots) in held.iter().enumerate() {
            cores += slots.len() as f64 * pools[p].slot.cpu_millicores / 1000.0;
            gib += slots.len() as f64 * pools[p].slot.memory_bytes / GIB;
        }
        let used = trace.used_core_s(i);
        out.reserve_cores.push(cores);
        out.reserve_core_hours += cores * step / 3600.0;
        out.reserve_gib_hours += gib * step / 3600.0;
        out.used_core_hours += used / 3600.0;
        policy.observe(i, cores * step, used);
    }
    out
}

/// Holds a reserve budget (a share of used CPU) over a run. The threshold that spends a budget
/// best is one threshold for the whole run (a slot is worth holding at one time exactly when it
/// is worth holding at another), so the controller does not chase each step's reserve: at the
/// start of each period it finds, by bisection, the threshold at which the rule replayed on the
/// steps just before (their probabilities and their requests, all known by then) would have
/// held the period's budget, which is the budget plus what the run so far left unspent or
/// minus what it overspent, within [`BudgetController::CORRECTION`] of the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetController {
    budget: f64,
    reserve: f64,
    used: f64,
}

impl BudgetController {
    /// How far a period's budget may move from the budget to make up for the run so far: the
    /// reserve falls slowly as the threshold rises, so a large correction swings the threshold
    /// by orders of magnitude and wastes the reserve (measured: within 2× the pooled rule lost
    /// 10 points of hits at 0.2× on the replay's seed 1; within 1.1× it holds the budget within
    /// 16% on the same week).
    const CORRECTION: f64 = 1.1;
    /// Lowest and highest threshold, in probability of use per core held.
    pub const BOUNDS: (f64, f64) = (1e-7, 10.0);

    /// A controller for `budget` (reserve over used CPU).
    pub fn new(budget: f64) -> Self {
        Self {
            budget,
            reserve: 0.0,
            used: 0.0,
        }
    }

    /// The reserve ratio held so far.
    pub fn ratio(&self) -> f64 {
        self.reserve / self.used.max(1e-9)
    }

    /// What the run held and used, core-seconds.
    pub fn observe(&mut self, reserve_core_s: f64, used_core_s: f64) {
        self.reserve += reserve_core_s;
        self.used += used_core_s;
    }

    /// The budget for a period expected to use `expected_used_core_s`.
    pub fn period_budget(&self, expected_used_core_s: f64) -> f64 {
        let left = self.budget * self.used - self.reserve;
        (self.budget + left / expected_used_core_s.max(1e-9)).clamp(
            self.budget / Self::CORRECTION,
            self.budget * Self::CORRECTION,
        )
    }

    /// The threshold at which `reserve_ratio(theta)` (falling as theta rises) comes closest to
    /// `budget` from below.
    pub fn threshold_for(budget: f64, mut reserve_ratio: impl FnMut(f64) -> f64) -> f64 {
        let (mut lo, mut hi) = (Self::BOUNDS.0.ln(), Self::BOUNDS.1.ln());
        if reserve_ratio(lo.exp()) <= budget {
            return lo.exp();
        }
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if reserve_ratio(mid.exp()) > budget {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi.exp()
    }
}

/// What sets umbra's trade-off between hits and reserve: the one setting of the rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TradeOff {
    /// Hold reserve at this share of used CPU ([`budget_thresholds`]).
    Budget(f64),
    /// A miss costs this many core-seconds: the k-th slot is held while P(N ≥ k) × the cost
    /// outweighs the slot's cores over the step.
    MissCost(f64),
}

/// Per size class, the share of `history`'s steps with at least k requests of the class
/// (k = 0..=kmax): how often a class needed k slots at once, whatever the model says.
pub fn class_base_rates(history: &StepTrace, classes: &SizeClasses, kmax: usize) -> Vec<Vec<f64>> {
    let mut out = vec![vec![0.0; kmax + 1]; classes.slots.len()];
    let steps = history.steps().max(1) as f64;
    let mut n = vec![0usize; classes.slots.len()];
    for i in 0..history.steps() {
        classes.requests_at(history, i, &mut n);
        for (c, count) in n.iter().copied().enumerate() {
            for v in out[c].iter_mut().take(count.min(kmax) + 1) {
                *v += 1.0 / steps;
            }
        }
    }
    out
}

/// Raises each class tail to at least `weight` × the class's base rate: a floor under the
/// model for the rare large bursts it gives almost no chance, which only a large budget buys
/// (at a threshold of θ per core, the floor holds a slot only where weight × base rate ≥ θ ×
/// cores).
pub fn floor_tails(tails: &mut [Vec<Vec<f64>>], base: &[Vec<f64>], weight: f64) {
    for (per_class, b) in tails.iter_mut().zip(base) {
        for step in per_class.iter_mut() {
            for (t, r) in step.iter_mut().zip(b) {
                *t = t.max(weight * r);
            }
        }
    }
}

// Steps index the workloads' probabilities `[w][i]` across workloads, not one array.
#[allow(clippy::needless_range_loop)]
/// Per size class and step, P(N ≥ k) of the class's requests for k = 0..=kmax (from the
/// members' probabilities, taken as independent).
pub fn class_tails(
    p_up: &[Vec<f64>],
    tails: &[[f64; KMAX + 2]],
    classes: &SizeClasses,
    kmax: usize,
) -> Vec<Vec<Vec<f64>>> {
    let steps = p_up.first().map_or(0, Vec::len);
    let n_classes = classes.slots.len();
    let mut out = vec![Vec::with_capacity(steps); n_classes];
    let mut dist = vec![0.0f64; kmax + 1];
    let mut next = vec![0.0f64; kmax + 1];
    for i in 0..steps {
        for (c, per_class) in out.iter_mut().enumerate() {
            dist.iter_mut().for_each(|d| *d = 0.0);
            dist[0] = 1.0;
            for (w, _) in classes
                .class_of
                .iter()
                .enumerate()
                .filter(|(_, cw)| **cw == c)
            {
                let p = p_up[w][i].clamp(0.0, 1.0);
                let t = &tails[w];
                // The workload's own count: 0 with 1 - p, k with p × P(N = k | N ≥ 1).
                next.iter_mut().for_each(|d| *d = 0.0);
                for (have, d) in dist.iter().enumerate() {
                    if *d == 0.0 {
                        continue;
                    }
                    next[have] += d * (1.0 - p);
                    for k in 1..=KMAX {
                        let pk = p * (t[k] - t[k + 1]);
                        let to = (have + k).min(kmax);
                        next[to] += d * pk;
                    }
                }
                std::mem::swap(&mut dist, &mut next);
            }
            // Tail: P(N ≥ k).
            let mut tail = vec![0.0; kmax + 1];
            let mut acc = 0.0;
            for k in (0..=kmax).rev() {
                acc += dist[k];
                tail[k] = acc.min(1.0);
            }
            per_class.push(tail);
        }
    }
    out
}

/// How a class's count of requests at a step is made of its members' forecasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassCount {
    /// The members taken as independent: the convolution of their counts ([`class_tails`]).
    Independent,
    /// The class's own burst shape, P(N ≥ k | N ≥ 1) over its past steps with a request, scaled
    /// so that its mean is the members' expected requests ([`shaped_class_tails`]).
    BurstShape,
}

/// Per size class, the shape of its bursts: P(N ≥ k | N ≥ 1) for k = 0..=kmax over the steps
/// `range` of `t` on which the class's members asked for replicas, counted together (`None`:
/// no such step). Members of one class are often replicas of one application and burst
/// together, which a convolution of independent members cannot show.
pub fn class_burst_shapes(
    t: &StepTrace,
    range: std::ops::Range<usize>,
    classes: &SizeClasses,
    kmax: usize,
) -> Vec<Option<Vec<f64>>> {
    let n_classes = classes.slots.len();
    let mut counts = vec![vec![0u64; kmax + 1]; n_classes];
    let mut bursts = vec![0u64; n_classes];
    let mut n = vec![0usize; n_classes];
    for i in range.start..range.end.min(t.steps()) {
        classes.requests_at(t, i, &mut n);
        for (c, count) in n.iter().enumerate() {
            if *count > 0 {
                bursts[c] += 1;
                for v in counts[c].iter_mut().take(count.min(&kmax) + 1) {
                    *v += 1;
                }
            }
        }
    }
    counts
        .into_iter()
        .zip(bursts)
        .map(|(cs, b)| (b > 0).then(|| cs.iter().map(|x| *x as f64 / b as f64).collect()))
        .collect()
}

// Steps index the workloads' probabilities `[w][i]` across workloads, not one array.
#[allow(clippy::needless_range_loop)]
/// Per size class and step, P(N ≥ k) for k = 0..=kmax from the class's burst shape: the
/// members' expected requests λ (Σ P(N_w ≥ k) over k) spread as the class's past bursts were,
/// P(N ≥ k) = min(1, λ / μ) × shape(k) with μ the shape's mean. The mean is right whatever
/// the members' dependence; the shape is the class's own. A class with no shape yet falls back
/// to the independent convolution.
pub fn shaped_class_tails(
    p_up: &[Vec<f64>],
    tails: &[[f64; KMAX + 2]],
    shapes: &[Option<Vec<f64>>],
    classes: &SizeClasses,
    kmax: usize,
) -> Vec<Vec<Vec<f64>>> {
    let mut out = class_tails(p_up, tails, classes, kmax);
    let steps = p_up.first().map_or(0, Vec::len);
    for (c, shape) in shapes.iter().enumerate() {
        let Some(shape) = shape else { continue };
        let mean: f64 = shape.iter().skip(1).sum();
        for i in 0..steps {
            let lambda: f64 = classes
                .class_of
                .iter()
                .enumerate()
                .filter(|(_, cw)| **cw == c)
                .map(|(w, _)| p_up[w][i].clamp(0.0, 1.0) * tails[w][1..].iter().sum::<f64>())
                .sum();
            let p_any = (lambda / mean.max(1.0)).min(1.0);
            out[c][i] = (0..=kmax)
                .map(|k| if k == 0 { 1.0 } else { p_any * shape[k] })
                .collect();
        }
    }
    out
}

/// Slots a class of slots of `cores` cores holds at a step whose P(N ≥ k) is `tail[k]`: the
/// k-th while P(N ≥ k) per core clears `theta`.
pub fn slots_held(tail: &[f64], cores: f64, theta: f64) -> usize {
    tail.iter()
        .skip(1)
        .take_while(|p| **p / cores >= theta)
        .count()
}

/// umbra's pooled rule: per class and step, hold the k-th slot while P(N ≥ k) per core of the
/// slot clears the threshold in force at the step (a miss cost of C core-seconds is a threshold
/// of step seconds / C; a budget gives a threshold per period, [`budget_thresholds`]).
#[derive(Debug, Clone)]
pub struct PooledScaleUp {
    classes: SizeClasses,
    /// `[class][step][k]`: P(N ≥ k) (steps counted from the trace's start).
    tails: Vec<Vec<Vec<f64>>>,
    /// Threshold per step (the last one holds past the end).
    thresholds: Vec<f64>,
}

impl PooledScaleUp {
    /// The rule over precomputed class tails ([`class_tails`]) with one threshold throughout.
    pub fn fixed(classes: SizeClasses, tails: Vec<Vec<Vec<f64>>>, theta: f64) -> Self {
        Self::scheduled(classes, tails, vec![theta])
    }

    /// The rule for a miss cost of `cost` core-seconds, on steps of `step_s` seconds.
    pub fn miss_cost(
        classes: SizeClasses,
        tails: Vec<Vec<Vec<f64>>>,
        step_s: f64,
        cost: f64,
    ) -> Self {
        Self::fixed(classes, tails, step_s / cost.max(1e-9))
    }

    /// The rule with a threshold per step.
    pub fn scheduled(
        classes: SizeClasses,
        tails: Vec<Vec<Vec<f64>>>,
        thresholds: Vec<f64>,
    ) -> Self {
        Self {
            classes,
            tails,
            thresholds,
        }
    }

    /// Slots of class `c` at step `i` for threshold `theta`.
    pub fn slots_for(&self, c: usize, i: usize, theta: f64) -> usize {
        self.tails[c].get(i).map_or(0, |t| {
            slots_held(t, self.classes.slots[c].cpu_millicores / 1000.0, theta)
        })
    }
}

impl SlotPolicy for PooledScaleUp {
    fn pools(&self) -> Vec<PoolSpec> {
        self.classes.pools()
    }

    fn targets(&mut self, i: usize, out: &mut [usize]) {
        let theta = self
            .thresholds
            .get(i)
            .or(self.thresholds.last())
            .copied()
            .unwrap_or(f64::INFINITY);
        for (c, o) in out.iter_mut().enumerate() {
            *o = self.slots_for(c, i, theta);
        }
    }
}

/// Thresholds per step of `trace[from..]` that hold `budget` with [`BudgetController`]:
/// recalibrated every `period` steps on the `window` steps before (as far back as `trace`
/// goes). `tails` are the class tails of the whole `trace`.
#[allow(clippy::too_many_arguments)]
pub fn budget_thresholds(
    classes: &SizeClasses,
    tails: &[Vec<Vec<f64>>],
    trace: &StepTrace,
    from: usize,
    budget: f64,
    period: usize,
    window: usize,
    sim: &SimSettings,
) -> Vec<f64> {
    let mut thresholds: Vec<f64> = Vec::new();
    let mut start = from;
    while start < trace.steps() {
        let end = (start + period.max(1)).min(trace.steps());
        let c = Calibration {
            classes,
            tails,
            trace,
            from,
            budget,
            window,
            sim,
        };
        // A period's expected use is scaled to the whole period, even the last one cut short
        // by the trace's end: a service deciding step by step does not know where that is.
        let theta = c.threshold(start, period.max(1), &thresholds);
        thresholds.extend(std::iter::repeat_n(theta, end - start));
        start = end;
    }
    thresholds
}

/// What the budget controller calibrates a period's threshold on: the class tails and the
/// trace up to the period's start, the thresholds the run has had since `from`.
#[derive(Debug, Clone, Copy)]
pub struct Calibration<'a> {
    /// The classes.
    pub classes: &'a SizeClasses,
    /// `[class][step][k]` from step 0 of `trace` (at least up to the period's start).
    pub tails: &'a [Vec<Vec<f64>>],
    /// The trace (at least up to the period's start).
    pub trace: &'a StepTrace,
    /// First step the rule held slots for.
    pub from: usize,
    /// The reserve budget.
    pub budget: f64,
    /// Steps before the period looked back on.
    pub window: usize,
    /// Ready delay and refill.
    pub sim: &'a SimSettings,
}

impl Calibration<'_> {
    /// The threshold for the `len` steps from `start`, given the thresholds of the steps
    /// `from..start` (`so_far`): only steps before `start` are read, so the offline rule and a
    /// service deciding step by step compute the same value.
    pub fn threshold(&self, start: usize, len: usize, so_far: &[f64]) -> f64 {
        let cut = |r: std::ops::Range<usize>| -> Vec<Vec<Vec<f64>>> {
            self.tails.iter().map(|c| c[r.clone()].to_vec()).collect()
        };
        // The controller reasons on an unbounded fleet: the fleet's bound acts where slots are
        // placed, and a service calibrating step by step need not know the fleet's size.
        let unbounded = SimSettings {
            fleet: None,
            ..*self.sim
        };
        // What the run so far held, replayed with the thresholds it had.
        let mut controller = BudgetController::new(self.budget);
        if start > self.from {
            let done = self.trace.slice(self.from..start);
            let o = simulate(
                &done,
                &mut PooledScaleUp::scheduled(
                    self.classes.clone(),
                    cut(self.from..start),
                    so_far.to_vec(),
                ),
                &unbounded,
            );
            controller.observe(o.reserve_core_hours * 3600.0, o.used_core_hours * 3600.0);
        }
        let past = start.saturating_sub(self.window)..start;
        if past.is_empty() {
            return 0.05;
        }
        let seen = self.trace.slice(past.clone());
        let seen_tails = cut(past.clone());
        let used: f64 = past.clone().map(|i| self.trace.used_core_s(i)).sum();
        let period_used = used / past.len() as f64 * len as f64;
        let b = controller.period_budget(period_used);
        BudgetController::threshold_for(b, |theta| {
            simulate(
                &seen,
                &mut PooledScaleUp::fixed(self.classes.clone(), seen_tails.clone(), theta),
                &unbounded,
            )
            .reserve_ratio()
        })
    }
}

/// A fixed number of slots per pool at every step (balloon pods, CapacityBuffers).
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPools {
    /// The pools.
    pub pools: Vec<PoolSpec>,
    /// Slots per pool.
    pub counts: Vec<usize>,
}

impl SlotPolicy for StaticPools {
    fn pools(&self) -> Vec<PoolSpec> {
        self.pools.clone()
    }

    fn targets(&mut self, _i: usize, out: &mut [usize]) {
        out.copy_from_slice(&self.counts);
    }
}

/// Slots per workload per step given in advance (the oracle's: exactly the requests to come).
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    /// One pool per workload.
    pub pools: Vec<PoolSpec>,
    /// `[w][i]`: slots of workload `w` at step `i`.
    pub counts: Vec<Vec<u32>>,
}

impl Scheduled {
    /// The oracle: each workload's own slots, exactly as many as it will ask for.
    pub fn oracle(trace: &StepTrace) -> Self {
        Self {
            pools: per_workload_pools(trace),
            counts: trace.ups.clone(),
        }
    }
}

impl SlotPolicy for Scheduled {
    fn pools(&self) -> Vec<PoolSpec> {
        self.pools.clone()
    }

    fn targets(&mut self, i: usize, out: &mut [usize]) {
        for (o, c) in out.iter_mut().zip(&self.counts) {
            *o = c[i] as usize;
        }
    }
}

/// One pool per workload, of its replica's size.
pub fn per_workload_pools(trace: &StepTrace) -> Vec<PoolSpec> {
    trace
        .sizes
        .iter()
        .enumerate()
        .map(|(w, s)| PoolSpec {
            slot: *s,
            workload: Some(w),
        })
        .collect()
}

/// Keep-alive (Knative's scale-to-zero grace, Azure Functions' keep-alive): a released replica
/// stays, ready, for `keep_s` seconds and its workload's next request takes it. On a bounded
/// `fleet`, a request that misses evicts kept replicas (the largest first) to make room.
pub fn keep_alive(trace: &StepTrace, keep_s: f64, fleet: Option<FleetCapacity>) -> SimOutcome {
    let step = trace.step_s as f64;
    let keep_steps = (keep_s / step).ceil() as usize;
    let mut out = SimOutcome {
        requests: trace.requests(),
        ..SimOutcome::default()
    };
    // Per workload: the steps at which its kept replicas expire.
    let mut kept: Vec<Vec<usize>> = vec![Vec::new(); trace.workloads()];
    let mut largest_first: Vec<usize> = (0..trace.workloads()).collect();
    largest_first.sort_by(|a, b| {
        trace.sizes[*b]
            .cpu_millicores
            .total_cmp(&trace.sizes[*a].cpu_millicores)
    });
    let mut room = Room {
        cap: fleet,
        real: (0.0, 0.0),
        slots: (0.0, 0.0),
    };
    for i in 0..trace.steps() {
        room.real = (0.0, 0.0);
        room.slots = (0.0, 0.0);
        for (w, k) in kept.iter_mut().enumerate() {
            k.retain(|until| *until > i);
            let before = trace.running[w][i].saturating_sub(trace.ups[w][i]);
            Room::add(&mut room.real, trace.sizes[w], f64::from(before));
            Room::add(&mut room.slots, trace.sizes[w], k.len() as f64);
        }
        for w in 0..trace.workloads() {
            let size = trace.sizes[w];
            for _ in 0..trace.ups[w][i] {
                // The most recently released goes back first.
                if kept[w].pop().is_some() {
                    Room::add(&mut room.slots, size, -1.0);
                    Room::add(&mut room.real, size, 1.0);
                    out.hits += 1;
                    continue;
                }
                if !room.fits_without_slots(size) {
                    out.rejected += 1;
                    continue;
                }
                while !room.fits(size) {
                    let Some(v) = largest_first.iter().copied().find(|v| !kept[*v].is_empty())
                    else {
                        break;
                    };
                    kept[v].pop();
                    Room::add(&mut room.slots, trace.sizes[v], -1.0);
                    out.preempted += 1;
                }
                Room::add(&mut room.real, size, 1.0);
            }
        }
        let mut cores = 0.0;
        let mut gib = 0.0;
        for (w, k) in kept.iter_mut().enumerate() {
            for _ in 0..trace.downs[w][i] {
                k.push(i + keep_steps);
            }
            cores += k.len() as f64 * trace.sizes[w].cpu_millicores / 1000.0;
            gib += k.len() as f64 * trace.sizes[w].memory_bytes / GIB;
        }
        out.reserve_cores.push(cores);
        out.reserve_core_hours += cores * step / 3600.0;
        out.reserve_gib_hours += gib * step / 3600.0;
        out.used_core_hours += trace.used_core_s(i) / 3600.0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ph(cpu: f64) -> Placeholder {
        Placeholder {
            cpu_millicores: cpu,
            memory_bytes: GIB,
        }
    }

    /// Workloads of the given replica sizes with the given requests per step, 1 core used each.
    fn trace(sizes: &[f64], ups: &[&[u32]]) -> StepTrace {
        let steps = ups[0].len();
        StepTrace {
            step_s: 300,
            origin_s: 0,
            ids: (0..sizes.len()).map(|w| format!("w{w}")).collect(),
            sizes: sizes.iter().map(|s| ph(*s)).collect(),
            cpu: vec![vec![1_000.0; steps]; sizes.len()],
            ups: ups.iter().map(|u| u.to_vec()).collect(),
            downs: vec![vec![0; steps]; sizes.len()],
            running: vec![vec![1; steps]; sizes.len()],
        }
    }

    #[test]
    fn size_classes_hold_their_largest_member_within_the_tolerance() {
        // 1,000 and 1,100 are within 10% of 1,000; 1,101 is not and starts a class.
        let c = SizeClasses::of(&[
            ph(1_100.0),
            ph(200.0),
            ph(1_000.0),
            ph(1_101.0),
            ph(5_000.0),
            ph(1_150.0),
        ]);
        assert_eq!(c.class_of, vec![1, 0, 1, 2, 3, 2]);
        assert_eq!(
            c.slots.iter().map(|s| s.cpu_millicores).collect::<Vec<_>>(),
            vec![200.0, 1_100.0, 1_150.0, 5_000.0]
        );
        assert!(SizeClasses::of(&[]).slots.is_empty());
    }

    #[test]
    fn a_slot_serves_only_requests_it_fits_and_the_own_shadow_goes_first() {
        // w0 small, w1 large; one shared small slot and one shared large slot, plus w1's own.
        let t = trace(&[200.0, 1_000.0], &[&[0, 1], &[0, 2]]);
        let small = PoolSpec {
            slot: ph(200.0),
            workload: None,
        };
        let large = PoolSpec {
            slot: ph(1_000.0),
            workload: None,
        };
        let own = PoolSpec {
            slot: ph(1_000.0),
            workload: Some(1),
        };
        // Only a small slot: the large requests miss, the small one hits.
        let mut p = StaticPools {
            pools: vec![small],
            counts: vec![3],
        };
        let o = simulate(&t, &mut p, &SimSettings::default());
        assert_eq!((o.requests, o.hits), (3, 1));
        // A large slot serves a small request when no small one is left.
        let mut p = StaticPools {
            pools: vec![large],
            counts: vec![1],
        };
        assert_eq!(simulate(&t, &mut p, &SimSettings::default()).hits, 1);
        // w1's own shadow first, then the shared large slot; the small request takes the small
        // slot, not the large one a large request needs.
        let mut p = StaticPools {
            pools: vec![large, own, small],
            counts: vec![1, 1, 1],
        };
        let o = simulate(&t, &mut p, &SimSettings::default());
        assert_eq!(o.hits, 3);
        // After the claims, the step's reserve is what is left: nothing.
        assert_eq!(o.reserve_cores[1], 0.0);
        // Step 0 held 1 + 1 + 0.2 cores unclaimed.
        assert!((o.reserve_cores[0] - 2.2).abs() < 1e-9);
    }

    #[test]
    fn slots_staged_late_are_claimed_as_staged_not_as_hits() {
        let t = trace(&[1_000.0], &[&[0, 1, 0]]);
        let mut p = StaticPools {
            pools: per_workload_pools(&t),
            counts: vec![1],
        };
        // Ready 400 s after staging: the slot staged at -300 s is ready at 100 s, in time.
        let o = simulate(
            &t,
            &mut p,
            &SimSettings {
                ready_delay_s: 400.0,
                fleet: None,
            },
        );
        assert_eq!((o.hits, o.staged_hits), (1, 0));
        // Ready 700 s after staging: at 300 s it is still staging, 100 s to go.
        let o = simulate(
            &t,
            &mut p,
            &SimSettings {
                ready_delay_s: 700.0,
                fleet: None,
            },
        );
        assert_eq!((o.hits, o.staged_hits), (0, 1));
        assert!((o.staged_wait_s - 100.0).abs() < 1e-9);
    }

    #[test]
    fn slots_keep_their_identity_while_they_are_wanted() {
        // The rule wants 2, 2, 3, 1, 1 slots: staged 2, then 1 more, then none (no refit
        // re-stages a slot it keeps).
        struct Wants(Vec<usize>);
        impl SlotPolicy for Wants {
            fn pools(&self) -> Vec<PoolSpec> {
                vec![PoolSpec {
                    slot: ph(1_000.0),
                    workload: None,
                }]
            }
            fn targets(&mut self, i: usize, out: &mut [usize]) {
                out[0] = self.0[i];
            }
        }
        let t = trace(&[1_000.0], &[&[0, 0, 0, 0, 0]]);
        let o = simulate(&t, &mut Wants(vec![2, 2, 3, 1, 1]), &SimSettings::default());
        assert_eq!(o.staged, 3);
        assert_eq!(o.reserve_cores, vec![2.0, 2.0, 3.0, 1.0, 1.0]);
        // A claimed slot is refilled at the next decision.
        let t = trace(&[1_000.0], &[&[0, 1, 1, 0]]);
        let o = simulate(&t, &mut Wants(vec![1, 1, 1, 1]), &SimSettings::default());
        assert_eq!((o.hits, o.staged), (2, 3));
    }

    #[test]
    fn the_oracle_hits_everything_and_reserves_nothing() {
        let t = trace(&[200.0, 1_000.0], &[&[0, 1, 0, 3], &[2, 0, 0, 1]]);
        let o = simulate(&t, &mut Scheduled::oracle(&t), &SimSettings::default());
        assert_eq!((o.hits, o.requests), (7, 7));
        assert_eq!(o.reserve_core_hours, 0.0);
    }

    #[test]
    fn on_a_full_fleet_a_miss_preempts_slots_and_only_real_replicas_reject() {
        // One replica of each of two 1-core workloads runs; w0 asks for a second at step 1.
        let mut t = trace(&[1_000.0, 1_000.0], &[&[0, 1, 0], &[0, 0, 0]]);
        t.running[0] = vec![1, 2, 2];
        let fleet = |cores: f64| SimSettings {
            fleet: Some(FleetCapacity {
                cpu_millicores: cores * 1_000.0,
                memory_bytes: 100.0 * GIB,
            }),
            ..SimSettings::default()
        };
        // w1 holds a slot of its own, which w0 may not claim.
        let mut p = StaticPools {
            pools: per_workload_pools(&t),
            counts: vec![0, 1],
        };
        // Three cores: the slot fills the fleet, so w0's standard allocation preempts it,
        // and once w0's second replica runs there is no room to stage it again.
        let o = simulate(&t, &mut p, &fleet(3.0));
        assert_eq!((o.hits, o.rejected, o.preempted), (0, 0, 1));
        assert_eq!(o.unstaged_for_room, 1);
        // Unbounded, the same policy preempts and refuses nothing.
        let free = simulate(&t, &mut p, &SimSettings::default());
        assert_eq!(
            (free.rejected, free.preempted, free.unstaged_for_room),
            (0, 0, 0)
        );
        // Two cores: real replicas fill the fleet; the slot is never staged, the request refused.
        let o = simulate(&t, &mut p, &fleet(2.0));
        assert_eq!((o.rejected, o.preempted), (1, 0));
        assert_eq!(o.unstaged_for_room, 3);
        assert_eq!(o.reserve_core_hours, 0.0);
    }

    #[test]
    fn keep_alive_gives_up_a_kept_replica_to_a_request_that_needs_the_room() {
        // w0 releases a replica at step 0 and keeps it; w1 asks for one at step 1 on a fleet
        // with room for two replicas, one of them running w1's.
        let mut t = trace(&[1_000.0, 1_000.0], &[&[0, 0], &[0, 1]]);
        t.downs[0] = vec![1, 0];
        t.running[0] = vec![0, 0];
        t.running[1] = vec![1, 2];
        let cap = FleetCapacity {
            cpu_millicores: 2_000.0,
            memory_bytes: 100.0 * GIB,
        };
        let o = keep_alive(&t, 3_600.0, Some(cap));
        assert_eq!((o.hits, o.rejected, o.preempted), (0, 0, 1));
        let free = keep_alive(&t, 3_600.0, None);
        assert_eq!(free.preempted, 0);
        assert!(free.reserve_core_hours > o.reserve_core_hours);
    }

    #[test]
    fn keep_alive_hands_a_released_replica_back() {
        let mut t = trace(&[1_000.0], &[&[0, 0, 1, 0, 0, 0, 1]]);
        t.downs[0] = vec![0, 1, 0, 1, 0, 0, 0];
        // Kept 10 minutes: the release at step 1 serves step 2; the one at step 3 expires at 5.
        let o = keep_alive(&t, 600.0, None);
        assert_eq!(o.hits, 1);
        assert_eq!(o.reserve_cores, vec![0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(keep_alive(&t, 3_600.0, None).hits, 2);
    }

    #[test]
    fn the_budget_controller_holds_its_budget_on_a_synthetic_stream() {
        // Twenty workloads of four sizes, each asking for a replica with a probability that
        // drifts over the week (and the rule told exactly that probability).
        let steps = 9 * 288;
        let n = 20;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let p: Vec<Vec<f64>> = (0..n)
            .map(|w| {
                (0..steps)
                    .map(|i| {
                        0.02 * (1.0 + (w as f64 + i as f64 / 200.0).sin()) * (1.0 + (w % 3) as f64)
                    })
                    .collect()
            })
            .collect();
        let sizes: Vec<f64> = (0..n)
            .map(|w| [200.0, 500.0, 1_000.0, 2_000.0][w % 4])
            .collect();
        let mut t = trace(&sizes, &vec![&[0u32][..]; n]);
        t.ups = p
            .iter()
            .map(|pw| pw.iter().map(|x| u32::from(uniform() < *x)).collect())
            .collect();
        t.cpu = vec![vec![1_000.0; steps]; n];
        t.downs = vec![vec![0; steps]; n];
        t.running = vec![vec![1; steps]; n];
        let mut tail = [0.0; KMAX + 2];
        tail[0] = 1.0;
        tail[1] = 1.0;
        let classes = SizeClasses::of(&t.sizes);
        let tails = class_tails(&p, &vec![tail; n], &classes, 20);
        let from = 2 * 288;
        let live = t.slice(from..steps);
        let live_tails: Vec<Vec<Vec<f64>>> = tails.iter().map(|c| c[from..].to_vec()).collect();
        let mut last_hits = 0;
        // (At most five slots per class can ever be wanted here: a reserve of about 0.7 of use.)
        for budget in [0.05, 0.2, 0.5] {
            let thetas = budget_thresholds(
                &classes,
                &tails,
                &t,
                from,
                budget,
                288,
                2 * 288,
                &SimSettings::default(),
            );
            assert_eq!(thetas.len(), steps - from);
            let o = simulate(
                &live,
                &mut PooledScaleUp::scheduled(classes.clone(), live_tails.clone(), thetas),
                &SimSettings::default(),
            );
            let r = o.reserve_ratio();
            assert!((r / budget - 1.0).abs() < 0.15, "budget {budget}: held {r}");
            assert!(o.hits > last_hits, "a larger budget buys more hits");
            last_hits = o.hits;
        }
    }

    #[test]
    fn the_threshold_search_finds_the_budget() {
        // Reserve ratio 0.02 / theta: a budget of 0.2 needs theta = 0.1.
        let theta = BudgetController::threshold_for(0.2, |t| 0.02 / t);
        assert!((theta / 0.1 - 1.0).abs() < 1e-6, "{theta}");
        let mut c = BudgetController::new(0.2);
        c.observe(100.0, 1_000.0);
        // Underspent by 100 core-s: the next 1000 core-s may hold 0.3 of use, up to 1.1x.
        assert!((c.period_budget(1_000.0) - 0.22).abs() < 1e-12);
        c.observe(10_000.0, 0.0);
        assert!((c.period_budget(1_000.0) - 0.2 / 1.1).abs() < 1e-12);
    }

    #[test]
    fn base_rates_floor_the_tails() {
        // Class 0 (w0, w1): 2 requests at step 0, 1 at step 1, none at 2 and 3.
        let t = trace(&[500.0, 500.0], &[&[1, 1, 0, 0], &[1, 0, 0, 0]]);
        let classes = SizeClasses::of(&t.sizes);
        let base = class_base_rates(&t, &classes, 3);
        assert_eq!(base, vec![vec![1.0, 0.5, 0.25, 0.0]]);
        let mut tails = vec![vec![vec![1.0, 0.9, 0.01, 0.0]]];
        floor_tails(&mut tails, &base, 0.1);
        assert_eq!(tails[0][0], vec![1.0, 0.9, 0.025, 0.0]);
    }

    #[test]
    fn class_tails_add_up_the_members() {
        // Two members, each asks for one replica with probability 0.5: P(N >= 1) = 0.75,
        // P(N >= 2) = 0.25.
        let mut tail = [0.0; KMAX + 2];
        tail[0] = 1.0;
        tail[1] = 1.0;
        let classes = SizeClasses::of(&[ph(500.0), ph(500.0)]);
        let t = class_tails(&[vec![0.5], vec![0.5]], &[tail, tail], &classes, 10);
        assert!((t[0][0][1] - 0.75).abs() < 1e-12);
        assert!((t[0][0][2] - 0.25).abs() < 1e-12);
        assert_eq!(t[0][0][3], 0.0);
        let mut rule = PooledScaleUp::miss_cost(classes, t, 300.0, 3_000.0);
        // theta = 300 / 3000 = 0.1 per core; slot 0.5 cores: 0.75/0.5 and 0.25/0.5 both pass.
        let mut out = [0];
        rule.targets(0, &mut out);
        assert_eq!(out, [2]);
        assert_eq!(rule.slots_for(0, 0, 1.0), 1);
    }

    #[test]
    fn a_class_that_bursts_together_keeps_its_burst_shape() {
        // Two members that always ask together, two replicas each: the class's bursts are 4.
        let t = trace(&[500.0, 500.0], &[&[2, 0, 2, 0], &[2, 0, 2, 0]]);
        let classes = SizeClasses::of(&t.sizes);
        let shapes = class_burst_shapes(&t, 0..4, &classes, 6);
        assert_eq!(shapes, vec![Some(vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])]);
        assert_eq!(class_burst_shapes(&t, 1..2, &classes, 6), vec![None]);
        // Each member: P(N >= 1) = 0.5, two replicas when it asks (mean 1 each, 2 in all).
        let mut tail = [0.0; KMAX + 2];
        tail[..3].copy_from_slice(&[1.0, 1.0, 1.0]);
        let p = [vec![0.5], vec![0.5]];
        let shaped = shaped_class_tails(&p, &[tail, tail], &shapes, &classes, 6);
        // lambda = 2, mean of the shape 4: P(any) = 0.5, and then all four come.
        assert_eq!(shaped[0][0], vec![1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0]);
        // Taken as independent, four at once would be a 1-in-4 event.
        let independent = class_tails(&p, &[tail, tail], &classes, 6);
        assert!((independent[0][0][4] - 0.25).abs() < 1e-12);
        // The expected count is the same either way: the shape moves it, not its size.
        let mean = |t: &[f64]| t.iter().skip(1).sum::<f64>();
        assert!((mean(&shaped[0][0]) - mean(&independent[0][0])).abs() < 1e-12);
        // With no shape yet, the convolution stands.
        let none = shaped_class_tails(&p, &[tail, tail], &[None], &classes, 6);
        assert_eq!(none, independent);
    }
}
