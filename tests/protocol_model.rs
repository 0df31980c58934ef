//! The admission, dedup, queueing and triage protocol as an executable model, checked
//! exhaustively with stateright (docs/protocol-model.md). The model calls the ledgers' own
//! decision function, `dedup::decide`, so it checks the real rules, not a copy of them.
//!
//! Every step that is a separate call on AWS (read the record, the conditional put with its
//! lease, the SQS send, the mark, the release) is a separate step here, so the checker tries
//! every interleaving of two ingest invocations, a crash of either after any step, the lease
//! running out, a triage failure with redelivery or dead-lettering, and triage's idempotent
//! incident writes and dispatch markers. The embedded host writes the record and the queue row in
//! one transaction: one step. Two deliberately broken variants must produce counter-examples.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use causeflow_shared::dedup::{decide, Decision, DedupRecord};
use causeflow_shared::model::AlertStatus;
use stateright::{Checker, Model, Property};

/// One clock tick is one lease: a record written at tick t is stale from tick t + 1.
const LEASE_MS: i64 = 15_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Host {
    /// DynamoDB + SQS: read, conditional put (pending, with a lease), send, mark queued.
    Aws,
    /// SQLite: decide, record and queue row in one transaction.
    Embedded,
}

/// Deliberate mistakes, to show the checker finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Bug {
    None,
    /// A live pending lease answered 409 instead of 503.
    LiveLeaseAnswered409,
    /// The embedded record and queue row written in two transactions.
    TwoTransactions,
    /// An ingest invocation that keeps running after its lease ran out (a function timeout above
    /// the lease).
    OutlivesLease,
    /// Triage that never gives up a key naming a resolved incident (before the model found the
    /// resolve that dies between its send and its release).
    TriageKeepsKeys,
}

#[derive(Clone, Debug)]
struct Protocol {
    host: Host,
    bug: Bug,
    /// Each sender's alert (same key): `true` firing, `false` resolved.
    alerts: Vec<bool>,
    /// The queue's maxReceiveCount.
    max_receives: u8,
    /// Ingest crashes allowed in one run.
    crashes: u8,
    /// Triage failures (each a redelivery, or a dead letter at the last receive).
    failures: u8,
    /// Clock ticks (lease expiries) allowed.
    ticks: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Rec {
    incident: u8,
    pending: bool,
    lease_until: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Msg {
    firing: bool,
    incident: u8,
    /// Admission order of the request that queued it.
    seq: u8,
    receives: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Pc {
    /// About to read the record (a new request, or a retry).
    Start,
    /// The conditional put; `true` when taking over a stale claim under its incident id.
    Claim(u8, bool),
    /// Committed (embedded), answer not yet written.
    Respond(Answer),
    Send(u8),
    Mark(u8),
    SendResolve(u8),
    Release(u8),
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Sender {
    firing: bool,
    pc: Pc,
    /// Retries left after a 503 (senders retry 5xx).
    retries: u8,
    /// When this request read the record (admission order).
    seq: u8,
    /// When its first attempt did: a retry is the same request.
    first: u8,
    /// Its claim took a stale one over.
    takeover: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Answer {
    Created(u8),
    Duplicate(u8),
    Resolved(u8),
    Ignored,
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Inc {
    open: bool,
    resolved_by: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    clock: u8,
    record: Option<Rec>,
    queue: Vec<Msg>,
    /// The message triage holds and how far it got (0: incident written next, 1: dispatch next).
    triage: Option<(Msg, u8)>,
    dlq: Vec<Msg>,
    incidents: BTreeMap<u8, Inc>,
    /// Publications per task (incident, cancel?).
    published: BTreeMap<(u8, bool), u8>,
    senders: Vec<Sender>,
    answers: Vec<Answer>,
    /// Admission order of the request that first claimed each incident id.
    claimed_at: BTreeMap<u8, u8>,
    /// Incident ids claimed by a request that then crashed.
    crashed_claims: BTreeSet<u8>,
    /// Each 202 `created`: its incident and the admission order of its request.
    created: Vec<(u8, u8)>,
    /// Firings dead-lettered because triage was killed (no `give_up`) on their last receive.
    killed_dlq: BTreeSet<u8>,
    next_id: u8,
    next_seq: u8,
    crashes: u8,
    failures: u8,
    ticks: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Step(usize),
    Crash(usize),
    Tick,
    Receive(usize),
    TriageStep,
    TriageFail,
    /// Triage is killed on the message (timeout, SIGKILL): no `give_up` runs.
    TriageKilled,
}

fn now(s: &State) -> i64 {
    s.clock as i64 * LEASE_MS
}

fn as_record(r: &Rec) -> DedupRecord {
    DedupRecord {
        incident_id: r.incident.to_string(),
        pending: r.pending,
        lease_until_ms: r.lease_until,
        expires_at_ms: i64::MAX,
    }
}

fn id(s: &str) -> u8 {
    s.parse().expect("model incident ids are small numbers")
}

impl State {
    fn quiescent(&self) -> bool {
        self.senders.iter().all(|s| s.pc == Pc::Done)
            && self.queue.is_empty()
            && self.triage.is_none()
    }

    fn enqueue(&mut self, firing: bool, incident: u8, seq: u8) {
        self.queue.push(Msg {
            firing,
            incident,
            seq,
            receives: 0,
        });
        self.queue.sort();
    }

    fn claim(&mut self, incident: u8, seq: u8) {
        self.claimed_at.entry(incident).or_insert(seq);
    }
}

impl Protocol {
    /// The sender's next step.
    fn step(&self, s: &mut State, i: usize) {
        let firing = s.senders[i].firing;
        match s.senders[i].pc.clone() {
            Pc::Start => {
                let seq = s.next_seq;
                s.next_seq += 1;
                s.senders[i].seq = seq;
                if s.senders[i].first == 0 {
                    s.senders[i].first = seq;
                }
                let existing = s.record.as_ref().map(as_record);
                let status = if firing {
                    AlertStatus::Firing
                } else {
                    AlertStatus::Resolved
                };
                let fresh = s.next_id;
                let d = decide(existing.as_ref(), status, now(s), || fresh.to_string());
                match d {
                    Decision::Create { incident_id } => {
                        let inc = id(&incident_id);
                        if inc == fresh {
                            s.next_id += 1;
                        }
                        match (self.host, self.bug) {
                            (Host::Aws, _) => s.senders[i].pc = Pc::Claim(inc, inc != fresh),
                            (Host::Embedded, Bug::TwoTransactions) => {
                                // First transaction: the record alone.
                                s.record = Some(Rec {
                                    incident: inc,
                                    pending: false,
                                    lease_until: 0,
                                });
                                s.claim(inc, seq);
                                s.senders[i].pc = Pc::Send(inc);
                            }
                            (Host::Embedded, _) => {
                                // One transaction: record, queue row, then the answer.
                                s.record = Some(Rec {
                                    incident: inc,
                                    pending: false,
                                    lease_until: 0,
                                });
                                s.claim(inc, seq);
                                s.enqueue(true, inc, seq);
                                s.senders[i].pc = Pc::Respond(Answer::Created(inc));
                            }
                        }
                    }
                    Decision::Duplicate { incident_id } => {
                        s.answers.push(Answer::Duplicate(id(&incident_id)));
                        s.senders[i].pc = Pc::Done;
                    }
                    Decision::InFlight { incident_id, .. } => {
                        if self.bug == Bug::LiveLeaseAnswered409 {
                            s.answers.push(Answer::Duplicate(id(&incident_id)));
                            s.senders[i].pc = Pc::Done;
                        } else {
                            s.answers.push(Answer::Unavailable);
                            self.retry_or_stop(s, i);
                        }
                    }
                    Decision::Resolve { incident_id } => {
                        let inc = id(&incident_id);
                        match self.host {
                            Host::Aws => s.senders[i].pc = Pc::SendResolve(inc),
                            Host::Embedded => {
                                s.enqueue(false, inc, seq);
                                s.record = None;
                                s.senders[i].pc = Pc::Respond(Answer::Resolved(inc));
                            }
                        }
                    }
                    Decision::Ignore | Decision::Acknowledge { .. } => {
                        s.answers.push(Answer::Ignored);
                        s.senders[i].pc = Pc::Done;
                    }
                }
            }
            Pc::Claim(inc, takeover) => {
                // CLAIM_CONDITION: absent, expired, or a pending lease that ran out; a takeover
                // (TAKEOVER_CONDITION) needs that very stale claim still there.
                let stale_ours = s.record.as_ref().is_some_and(|r| {
                    r.incident == inc && r.pending && !as_record(r).is_live(now(s))
                });
                let free = if takeover {
                    stale_ours
                } else {
                    s.record
                        .as_ref()
                        .is_none_or(|r| !as_record(r).is_live(now(s)))
                };
                if free {
                    s.record = Some(Rec {
                        incident: inc,
                        pending: true,
                        lease_until: now(s) + LEASE_MS,
                    });
                    let seq = s.senders[i].seq;
                    s.claim(inc, seq);
                    s.senders[i].takeover = takeover;
                    s.senders[i].pc = Pc::Send(inc);
                } else {
                    // The put's condition failed: decide again on what is stored now.
                    s.senders[i].pc = Pc::Start;
                }
            }
            Pc::Send(inc) => {
                let seq = s.senders[i].seq;
                s.enqueue(true, inc, seq);
                if self.host == Host::Embedded {
                    s.senders[i].pc = Pc::Respond(Answer::Created(inc));
                } else {
                    s.senders[i].pc = Pc::Mark(inc);
                }
            }
            Pc::Respond(a) => {
                if let Answer::Created(inc) = a {
                    let first = s.senders[i].first;
                    s.created.push((inc, first));
                }
                s.answers.push(a);
                s.senders[i].pc = Pc::Done;
            }
            Pc::Mark(inc) => {
                // MARK_QUEUED on NAMES_INCIDENT: a resolve may have released the key meanwhile.
                if let Some(r) = s.record.as_mut().filter(|r| r.incident == inc) {
                    r.pending = false;
                }
                // A takeover finishes the crashed claim's admission under its incident id, so
                // it counts from that claim (a resolve that read the stale claim comes after it).
                let first = if s.senders[i].takeover {
                    s.claimed_at
                        .get(&inc)
                        .copied()
                        .unwrap_or(s.senders[i].first)
                } else {
                    s.senders[i].first
                };
                s.created.push((inc, first));
                s.answers.push(Answer::Created(inc));
                s.senders[i].pc = Pc::Done;
            }
            Pc::SendResolve(inc) => {
                let seq = s.senders[i].seq;
                s.enqueue(false, inc, seq);
                s.senders[i].pc = Pc::Release(inc);
            }
            Pc::Release(inc) => {
                if s.record.as_ref().is_some_and(|r| r.incident == inc) {
                    s.record = None;
                }
                s.answers.push(Answer::Resolved(inc));
                s.senders[i].pc = Pc::Done;
            }
            Pc::Done => {}
        }
    }

    /// Triage's `KeyRelease::release`: deletes the key if it still names `incident`.
    fn release(&self, s: &mut State, incident: u8) {
        if self.bug != Bug::TriageKeepsKeys
            && s.record.as_ref().is_some_and(|r| r.incident == incident)
        {
            s.record = None;
        }
    }

    fn retry_or_stop(&self, s: &mut State, i: usize) {
        if s.senders[i].retries > 0 {
            s.senders[i].retries -= 1;
            s.senders[i].pc = Pc::Start;
        } else {
            s.senders[i].pc = Pc::Done;
        }
    }

    /// Triage's next step on the message it holds: the incident write, then the dispatch (or
    /// cancel) through its marker, then the delete.
    fn triage_step(&self, s: &mut State) {
        let Some((msg, step)) = s.triage.clone() else {
            return;
        };
        match step {
            0 => {
                if msg.firing {
                    // IncidentStore::open: inserted unless one with its id exists.
                    let inc = s.incidents.entry(msg.incident).or_insert(Inc {
                        open: true,
                        resolved_by: None,
                    });
                    // Already resolved: the key is given up if it still names it.
                    if !inc.open {
                        self.release(s, msg.incident);
                    }
                } else {
                    // IncidentStore::resolve: resolves, or inserts it resolved.
                    let seq = Some(msg.seq);
                    let inc = s.incidents.entry(msg.incident).or_insert(Inc {
                        open: false,
                        resolved_by: seq,
                    });
                    if inc.open {
                        inc.open = false;
                        inc.resolved_by = seq;
                    }
                    // KeyRelease: a key still naming the resolved incident is given up.
                    self.release(s, msg.incident);
                }
                s.triage = Some((msg, 1));
            }
            _ => {
                let open = s.incidents.get(&msg.incident).is_some_and(|i| i.open);
                let task = (msg.incident, !msg.firing);
                let wanted = if msg.firing {
                    open
                } else {
                    s.published.contains_key(&(msg.incident, false))
                };
                // The marker: a task is published only if no marker for its id exists.
                if wanted && !s.published.contains_key(&task) {
                    s.published.insert(task, 1);
                }
                s.triage = None;
            }
        }
    }
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            clock: 0,
            record: None,
            queue: Vec::new(),
            triage: None,
            dlq: Vec::new(),
            incidents: BTreeMap::new(),
            published: BTreeMap::new(),
            senders: self
                .alerts
                .iter()
                .map(|&firing| Sender {
                    firing,
                    pc: Pc::Start,
                    retries: 1,
                    seq: 0,
                    first: 0,
                    takeover: false,
                })
                .collect(),
            answers: Vec::new(),
            claimed_at: BTreeMap::new(),
            crashed_claims: BTreeSet::new(),
            created: Vec::new(),
            killed_dlq: BTreeSet::new(),
            next_id: 1,
            next_seq: 1,
            crashes: self.crashes,
            failures: self.failures,
            ticks: self.ticks,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for (i, sender) in s.senders.iter().enumerate() {
            if sender.pc != Pc::Done {
                actions.push(Action::Step(i));
                // A crash after any step that wrote something (a crash before the first write
                // is a request that never arrived).
                if s.crashes > 0 && sender.pc != Pc::Start {
                    actions.push(Action::Crash(i));
                }
            }
        }
        if s.ticks > 0 {
            actions.push(Action::Tick);
        }
        if s.triage.is_none() {
            for k in 0..s.queue.len() {
                actions.push(Action::Receive(k));
            }
        } else {
            actions.push(Action::TriageStep);
            if s.failures > 0 {
                actions.push(Action::TriageFail);
                actions.push(Action::TriageKilled);
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Step(i) => self.step(&mut s, i),
            Action::Crash(i) => {
                s.crashes -= 1;
                if let Pc::Send(inc) | Pc::Mark(inc) = s.senders[i].pc {
                    s.crashed_claims.insert(inc);
                }
                s.senders[i].pc = Pc::Done;
            }
            Action::TriageKilled => {
                s.failures -= 1;
                let (msg, _) = s.triage.take()?;
                if msg.receives >= self.max_receives {
                    if msg.firing {
                        s.killed_dlq.insert(msg.incident);
                    }
                    s.dlq.push(msg);
                    s.dlq.sort();
                } else {
                    s.queue.push(msg);
                    s.queue.sort();
                }
            }
            Action::Tick => {
                s.ticks -= 1;
                s.clock += 1;
                // A lease outlasts the function's timeout (15 s against 10 s): once a lease can
                // have run out, every invocation that was in the middle of a request has been
                // stopped by Lambda, answering nothing.
                if self.bug != Bug::OutlivesLease {
                    for x in s.senders.iter_mut() {
                        if !matches!(x.pc, Pc::Start | Pc::Done) {
                            if let Pc::Send(inc) | Pc::Mark(inc) = x.pc {
                                s.crashed_claims.insert(inc);
                            }
                            x.pc = Pc::Done;
                        }
                    }
                }
            }
            Action::Receive(k) => {
                let mut msg = s.queue.remove(k);
                msg.receives += 1;
                s.triage = Some((msg, 0));
            }
            Action::TriageStep => self.triage_step(&mut s),
            Action::TriageFail => {
                s.failures -= 1;
                let (msg, _) = s.triage.take()?;
                if msg.receives >= self.max_receives {
                    // Triage::give_up: a firing whose incident was never recorded releases its
                    // key (if the key still names it), then the message goes to the DLQ.
                    if msg.firing
                        && !s.incidents.contains_key(&msg.incident)
                        && s.record
                            .as_ref()
                            .is_some_and(|r| r.incident == msg.incident)
                    {
                        s.record = None;
                    }
                    s.dlq.push(msg);
                    s.dlq.sort();
                } else {
                    s.queue.push(msg);
                    s.queue.sort();
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut p = vec![
            // Once triage has caught up. Before that, SQS (which keeps no order) may triage a new
            // firing before the resolve that was queued ahead of it: for that moment the old
            // incident still shows open beside the new one (docs/protocol-model.md).
            Property::always("never two open incidents for one key", |_, s: &State| {
                !s.quiescent() || s.incidents.values().filter(|i| i.open).count() <= 1
            }),
            Property::always(
                "every 202 created ends as its incident, or in the DLQ with its key released",
                |_, s: &State| {
                    // A triage killed on the last receive runs no give_up: that key stays until
                    // its TTL or a redrive (docs/protocol-model.md).
                    !s.quiescent()
                        || s.created.iter().all(|(inc, _)| {
                            s.incidents.contains_key(inc)
                                || (s.dlq.iter().any(|m| m.firing && m.incident == *inc)
                                    && (s.killed_dlq.contains(inc)
                                        || s.record.as_ref().is_none_or(|r| r.incident != *inc)))
                        })
                },
            ),
            Property::always(
                "a 202 created is never closed by a resolve admitted before it",
                |_, s: &State| {
                    s.created.iter().all(|(inc, seq)| {
                        s.incidents
                            .get(inc)
                            .and_then(|i| i.resolved_by)
                            .is_none_or(|r| r > *seq)
                    })
                },
            ),
            Property::always(
                "at rest, a held key names an open incident or a dead-lettered firing",
                |_, s: &State| {
                    !s.quiescent()
                        || s.record.as_ref().is_none_or(|r| {
                            r.pending
                                || s.incidents.get(&r.incident).is_some_and(|i| i.open)
                                || s.dlq.iter().any(|m| m.firing && m.incident == r.incident)
                        })
                },
            ),
            Property::always(
                "a 409 names an incident that exists or will",
                |_, s: &State| {
                    !s.quiescent()
                        || s.answers.iter().all(|a| match a {
                            Answer::Duplicate(inc) => {
                                s.incidents.contains_key(inc)
                                    || s.dlq.iter().any(|m| m.firing && m.incident == *inc)
                            }
                            _ => true,
                        })
                },
            ),
            Property::always(
                "a resolve never closes an incident opened after it",
                |_, s: &State| {
                    s.incidents.iter().all(|(inc, i)| {
                        match (i.resolved_by, s.claimed_at.get(inc)) {
                            (Some(r), Some(c)) => r > *c,
                            _ => true,
                        }
                    })
                },
            ),
            Property::always(
                "an agent task is published at most once per task id",
                |_, s: &State| s.published.values().all(|n| *n <= 1),
            ),
            Property::sometimes("every alert was answered and triaged", |_, s: &State| {
                s.quiescent() && !s.incidents.is_empty()
            }),
        ];
        if self.host == Host::Aws && self.alerts.iter().filter(|f| **f).count() >= 2 {
            p.push(Property::sometimes(
                "a crashed claim is taken over after its lease and answered 202",
                |_, s: &State| {
                    s.answers.iter().any(
                        |a| matches!(a, Answer::Created(inc) if s.crashed_claims.contains(inc)),
                    )
                },
            ));
        }
        p
    }
}

fn protocol(host: Host, bug: Bug, alerts: Vec<bool>, max_receives: u8) -> Protocol {
    Protocol {
        host,
        bug,
        alerts,
        max_receives,
        crashes: 1,
        failures: 1,
        ticks: 1,
    }
}

/// Checks exhaustively; returns the properties that have counter-examples (or, for `sometimes`
/// properties, no example), with the number of states.
fn check(m: Protocol) -> (Vec<&'static str>, usize) {
    let started = Instant::now();
    let c = m.clone().checker().spawn_bfs().join();
    assert!(c.is_done(), "{m:?}: the state space was not exhausted");
    let states = c.unique_state_count();
    // Printed, not asserted: the suite must pass on a busy machine.
    eprintln!("{m:?}: {states} states in {:?}", started.elapsed());
    let failed = m
        .properties()
        .iter()
        .filter(|p| {
            let found = c.discovery(p.name).is_some();
            match p.expectation {
                stateright::Expectation::Always | stateright::Expectation::Eventually => found,
                stateright::Expectation::Sometimes => !found,
            }
        })
        .map(|p| p.name)
        .collect::<Vec<_>>();
    for name in &failed {
        if let Some(path) = c.discovery(name) {
            eprintln!(
                "{name}: {:?}\n  ends in {:?}",
                path.clone().into_actions(),
                path.last_state()
            );
        }
    }
    (failed, states)
}

const FIRING: bool = true;
const RESOLVE: bool = false;

#[test]
fn the_aws_protocol_keeps_every_promise() {
    for alerts in [
        vec![FIRING, FIRING],
        vec![FIRING, RESOLVE],
        vec![RESOLVE, FIRING],
    ] {
        for max_receives in [1, 2] {
            let (failed, states) =
                check(protocol(Host::Aws, Bug::None, alerts.clone(), max_receives));
            assert!(
                failed.is_empty(),
                "{alerts:?} max_receives {max_receives}: {failed:?}"
            );
            assert!(
                states > 100,
                "a model this small checks nothing: {states} states"
            );
        }
    }
}

#[test]
fn three_requests_keep_every_promise() {
    for host in [Host::Aws, Host::Embedded] {
        let m = protocol(host, Bug::None, vec![FIRING, FIRING, RESOLVE], 2);
        let (failed, states) = check(m);
        assert!(failed.is_empty(), "{host:?}: {failed:?}");
        assert!(states > 1_000, "{host:?}: {states} states");
    }
}

#[test]
fn the_embedded_protocol_keeps_every_promise() {
    for alerts in [vec![FIRING, FIRING], vec![FIRING, RESOLVE]] {
        for max_receives in [1, 2] {
            let (failed, _) = check(protocol(
                Host::Embedded,
                Bug::None,
                alerts.clone(),
                max_receives,
            ));
            assert!(
                failed.is_empty(),
                "{alerts:?} max_receives {max_receives}: {failed:?}"
            );
        }
    }
}

#[test]
fn answering_409_to_a_live_pending_lease_is_caught() {
    let (failed, _) = check(protocol(
        Host::Aws,
        Bug::LiveLeaseAnswered409,
        vec![FIRING, FIRING],
        2,
    ));
    assert!(
        failed.contains(&"a 409 names an incident that exists or will"),
        "no counter-example: {failed:?}"
    );
}

#[test]
fn an_invocation_that_outlives_its_lease_is_caught() {
    // Why the ingest function's timeout must stay below the lease: a slow claimant and the
    // request that takes its lease over both open an incident.
    let (failed, _) = check(protocol(
        Host::Aws,
        Bug::OutlivesLease,
        vec![FIRING, FIRING],
        2,
    ));
    assert!(
        failed.contains(&"never two open incidents for one key"),
        "no counter-example: {failed:?}"
    );
}

#[test]
fn a_key_left_naming_a_resolved_incident_is_caught() {
    // A resolve that dies between its SQS send and its release leaves the key naming an
    // incident triage then resolves: every later firing would get a 409 for a closed incident.
    let (failed, _) = check(protocol(
        Host::Aws,
        Bug::TriageKeepsKeys,
        vec![FIRING, RESOLVE],
        1,
    ));
    assert!(
        failed.contains(&"at rest, a held key names an open incident or a dead-lettered firing"),
        "no counter-example: {failed:?}"
    );
}

#[test]
fn writing_the_record_and_the_queue_row_in_two_transactions_is_caught() {
    let (failed, _) = check(protocol(
        Host::Embedded,
        Bug::TwoTransactions,
        vec![FIRING, FIRING],
        2,
    ));
    assert!(
        failed.contains(&"a 409 names an incident that exists or will"),
        "no counter-example: {failed:?}"
    );
}
