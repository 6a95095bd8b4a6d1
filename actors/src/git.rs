//! Bare mirrors of the watched remotes, one per repository under
//! `{data_dir}/mirrors`. Everything here blocks (git2 is synchronous): it runs
//! on the scan pool, never on the async executor.
//!
//! A mirror holds tips, not history: each commit Herald diffs, with its
//! tree, fetched at depth 1, git's `shallow` file naming the commits whose
//! parents are absent. Change detection compares trees, never ancestry, so
//! a repository with tens of thousands of commits costs what its latest
//! tree costs, and a force-push onto an unrelated history is a tree against
//! a tree like any other push.
//!
//! - Credentials go only through git2's credential callback: never into a
//!   URL, a git config file, a log line or an error message.
//! - The remote head is checked first; the fetch is skipped when it did not
//!   move. Only the watched branch is fetched, incrementally.
//! - A mirror is rebuilt from the remote only once it is verified damaged:
//!   libgit2 reports corrupt objects while reading it, or it is still
//!   unopenable a minute after the first failure; the system's errors never
//!   count. Mirrors are compacted
//!   ([`Mirror::repack`]) and their pack windows bounded
//!   ([`configure_process`]).
//! - Every connection obeys the address rule when it is made (see
//!   [`egress`]): only the registered host, only public addresses (unless
//!   private targets are allowed), no local repository inside Herald's own
//!   data directory.
//!
//! The work is split by concern: [`error`] classifies failures, [`remote`]
//! reaches a remote (credentials, the connection rule, the head check), and
//! [`mirror`] keeps the local copy (fetch, pins, compaction); [`refs`] names
//! what a mirror holds.

mod arriving;
pub mod blob;
mod egress;
mod error;
#[cfg(test)]
pub(crate) mod fixtures;
mod indexer_windows;
mod local;
mod mirror;
mod pack;
mod refs;
mod remote;
mod socket;
mod tls;

pub use self::arriving::{Arriving, BlobReader, Tap};
pub use self::error::{GitError, GitFailure};
pub use self::mirror::{
    Mirror, MirrorStats, UpdateFailure, VERIFY_DAMAGE_AFTER, configure_process,
};
pub use self::refs::snapshot_ref;
pub use self::remote::{ConnectRule, Credentials, RemoteHead, RemoteSpec, probe};
pub use self::socket::{Cut, LowSpeed};
