//! The deterministic expansion of a [`Scenario`] into users, sessions (devices), groups,
//! conversations, send schedules and churn schedules. Everything random is drawn from one
//! `StdRng` seeded with the scenario's seed, in a fixed order, so every load-generator
//! process (see `--procs`) computes the same plan and takes its own share of the sessions.

use crate::scenario::{Kind, Scenario};
use protocol::{ConvId, UserId};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Largest initial member list `POST /v1/groups` accepts.
pub const MAX_INITIAL_MEMBERS: usize = 5000;

/// Where one stream of sends goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTarget {
    /// This group (index into [`Plan::groups`]).
    Group(u32),
    /// A random contact of the sending user, drawn per message.
    Contacts,
}

/// A periodic stream of sends from one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// Where the messages go.
    pub target: StreamTarget,
    /// Time between two sends.
    pub interval: Duration,
    /// Offset of the first send after the traffic starts.
    pub phase: Duration,
}

/// Periodic disconnects of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Churn {
    /// Time between two drops.
    pub period: Duration,
    /// Offset of the first drop after the traffic starts.
    pub phase: Duration,
}

/// One simulated device connection.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionPlan {
    /// Its user (index into [`Plan::users`]).
    pub user: u32,
    /// When it connects, after the start.
    pub connect_at: Duration,
    /// The conversations it must receive (indexes into [`Plan::convs`]).
    pub convs: Vec<u32>,
    /// What it sends.
    pub streams: Vec<Stream>,
    /// When it drops, if it churns.
    pub churn: Option<Churn>,
}

/// A group to create.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPlan {
    /// Members (user indexes); the first is the owner.
    pub members: Vec<u32>,
    /// Its conversation.
    pub conv: u32,
    /// Whether it is a large company-wide group.
    pub large: bool,
}

/// A conversation and who must receive it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvPlan {
    /// The canonical id (`group:<id>` once the group exists, `dm:a:b`).
    pub id: String,
    /// Every session that must see every message.
    pub sessions: Vec<u32>,
}

/// The expanded scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The run's tag: the prefix of every user id and part of every group name, so runs
    /// against one server (or one cluster) never collide.
    pub tag: String,
    /// User ids.
    pub users: Vec<String>,
    /// Sessions of each user.
    pub user_sessions: Vec<Vec<u32>>,
    /// Contacts of each user, with the direct conversation's index.
    pub contacts: Vec<Vec<(u32, u32)>>,
    /// All sessions.
    pub sessions: Vec<SessionPlan>,
    /// Groups to create.
    pub groups: Vec<GroupPlan>,
    /// All conversations.
    pub convs: Vec<ConvPlan>,
    /// Conversation index by id (valid after [`Plan::set_group_ids`]).
    pub conv_index: HashMap<String, u32>,
}

/// Samples sizes in `1..=n` with P(k) proportional to 1/k^s.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `1..=n`.
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n.max(1));
        let mut acc = 0.0;
        for k in 1..=n.max(1) {
            acc += 1.0 / (k as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Self { cdf }
    }

    /// One sample.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u) + 1
    }
}

fn secs(f: f64) -> Duration {
    Duration::from_secs_f64(f.max(0.0))
}

impl Plan {
    /// Expands `scenario`; user ids start with `tag` so runs against one server never share
    /// conversations.
    pub fn build(scenario: &Scenario, tag: &str) -> Plan {
        let mut rng = StdRng::seed_from_u64(scenario.seed);
        let n_users = scenario.user_count();
        let users: Vec<String> = (0..n_users).map(|i| format!("{tag}u{i}")).collect();
        // Devices per user.
        let mut devices = vec![1usize; n_users];
        if scenario.kind == Kind::Mixed {
            for d in devices.iter_mut() {
                if rng.random::<f64>() < scenario.multi_device_share {
                    *d = if rng.random::<f64>() < 0.1 { 3 } else { 2 };
                }
            }
        }
        let mut sessions = Vec::new();
        let mut user_sessions = vec![Vec::new(); n_users];
        for (u, &d) in devices.iter().enumerate() {
            for _ in 0..d {
                user_sessions[u].push(sessions.len() as u32);
                sessions.push(SessionPlan {
                    user: u as u32,
                    connect_at: Duration::ZERO,
                    convs: Vec::new(),
                    streams: Vec::new(),
                    churn: None,
                });
            }
        }
        // Spread the connects evenly over the ramp-up, in a shuffled order.
        let mut order: Vec<usize> = (0..sessions.len()).collect();
        order.shuffle(&mut rng);
        let step = scenario.ramp_up_secs / sessions.len().max(1) as f64;
        for (i, &s) in order.iter().enumerate() {
            sessions[s].connect_at = secs(step * i as f64);
        }

        let mut plan = Plan {
            tag: tag.to_owned(),
            users,
            user_sessions,
            contacts: vec![Vec::new(); n_users],
            sessions,
            groups: Vec::new(),
            convs: Vec::new(),
            conv_index: HashMap::new(),
        };

        // Groups.
        let mut group_rates = Vec::new();
        match scenario.kind {
            Kind::Fanout | Kind::Churn => {
                for g in 0..scenario.groups {
                    let members = (g * scenario.group_size..(g + 1) * scenario.group_size)
                        .map(|u| u as u32)
                        .collect();
                    plan.add_group(members, false);
                    group_rates.push(scenario.rate);
                }
            }
            Kind::Mixed => {
                let zipf = Zipf::new(scenario.group_size.min(n_users).max(3), scenario.zipf_s);
                let all: Vec<u32> = (0..n_users as u32).collect();
                let mut sizes = Vec::new();
                for _ in 0..scenario.groups {
                    let size = zipf.sample(&mut rng).max(3).min(n_users);
                    let members: Vec<u32> = all.choose_multiple(&mut rng, size).copied().collect();
                    plan.add_group(members, false);
                    sizes.push(size as f64);
                }
                for _ in 0..scenario.large_groups {
                    let size = scenario.large_group_size.min(n_users).max(2);
                    let members: Vec<u32> = all.choose_multiple(&mut rng, size).copied().collect();
                    plan.add_group(members, true);
                    sizes.push(size as f64);
                }
                // Bigger groups are chattier: the rate is shared in proportion to size.
                let total: f64 = sizes.iter().sum();
                group_rates = sizes
                    .iter()
                    .map(|s| scenario.rate * s / total.max(1.0))
                    .collect();
            }
            _ => {}
        }
        for (g, rate) in group_rates.iter().enumerate() {
            if *rate <= 0.0 {
                continue;
            }
            let members = plan.groups[g].members.clone();
            let k = scenario.senders_per_group.clamp(1, members.len());
            let senders: Vec<u32> = members.choose_multiple(&mut rng, k).copied().collect();
            let interval = 1.0 / (rate / k as f64);
            for u in senders {
                let s = plan.user_sessions[u as usize][0];
                let phase = rng.random::<f64>() * interval;
                plan.sessions[s as usize].streams.push(Stream {
                    target: StreamTarget::Group(g as u32),
                    interval: secs(interval),
                    phase: secs(phase),
                });
            }
        }

        // Contacts and direct messages.
        let dm_rate = match scenario.kind {
            Kind::Direct => scenario.rate,
            Kind::Mixed => scenario.dm_rate,
            _ => 0.0,
        };
        if dm_rate > 0.0 && n_users >= 2 {
            let mut edges = BTreeSet::new();
            let per_user = (scenario.contacts / 2).max(1);
            for u in 0..n_users as u32 {
                for _ in 0..per_user {
                    let v = rng.random_range(0..n_users as u32);
                    if v != u {
                        edges.insert((u.min(v), u.max(v)));
                    }
                }
            }
            for (a, b) in edges {
                let id = ConvId::direct(
                    &UserId::new(plan.users[a as usize].clone()),
                    &UserId::new(plan.users[b as usize].clone()),
                );
                let conv = plan.convs.len() as u32;
                let mut sess = plan.user_sessions[a as usize].clone();
                sess.extend(plan.user_sessions[b as usize].iter().copied());
                plan.convs.push(ConvPlan {
                    id: id.as_str().to_owned(),
                    sessions: sess,
                });
                plan.contacts[a as usize].push((b, conv));
                plan.contacts[b as usize].push((a, conv));
            }
            let senders: Vec<u32> = (0..n_users as u32)
                .filter(|&u| !plan.contacts[u as usize].is_empty())
                .collect();
            let interval = senders.len() as f64 / dm_rate;
            for u in senders {
                let s = plan.user_sessions[u as usize][0];
                let phase = rng.random::<f64>() * interval;
                plan.sessions[s as usize].streams.push(Stream {
                    target: StreamTarget::Contacts,
                    interval: secs(interval),
                    phase: secs(phase),
                });
            }
        }

        // Which conversations each session receives.
        for (c, conv) in plan.convs.iter().enumerate() {
            for &s in &conv.sessions {
                plan.sessions[s as usize].convs.push(c as u32);
            }
        }

        // Churn.
        if scenario.churn_share > 0.0
            && scenario.churn_rate > 0.0
            && scenario.kind != Kind::ConnectStorm
        {
            let n = plan.sessions.len();
            let k = ((n as f64 * scenario.churn_share).round() as usize).clamp(1, n);
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut rng);
            let period = k as f64 / scenario.churn_rate;
            for &s in idx.iter().take(k) {
                let phase = rng.random::<f64>() * period;
                plan.sessions[s].churn = Some(Churn {
                    period: secs(period),
                    phase: secs(phase),
                });
            }
        }
        plan.reindex();
        plan
    }

    fn add_group(&mut self, members: Vec<u32>, large: bool) {
        let conv = self.convs.len() as u32;
        let g = self.groups.len();
        let sessions = members
            .iter()
            .flat_map(|&u| self.user_sessions[u as usize].iter().copied())
            .collect();
        self.convs.push(ConvPlan {
            id: format!("group:pending{g}"),
            sessions,
        });
        self.groups.push(GroupPlan {
            members,
            conv,
            large,
        });
    }

    /// Sets the server-chosen group ids (in group order) and rebuilds the index.
    pub fn set_group_ids(&mut self, ids: &[String]) {
        for (g, id) in self.groups.iter().zip(ids) {
            self.convs[g.conv as usize].id = format!("group:{id}");
        }
        self.reindex();
    }

    fn reindex(&mut self) {
        self.conv_index = self
            .convs
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i as u32))
            .collect();
    }

    /// The group id of group `g` (without the `group:` prefix).
    pub fn group_id(&self, g: u32) -> &str {
        let id = &self.convs[self.groups[g as usize].conv as usize].id;
        id.strip_prefix("group:").unwrap_or(id)
    }

    /// Total deliveries expected per message in `conv` (every session but the sender's).
    pub fn fanout_of(&self, conv: u32) -> u64 {
        self.convs[conv as usize].sessions.len().saturating_sub(1) as u64
    }

    /// Messages per second the plan sends in total.
    pub fn planned_rate(&self) -> f64 {
        self.sessions
            .iter()
            .flat_map(|s| &s.streams)
            .map(|st| 1.0 / st.interval.as_secs_f64().max(1e-9))
            .sum()
    }

    /// Deliveries per second the plan expects in total.
    pub fn planned_delivery_rate(&self) -> f64 {
        self.sessions
            .iter()
            .flat_map(|s| &s.streams)
            .map(|st| {
                let r = 1.0 / st.interval.as_secs_f64().max(1e-9);
                match st.target {
                    StreamTarget::Group(g) => {
                        r * self.fanout_of(self.groups[g as usize].conv) as f64
                    }
                    StreamTarget::Contacts => r, // one device per contact on average
                }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_plan() {
        for p in crate::scenario::PRESETS {
            let s = Scenario::preset(p).unwrap();
            assert_eq!(Plan::build(&s, "t"), Plan::build(&s, "t"), "{p}");
        }
        let mut s = Scenario::preset("mixed").unwrap();
        let a = Plan::build(&s, "t");
        s.seed = 2;
        assert_ne!(a, Plan::build(&s, "t"));
    }

    #[test]
    fn fanout_plan_matches_the_rates() {
        let s = Scenario {
            groups: 4,
            group_size: 10,
            rate: 8.0,
            senders_per_group: 2,
            ..Scenario::default()
        };
        let p = Plan::build(&s, "x");
        assert_eq!(p.users.len(), 40);
        assert_eq!(p.groups.len(), 4);
        assert!((p.planned_rate() - 32.0).abs() < 1e-6);
        assert!((p.planned_delivery_rate() - 32.0 * 9.0).abs() < 1e-6);
        assert!(p.sessions.iter().all(|s| s.convs.len() == 1));
    }

    #[test]
    fn mixed_plan_has_devices_and_large_groups() {
        let s = Scenario::preset("mixed").unwrap();
        let p = Plan::build(&s, "x");
        assert!(p.sessions.len() > p.users.len());
        assert_eq!(p.groups.iter().filter(|g| g.large).count(), 2);
        assert!(
            (p.planned_rate() - 1000.0).abs() < 1.0,
            "{}",
            p.planned_rate()
        );
        assert!(p
            .groups
            .iter()
            .all(|g| g.members.len() <= MAX_INITIAL_MEMBERS + 1));
    }

    #[test]
    fn zipf_prefers_small_values() {
        let z = Zipf::new(100, 1.1);
        let mut rng = StdRng::seed_from_u64(3);
        let v: Vec<usize> = (0..1000).map(|_| z.sample(&mut rng)).collect();
        assert!(v.iter().all(|&x| (1..=100).contains(&x)));
        assert!(v.iter().filter(|&&x| x <= 5).count() > 400);
    }
}
