//! Watching a service move between two members: a sampler that reads both members' copies
//! every ~200 ms and the make-before-break checks over what it saw.

#![allow(clippy::expect_used)] // test support: a failed expectation is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use skyloom_testbed::Testbed;

use crate::member_replica_pair;

/// What a sampler saw while replicas moved between a source and a target member.
#[derive(Debug, Default)]
pub struct Trace {
    /// Lowest Σ available seen.
    pub min_available: i32,
    /// Highest Σ spec.replicas seen.
    pub max_requested: i32,
    /// Samples where a member held fewer than `replicas - available in the other`: it shrank
    /// before the replicas replacing it were Available.
    pub early_drains: Vec<String>,
    /// Distinct consecutive spec.replicas of the source.
    pub source: Vec<i32>,
    /// Distinct consecutive spec.replicas of the target.
    pub target: Vec<i32>,
    /// Samples taken.
    pub samples: usize,
}

impl Trace {
    /// Never fewer than `replicas` Available, never more than `replicas + max_surge`
    /// requested, and no member shrank before its replacements were Available.
    pub fn assert_make_before_break(&self, replicas: i32, max_surge: i32) {
        assert!(self.samples > 0, "the sampler took no sample");
        assert!(self.min_available >= replicas, "capacity lost: {self:?}");
        assert!(
            self.max_requested <= replicas + max_surge,
            "more than maxSurge extra: {self:?}"
        );
        assert!(
            self.early_drains.is_empty(),
            "a member shrank before its replacements were Available: {self:?}"
        );
    }

    /// How often `seq` turns from growing to shrinking or back.
    pub fn turns(seq: &[i32]) -> usize {
        let signs: Vec<bool> = seq.windows(2).map(|w| w[1] > w[0]).collect();
        signs.windows(2).filter(|w| w[0] != w[1]).count()
    }
}

/// A running sampler; [`Sampler::finish`] stops it and returns what it saw.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Trace>,
}

impl Sampler {
    /// Samples `ns/name` in `source` and `target` (member names) until finished. Each sample
    /// reads the source, the target, then the source again; the source's counts are taken at
    /// the more favourable of its two reads, the target's are exact at the middle one, so a
    /// change between the reads cannot fail a check spuriously (no count goes down and back
    /// up within the milliseconds of one sample).
    pub fn start(
        tb: &'static Testbed,
        ns: &str,
        name: &str,
        replicas: i32,
        (source, target): (&str, &str),
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, name) = (ns.to_owned(), name.to_owned());
        let (source, target) = (source.to_owned(), target.to_owned());
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let source = tb.member(&source).expect("the source member exists");
            let target = tb.member(&target).expect("the target member exists");
            let read = |m| member_replica_pair(m, &ns, &name);
            let mut t = Trace {
                min_available: i32::MAX,
                ..Trace::default()
            };
            while !flag.load(Ordering::SeqCst) {
                let s1 = read(source).await.unwrap_or((0, 0));
                let g = read(target).await.unwrap_or((0, 0));
                let s2 = read(source).await.unwrap_or((0, 0));
                let s_available = s1.1.max(s2.1);
                t.samples += 1;
                t.min_available = t.min_available.min(s_available + g.1);
                t.max_requested = t.max_requested.max(s1.0.min(s2.0) + g.0);
                if s1.0.max(s2.0) + g.1 < replicas || g.0 + s_available < replicas {
                    t.early_drains
                        .push(format!("source {s1:?}/{s2:?}, target {g:?}"));
                }
                for (seq, v) in [(&mut t.source, s2.0), (&mut t.target, g.0)] {
                    if seq.last() != Some(&v) {
                        seq.push(v);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            t
        });
        Self { stop, task }
    }

    /// Stops sampling and returns the trace.
    pub async fn finish(self) -> Trace {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the sampler did not panic")
    }
}
