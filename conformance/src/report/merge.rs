//! Merging the reports of one selection run in pieces (`--shard K/N` on any target, or
//! several hosts) into one report: every instance once, the summary recounted.

use std::collections::BTreeSet;

use super::{Report, RunState, Summary};

/// Why reports cannot be merged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    /// Nothing to merge.
    #[error("no reports to merge")]
    Empty,
    /// The reports ran different guest images.
    #[error("report {index} ran guest image {got}, report 0 ran {want}")]
    Image {
        /// Which report (0-based, in argument order).
        index: usize,
        /// Its image hash.
        got: String,
        /// The first report's.
        want: String,
    },
    /// The reports applied different expectations.
    #[error("report {index} used expectations {got:?}, report 0 used {want:?}")]
    Expectations {
        /// Which report.
        index: usize,
        /// Its expectations source.
        got: String,
        /// The first report's.
        want: String,
    },
    /// An instance has a result in two reports.
    #[error("instance {id} has a result in reports {first} and {second}")]
    Duplicate {
        /// The instance.
        id: String,
        /// The first report holding it.
        first: usize,
        /// The second.
        second: usize,
    },
}

/// The shard of a run: `K/N` parsed (1 <= K <= N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 1.
    pub index: usize,
    /// How many there are.
    pub count: usize,
}

impl Shard {
    /// Parses `K/N`; `Err` names the problem.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s:?}: want K/N, e.g. 1/4"))?;
        let (k, n): (usize, usize) = match (k.trim().parse(), n.trim().parse()) {
            (Ok(k), Ok(n)) => (k, n),
            _ => return Err(format!("--shard {s:?}: K and N must be numbers")),
        };
        if n == 0 || n > 1000 || k == 0 || k > n {
            return Err(format!("--shard {s:?}: need 1 <= K <= N <= 1000"));
        }
        Ok(Self { index: k, count: n })
    }

    /// Whether the instance at `position` of the selection belongs to this shard: round robin
    /// over the selection's order, so shards are the same size within one and deterministic.
    pub fn takes(self, position: usize) -> bool {
        position % self.count == self.index - 1
    }

    /// `K/N`.
    pub fn name(self) -> String {
        format!("{}/{}", self.index, self.count)
    }
}

/// `reports` as one: the first one's identity (its run id prefixed `merged-`, targets joined),
/// every case once — in the selection's order when the reports are the shards 1..N of N (round
/// robin), else in argument order — the summary recounted, complete only if all were.
pub fn merge(reports: &[Report]) -> Result<Report, MergeError> {
    let first = reports.first().ok_or(MergeError::Empty)?;
    for (index, r) in reports.iter().enumerate().skip(1) {
        if r.run.image_sha256 != first.run.image_sha256 {
            return Err(MergeError::Image {
                index,
                got: r.run.image_sha256.clone(),
                want: first.run.image_sha256.clone(),
            });
        }
        if r.expectations != first.expectations {
            return Err(MergeError::Expectations {
                index,
                got: r.expectations.clone(),
                want: first.expectations.clone(),
            });
        }
    }
    let mut seen = std::collections::BTreeMap::new();
    for (index, r) in reports.iter().enumerate() {
        for c in &r.cases {
            if let Some(&prev) = seen.get(&c.id) {
                return Err(MergeError::Duplicate {
                    id: c.id.clone(),
                    first: prev,
                    second: index,
                });
            }
            seen.insert(c.id.clone(), index);
        }
    }
    // Shards 1..N of N each hold positions K-1, K-1+N, ...: interleave them back.
    let shards: Option<Vec<Shard>> = reports
        .iter()
        .map(|r| r.run.shard.as_deref().and_then(|s| Shard::parse(s).ok()))
        .collect();
    let mut ordered: Vec<&Report> = reports.iter().collect();
    let interleave = shards.as_ref().is_some_and(|s| {
        let n = s.len();
        s.iter().all(|x| x.count == n)
            && s.iter().map(|x| x.index).collect::<BTreeSet<_>>().len() == n
    });
    let cases = if interleave {
        if let Some(s) = &shards {
            let mut pairs: Vec<(usize, &Report)> =
                s.iter().map(|x| x.index).zip(reports.iter()).collect();
            pairs.sort_by_key(|p| p.0);
            ordered = pairs.into_iter().map(|p| p.1).collect();
        }
        let longest = ordered.iter().map(|r| r.cases.len()).max().unwrap_or(0);
        let mut out = Vec::new();
        for i in 0..longest {
            for r in &ordered {
                if let Some(c) = r.cases.get(i) {
                    out.push(c.clone());
                }
            }
        }
        out
    } else {
        reports
            .iter()
            .flat_map(|r| r.cases.iter().cloned())
            .collect()
    };
    let selected = reports.iter().map(|r| r.summary.selected).sum();
    let wall_ms = reports.iter().map(|r| r.summary.wall_ms).max().unwrap_or(0);
    let mut targets: Vec<&str> = Vec::new();
    for r in reports {
        if !targets.contains(&r.run.target.as_str()) {
            targets.push(&r.run.target);
        }
    }
    let mut run = first.run.clone();
    run.run_id = format!("merged-{}", first.run.run_id);
    run.target = targets.join("+");
    run.shard = None;
    run.selection = format!(
        "merged:{}",
        reports
            .iter()
            .map(|r| r.run.selection.as_str())
            .collect::<Vec<_>>()
            .join("+")
    );
    let complete = reports.iter().all(|r| r.state == RunState::Complete);
    Ok(Report {
        schema: first.schema.clone(),
        run,
        state: if complete {
            RunState::Complete
        } else if reports.iter().any(|r| r.state == RunState::Interrupted) {
            RunState::Interrupted
        } else {
            RunState::Running
        },
        interrupted: reports.iter().any(|r| r.interrupted),
        expectations: first.expectations.clone(),
        summary: Summary::of(&cases, selected, wall_ms),
        cases,
        host_health: if reports.len() == 1 {
            first.host_health.clone()
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_round_robin() {
        let s = Shard::parse("2/3").expect("2/3");
        assert_eq!((s.index, s.count), (2, 3));
        assert!(s.takes(1) && s.takes(4) && !s.takes(0) && !s.takes(2));
        for bad in ["0/2", "3/2", "1/0", "x/2", "12", "1/1001"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        // Every position in exactly one shard.
        for p in 0..20 {
            let n = (1..=3)
                .filter(|&k| Shard { index: k, count: 3 }.takes(p))
                .count();
            assert_eq!(n, 1);
        }
    }
}
