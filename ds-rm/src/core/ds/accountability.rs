//! Accountability for commits the hub accepted but could not fully judge.
//!
//! The hub cannot verify membership or confirmation tags, so a member can get a commit accepted
//! that no honest member can process. Members report such commits; this module remembers the
//! last few accepted commits and counts reports per committer leaf. It lives inside the
//! EAR-encrypted group state, so a seized disk shows none of it, and it is bounded: at most
//! [`RECENT_COMMITS`] records, each with at most one entry per reporting leaf, and one tally per
//! current leaf.

use crate::core::HubError;
use crate::core::{GroupError, RequestError};
use mimi_rm_protocol::ds::{CommitRejected, ReportTally};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize};

/// How many accepted commits stay reportable. A report about an older commit is refused; by
/// then every member has long processed (or reported) it.
pub const RECENT_COMMITS: usize = 32;

/// One accepted commit that members may still report.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct CommitRecord {
    /// The epoch the commit was sent in.
    pub epoch: u64,
    /// `commit_ref` of the fanned-out commit message.
    pub commit_ref: [u8; 32],
    /// The committer's leaf after the commit; `None` once that leaf was removed.
    pub committer: Option<u32>,
    /// Leaves that reported this commit (each counted once).
    pub reporters: Vec<u32>,
}

/// The reportable commits and the per-leaf tallies of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accountability {
    /// Newest last; at most [`RECENT_COMMITS`].
    pub recent: Vec<CommitRecord>,
    /// One entry per current leaf that has been reported at least once.
    pub tallies: Vec<ReportTally>,
}

impl Accountability {
    /// Remembers an accepted commit, dropping the oldest beyond the bound.
    pub fn record_commit(&mut self, epoch: u64, commit_ref: [u8; 32], committer: u32) {
        self.recent.push(CommitRecord {
            epoch,
            commit_ref,
            committer: Some(committer),
            reporters: Vec::new(),
        });
        if self.recent.len() > RECENT_COMMITS {
            let excess = self.recent.len() - RECENT_COMMITS;
            self.recent.drain(..excess);
        }
    }

    /// Leaves removed by a commit lose their tally, so a later member placed at the same index
    /// starts clean; their past commits stay reportable but count against nobody.
    pub fn forget_leaves(&mut self, removed: &[u32]) {
        self.tallies.retain(|t| !removed.contains(&t.leaf));
        for r in &mut self.recent {
            if r.committer.is_some_and(|c| removed.contains(&c)) {
                r.committer = None;
            }
        }
    }

    /// A resyncing member moves from `from` to `to` and keeps its record: resyncing must not
    /// launder an offender's tally.
    pub fn move_leaf(&mut self, from: u32, to: u32) {
        if from == to {
            return;
        }
        self.forget_leaves(&[to]);
        for t in &mut self.tallies {
            if t.leaf == from {
                t.leaf = to;
            }
        }
        for r in &mut self.recent {
            if r.committer == Some(from) {
                r.committer = Some(to);
            }
            for l in &mut r.reporters {
                if *l == from {
                    *l = to;
                }
            }
        }
    }

    /// Counts `reporter`'s report. Returns whether anything changed (a repeated report by the
    /// same leaf changes nothing).
    pub fn report(&mut self, reporter: u32, report: &CommitRejected) -> Result<bool, HubError> {
        let record = self
            .recent
            .iter_mut()
            .find(|r| r.commit_ref == report.commit_ref)
            .ok_or(HubError::Group(GroupError::UnknownCommit))?;
        if record.epoch != report.epoch {
            return Err(HubError::Group(GroupError::UnknownEpoch));
        }
        if record.committer == Some(reporter) {
            return Err(HubError::Request(RequestError::NotAuthorized(
                "a member cannot report its own commit",
            )));
        }
        if record.reporters.contains(&reporter) {
            return Ok(false);
        }
        record.reporters.push(reporter);
        let first = record.reporters.len() == 1;
        if let Some(committer) = record.committer {
            let pos = match self.tallies.iter().position(|t| t.leaf == committer) {
                Some(p) => p,
                None => {
                    self.tallies.push(ReportTally {
                        leaf: committer,
                        reported_commits: 0,
                        reports: 0,
                    });
                    self.tallies.len() - 1
                }
            };
            let tally = &mut self.tallies[pos];
            tally.reported_commits = tally.reported_commits.saturating_add(u32::from(first));
            tally.reports = tally.reports.saturating_add(1);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mimi_rm_protocol::ds::RejectReason;

    fn rejected(epoch: u64, r: u8) -> CommitRejected {
        CommitRejected {
            epoch,
            commit_ref: [r; 32],
            reason: RejectReason::MembershipTag,
        }
    }

    #[test]
    fn counts_each_reporter_once_per_commit() {
        let mut a = Accountability::default();
        a.record_commit(4, [1; 32], 0);
        a.record_commit(5, [2; 32], 0);
        assert!(a.report(1, &rejected(4, 1)).unwrap());
        assert!(!a.report(1, &rejected(4, 1)).unwrap());
        assert!(a.report(2, &rejected(4, 1)).unwrap());
        assert!(a.report(2, &rejected(5, 2)).unwrap());
        assert_eq!(
            a.tallies,
            vec![ReportTally {
                leaf: 0,
                reported_commits: 2,
                reports: 3
            }]
        );
    }

    #[test]
    fn refuses_unknown_commit_wrong_epoch_and_self_report() {
        let mut a = Accountability::default();
        a.record_commit(4, [1; 32], 3);
        let before = a.clone();
        assert!(matches!(
            a.report(1, &rejected(4, 9)),
            Err(HubError::Group(GroupError::UnknownCommit))
        ));
        assert!(matches!(
            a.report(1, &rejected(5, 1)),
            Err(HubError::Group(GroupError::UnknownEpoch))
        ));
        assert!(matches!(
            a.report(3, &rejected(4, 1)),
            Err(HubError::Request(RequestError::NotAuthorized(_)))
        ));
        assert_eq!(a, before);
    }

    #[test]
    fn stays_bounded() {
        let mut a = Accountability::default();
        for i in 0..1000u64 {
            a.record_commit(i, [(i % 251) as u8; 32], 0);
        }
        assert_eq!(a.recent.len(), RECENT_COMMITS);
        assert_eq!(a.recent[0].epoch, 1000 - RECENT_COMMITS as u64);
    }

    #[test]
    fn removal_clears_and_resync_carries_the_tally() {
        let mut a = Accountability::default();
        a.record_commit(1, [1; 32], 0);
        a.report(1, &rejected(1, 1)).unwrap();
        a.move_leaf(0, 4);
        assert_eq!(a.tallies[0].leaf, 4);
        assert_eq!(a.recent[0].committer, Some(4));
        a.forget_leaves(&[4]);
        assert!(a.tallies.is_empty());
        assert_eq!(a.recent[0].committer, None);
        // A report about a removed committer's commit is kept but counts against nobody.
        assert!(a.report(2, &rejected(1, 1)).unwrap());
        assert!(a.tallies.is_empty());
    }
}
