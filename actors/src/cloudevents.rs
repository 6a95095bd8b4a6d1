//! CloudEvents 1.0.2 attributes of every message (docs/webhooks.md,
//! CloudEvents), in binary mode: the body stays the webhook's exact JSON
//! (the event's `data`, `content-type: application/json` its
//! `datacontenttype`) and the attributes travel as `ce-*` headers beside the
//! signatures, on webhooks and on broker messages alike.
//!
//! Header values are written as the HTTP binding writes them (its section
//! 3.1.3.2): space, `"`, `%` and everything outside printable ASCII
//! percent-encoded from UTF-8, so a path of any characters is a valid header.

/// The `ce-type` prefix of every Herald event.
pub const TYPE_PREFIX: &str = "dev.herald.";

/// The `ce-specversion` Herald speaks.
pub const SPEC_VERSION: &str = "1.0";

/// What a message's CloudEvents attributes are made from, besides its
/// `webhook-id` (`ce-id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// `ce-type`, in full (`dev.herald.file.created`, …).
    pub kind: String,
    /// The repository the event is about: `ce-source` is
    /// `/repositories/{repository_id}`.
    pub repository_id: String,
    /// The file (or submodule) path the event is about: `ce-subject`.
    pub subject: Option<String>,
    /// When the event happened, RFC 3339: `ce-time`.
    pub time: String,
}

/// The `ce-type` of a message sent to `endpoint`: one of
/// [`TYPES`] for Herald's endpoints; a name Herald does not send (a newer
/// server's, seen by an older CLI) is `dev.herald.{endpoint}`.
pub fn event_type(endpoint: &str) -> String {
    let suffix = TYPES
        .iter()
        .find(|(name, _)| *name == endpoint)
        .map_or(endpoint, |(_, suffix)| suffix);
    format!("{TYPE_PREFIX}{suffix}")
}

/// Each webhook endpoint and its `ce-type` after [`TYPE_PREFIX`].
pub const TYPES: [(&str, &str); 7] = [
    ("create", "file.created"),
    ("update", "file.updated"),
    ("delete", "file.deleted"),
    ("file_too_large", "file.too_large"),
    ("sync_failed", "sync_failed"),
    ("synced", "synced"),
    ("submodule", "submodule.moved"),
];

impl CloudEvent {
    /// The attributes of a message sent to `endpoint` about `path` (none
    /// for a notification) of repository `repository_id`, which happened at
    /// `time` (RFC 3339).
    pub fn new(endpoint: &str, repository_id: &str, path: Option<&str>, time: String) -> Self {
        Self {
            kind: event_type(endpoint),
            repository_id: repository_id.to_owned(),
            subject: path.map(str::to_owned),
            time,
        }
    }

    /// The attributes of `event`'s messages to `endpoint` (`file_too_large`
    /// rather than its kind's endpoint when its file is sent as too large):
    /// its path unless it is a notification, and its creation time, which
    /// its body's `timestamp` gives too.
    pub fn of_event(event: &entity::event::Model, endpoint: &str) -> Self {
        let path = event
            .path
            .as_deref()
            .filter(|_| !event.kind.is_notification());
        Self::new(
            endpoint,
            &event.repository_id,
            path,
            crate::clock::rfc3339_ms(event.created_at),
        )
    }

    /// Hands the `ce-*` headers of the message whose `webhook-id` is `id`
    /// to `put`, by name, their values encoded for a header.
    pub fn headers(&self, id: &str, mut put: impl FnMut(&'static str, &str)) {
        put("ce-specversion", SPEC_VERSION);
        put("ce-id", &encode(id));
        put(
            "ce-source",
            &encode(&format!("/repositories/{}", self.repository_id)),
        );
        put("ce-type", &encode(&self.kind));
        if let Some(subject) = &self.subject {
            put("ce-subject", &encode(subject));
        }
        put("ce-time", &encode(&self.time));
    }
}

/// What the HTTP binding escapes besides every byte outside ASCII: the
/// controls, space, `"` and `%`.
const ESCAPED: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'%');

/// `value` percent-encoded as the HTTP binding asks: every byte of its UTF-8
/// outside `!`..=`~`, and `"` and `%`, as `%XY` (upper-case hex); `value`
/// itself, borrowed, when none of it needs encoding.
pub fn encode(value: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::utf8_percent_encode(value, ESCAPED).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_its_type() {
        let types: Vec<String> = [
            "create",
            "update",
            "delete",
            "file_too_large",
            "sync_failed",
            "synced",
            "submodule",
        ]
        .into_iter()
        .map(event_type)
        .collect();
        assert_eq!(
            types,
            [
                "dev.herald.file.created",
                "dev.herald.file.updated",
                "dev.herald.file.deleted",
                "dev.herald.file.too_large",
                "dev.herald.sync_failed",
                "dev.herald.synced",
                "dev.herald.submodule.moved",
            ]
        );
        assert_eq!(event_type("renamed"), "dev.herald.renamed");
    }

    #[test]
    fn values_are_percent_encoded_as_the_http_binding_says() {
        // The binding's own example.
        assert_eq!(encode("Euro € 😀"), "Euro%20%E2%82%AC%20%F0%9F%98%80");
        assert_eq!(encode(r#"a "b" 100%"#), "a%20%22b%22%20100%25");
        assert_eq!(encode("docs/a-b_c.md?x=1&y=~"), "docs/a-b_c.md?x=1&y=~");
        assert_eq!(encode("tab\there\u{7f}"), "tab%09here%7F");
    }

    /// The headers `event` hands over for `id`, in order.
    fn headers_of(event: &CloudEvent, id: &str) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        event.headers(id, |name, value| headers.push((name, value.to_owned())));
        headers
    }

    #[test]
    fn a_file_event_names_its_path_and_a_notification_none() {
        let file = CloudEvent::new(
            "update",
            "repo_1",
            Some("docs/ä b.md"),
            "2026-01-02T03:04:05.678Z".to_owned(),
        );
        assert_eq!(
            headers_of(&file, "evt_1_2"),
            [
                ("ce-specversion", "1.0".to_owned()),
                ("ce-id", "evt_1_2".to_owned()),
                ("ce-source", "/repositories/repo_1".to_owned()),
                ("ce-type", "dev.herald.file.updated".to_owned()),
                ("ce-subject", "docs/%C3%A4%20b.md".to_owned()),
                ("ce-time", "2026-01-02T03:04:05.678Z".to_owned()),
            ]
        );
        let synced = CloudEvent::new("synced", "repo_1", None, "2026-01-02T03:04:05.678Z".into());
        let names: Vec<&str> = headers_of(&synced, "evt_2")
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            names,
            ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time"]
        );
    }
}
