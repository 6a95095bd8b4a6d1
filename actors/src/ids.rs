//! Prefixed, sortable identifiers. The suffix is a ULID in lower case, so ids
//! sort by creation time and cursors can page through them.

use std::fmt;
use std::sync::{LazyLock, Mutex};

/// Monotonic within a millisecond: ids made one after the other sort in that
/// order, so events listed by id follow their sequence.
static GENERATOR: LazyLock<Mutex<ulid::Generator>> =
    LazyLock::new(|| Mutex::new(ulid::Generator::new()));

fn next_ulid() -> ulid::Ulid {
    let mut generator = GENERATOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // On the (2^80 per millisecond) overflow, a fresh random id is still unique.
    generator
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::generate())
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, unique id.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, next_ulid().to_string().to_ascii_lowercase()))
            }

            /// Accepts a string that has this id's shape; anything else is `None`,
            /// so a malformed id from a URL is answered as "not found" without a query.
            /// The shape is Herald's (a lower-case ULID) or Docora's (24
            /// lower-case hex), which apps and repositories imported from
            /// Docora keep.
            pub fn parse(raw: &str) -> Option<Self> {
                let suffix = raw.strip_prefix($prefix)?;
                let herald = suffix.len() == 26
                    && suffix.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
                let docora = suffix.len() == 24
                    && suffix.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                (herald || docora).then(|| Self(raw.to_owned()))
            }

            /// An id read back from Herald's own tables, which hold only ids
            /// Herald made: taken as it is, without checking its shape again.
            pub fn stored(raw: impl Into<String>) -> Self {
                Self(raw.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        /// Compared with a column as the string it is.
        impl From<&$name> for sea_orm::Value {
            fn from(id: &$name) -> Self {
                id.as_str().into()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// A client application.
    AppId,
    "app_"
);
prefixed_id!(
    /// A watched git remote and branch, shared by every app that subscribes to it.
    RepoId,
    "repo_"
);
prefixed_id!(
    /// One app's subscription to one repository.
    SubscriptionId,
    "sub_"
);
prefixed_id!(
    /// One observed commit of a repository.
    SnapshotId,
    "snap_"
);
prefixed_id!(
    /// One event of the outbox.
    EventId,
    "evt_"
);
prefixed_id!(
    /// One HTTP attempt to deliver an event.
    AttemptId,
    "att_"
);
prefixed_id!(
    /// One transfer of a chunked file (`chunk.id`): every chunk of the
    /// transfer carries it, and sending the file again is another transfer.
    ChunkId,
    "chk_"
);
prefixed_id!(
    /// One stored inbound push webhook.
    HookId,
    "hook_"
);
prefixed_id!(
    /// One bulk operation of an operator (`bulk_operations`).
    OperationId,
    "op_"
);
prefixed_id!(
    /// One replay of the changes between two commits (`replays`): the
    /// `replay.id` of every event it wrote.
    ReplayId,
    "rpl_"
);

prefixed_id!(
    /// One scan of a repository, as its console page lists it (`scans`).
    ScanId,
    "scan_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_time() {
        let first = AppId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = AppId::generate();
        assert!(first < second);
        assert_eq!(AppId::parse(first.as_str()), Some(first.clone()));
        assert!(first.as_str().starts_with("app_"));
    }

    #[test]
    fn ids_made_in_a_row_sort_in_that_order() {
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn malformed_ids_are_refused() {
        assert_eq!(RepoId::parse("repo_"), None);
        assert_eq!(RepoId::parse("app_01jd0000000000000000000000"), None);
        assert_eq!(RepoId::parse("repo_01JD0000000000000000000000"), None);
        assert_eq!(RepoId::parse("repo_01jd00000000000000000000000"), None);
        assert!(RepoId::parse("repo_01jd0000000000000000000000").is_some());
    }

    #[test]
    fn docora_ids_of_imported_rows_parse() {
        assert!(AppId::parse("app_0123456789abcdef01234567").is_some());
        assert!(RepoId::parse("repo_0123456789abcdef01234567").is_some());
        // Docora's ids are lower-case hex: anything else of that length is not one.
        assert_eq!(AppId::parse("app_0123456789ABCDEF01234567"), None);
        assert_eq!(AppId::parse("app_0123456789abcdefg1234567"), None);
    }
}
