//! The AsyncAPI 3.0 document of every channel Herald publishes, served at
//! `/asyncapi.json` (public, beside `/openapi.json`): the webhook endpoints
//! of an app's `base_url`, the pull stream (`GET /api/stream`), and the
//! broker destinations (NATS JetStream, RabbitMQ, Redis Streams) with their
//! address templates. The bodies' schemas are [`bodies`]'; every message
//! but the stream's carries the signed headers with the CloudEvents
//! attributes (binary mode: the body is the event's data).

use serde_json::{Map, Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::{Reply, Response};

mod bodies;

use bodies::{ENDPOINTS, HTTP_HEADERS, SIGNED_HEADERS, header_schema};

/// `/asyncapi.json`.
pub fn routes() -> BoxedFilter<(Response,)> {
    let document = document();
    warp::path!("asyncapi.json")
        .and(warp::get())
        .map(move || warp::reply::json(&document).into_response())
        .boxed()
}

/// A reference to `path` within the document.
fn reference(path: &str) -> Value {
    json!({ "$ref": format!("#/{path}") })
}

/// The channels' parameters, by name: what fills each template field.
fn parameter(name: &str) -> Value {
    match name {
        "app" => json!({"description": "The app's id (`app_…`)."}),
        "repository" => json!({
            "description": "The repository's id (`repo_…`).",
            "location": "$message.payload#/repository/repository_id",
        }),
        _ => json!({
            "description": "The webhook endpoint the message would have gone to.",
            "enum": ENDPOINTS.iter().map(|(endpoint, _, _)| *endpoint).collect::<Vec<_>>(),
        }),
    }
}

/// One broker destination's channel: its address template (the example of
/// docs/api.md; the app's own template decides), what it is, and its
/// messages (those of the webhooks, with the same headers).
fn broker_channel(server: &str, address: &str, description: &str) -> Value {
    let mut parameters = Map::new();
    for name in ["app", "repository", "event"] {
        if address.contains(&format!("{{{name}}}")) {
            parameters.insert(name.to_owned(), parameter(name));
        }
    }
    json!({
        "address": address,
        "title": format!("{server} destination"),
        "description": description,
        "servers": [reference(&format!("servers/{server}"))],
        "parameters": parameters,
        "messages": endpoint_messages(""),
    })
}

/// The messages of a channel, one per endpoint: `{prefix}{endpoint}`.
fn endpoint_messages(prefix: &str) -> Map<String, Value> {
    ENDPOINTS
        .iter()
        .map(|(endpoint, _, _)| {
            (
                (*endpoint).to_owned(),
                reference(&format!("components/messages/{prefix}{endpoint}")),
            )
        })
        .collect()
}

/// The operation that sends `channel`'s messages.
fn send(channel: &str, messages: &[&str], description: &str, bindings: Value) -> Value {
    json!({
        "action": "send",
        "channel": reference(&format!("channels/{channel}")),
        "description": description,
        "messages": messages
            .iter()
            .map(|m| reference(&format!("channels/{channel}/messages/{m}")))
            .collect::<Vec<_>>(),
        "bindings": bindings,
    })
}

/// The whole document.
pub fn document() -> Value {
    let endpoints: Vec<&str> = ENDPOINTS.iter().map(|(endpoint, _, _)| *endpoint).collect();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for (endpoint, body, description) in ENDPOINTS {
        let payload = reference(&format!("components/schemas/{body}"));
        let event_type = actors::cloudevents::event_type(endpoint);
        messages.insert(
            endpoint.to_owned(),
            json!({
                "name": endpoint,
                "title": event_type,
                "summary": description,
                "contentType": "application/json",
                "headers": reference("components/schemas/SignedHeaders"),
                "payload": payload,
                "bindings": {"http": {
                    "headers": reference("components/schemas/HttpHeaders"),
                    "bindingVersion": "0.3.0",
                }},
            }),
        );
        messages.insert(
            format!("stream_{endpoint}"),
            json!({
                "name": endpoint,
                "title": format!("{endpoint} (stream)"),
                "summary": description,
                "description": format!("An SSE message: `id` the cursor, `event: {endpoint}`, `data` this body on one line. No headers: CloudEvents has no binding for Server-Sent Events."),
                "contentType": "application/json",
                "payload": payload,
            }),
        );
        let channel = format!("webhook_{endpoint}");
        channels.insert(
            channel.clone(),
            json!({
                "address": format!("/{endpoint}"),
                "title": format!("POST {{base_url}}/{endpoint}"),
                "description": description,
                "servers": [reference("servers/app")],
                "messages": {endpoint: reference(&format!("components/messages/{endpoint}"))},
            }),
        );
        operations.insert(
            format!("send_{endpoint}"),
            send(
                &channel,
                &[endpoint],
                &format!("Herald POSTs each `{endpoint}` event to the app; any 2xx is success, anything else is retried with the app's backoff."),
                json!({"http": {"method": "POST", "bindingVersion": "0.3.0"}}),
            ),
        );
    }
    channels.insert(
        "stream".to_owned(),
        json!({
            "address": "/api/stream",
            "title": "GET /api/stream",
            "description": "Pull delivery (`delivery: pull`): Server-Sent Events with the app token; resume strictly after `Last-Event-ID` or `?after=`; a heartbeat comment every 15 s. The SSE data is the webhook body unchanged, without the signed or CloudEvents headers (CloudEvents defines no SSE binding).",
            "servers": [reference("servers/herald")],
            "messages": endpoint_messages("stream_"),
        }),
    );
    operations.insert(
        "stream".to_owned(),
        send(
            "stream",
            &endpoints,
            "Herald streams a pull app's events in order to the consumer holding the connection.",
            json!({"http": {"method": "GET", "bindingVersion": "0.3.0"}}),
        ),
    );
    for (server, address, description, bindings) in [
        (
            "nats",
            "herald.{repository}.{event}",
            "`PATCH /api/app {\"delivery\": \"nats\", \"destination\": {\"url\", \"subject\"}}`: published to JetStream on the subject the app's template makes (shown: the example template); `Nats-Msg-Id` is the `webhook-id`, the stream's ack is awaited. Headers are NATS headers.",
            json!({}),
        ),
        (
            "amqp",
            "{repository}.{event}",
            "`PATCH /api/app {\"delivery\": \"amqp\", \"destination\": {\"url\", \"exchange\", \"routing_key\"}}`: published to the app's exchange with the routing key its template makes (shown: the example template); persistent, publisher confirms, `mandatory`; `message_id` is the `webhook-id`. Headers are AMQP message headers.",
            json!({"amqp": {"deliveryMode": 2, "mandatory": true, "bindingVersion": "0.3.0"}}),
        ),
        (
            "redis",
            "herald:{app}",
            "`PATCH /api/app {\"delivery\": \"redis\", \"destination\": {\"url\", \"stream\"}}`: `XADD` to the stream key the app's template makes (shown: the example template); the entry's fields are `event` (the endpoint), `body` (the body) and the headers; a re-send never adds a second entry for one `webhook-id`.",
            json!({}),
        ),
    ] {
        let mut channel = broker_channel(server, address, description);
        if server == "amqp" {
            channel["bindings"] = json!({"amqp": {
                "is": "routingKey",
                "exchange": {"name": "herald"},
                "bindingVersion": "0.3.0",
            }});
        }
        channels.insert(server.to_owned(), channel);
        let mut operation = send(
            server,
            &endpoints,
            &format!(
                "Herald publishes each event of a `{server}` app, in order (per path with a window above 1), with the webhooks' guarantees."
            ),
            bindings,
        );
        if operation["bindings"].as_object().is_some_and(Map::is_empty) {
            operation
                .as_object_mut()
                .expect("an object")
                .remove("bindings");
        }
        operations.insert(format!("publish_{server}"), operation);
    }
    let mut schemas = bodies::schemas();
    schemas.insert("SignedHeaders".to_owned(), header_schema(SIGNED_HEADERS));
    schemas.insert("HttpHeaders".to_owned(), header_schema(HTTP_HEADERS));
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Herald events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every channel Herald publishes a repository's changes on: signed webhooks to an app's `base_url`, the pull stream, and the broker destinations. Every webhook and broker message carries CloudEvents 1.0.2 attributes in binary mode (`ce-*` headers; the body, unchanged, is the event's data). See docs/webhooks.md and docs/api.md.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "app": {
                "host": "{host}",
                "pathname": "{path}",
                "protocol": "https",
                "description": "The app's `base_url` (http where `security.allow_http_targets` allows it); each endpoint is one path segment below it.",
                "variables": {
                    "host": {"description": "The host (and port) of the app's base_url."},
                    "path": {"description": "The path of the app's base_url, without a trailing slash."},
                },
            },
            "herald": {
                "host": "{host}",
                "protocol": "https",
                "description": "Herald itself: the pull stream, with the app token (`Authorization: Bearer`).",
                "variables": {"host": {"description": "Where Herald is served."}},
            },
            "nats": {
                "host": "{host}",
                "protocol": "nats",
                "description": "The app's `destination.url` (`nats://[user:pass@]host:4222`, or `tls://[user:pass@]host:4222` for TLS: the certificate checked as a webhook endpoint's, no ALPN).",
                "variables": {"host": {"description": "The NATS server of the app's destination."}},
            },
            "amqp": {
                "host": "{host}",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The app's `destination.url` (`amqp://user:pass@host:5672/%2f`, or `amqps://user:pass@host:5671/%2f` for TLS: the certificate checked as a webhook endpoint's, no ALPN).",
                "variables": {"host": {"description": "The RabbitMQ server of the app's destination."}},
            },
            "redis": {
                "host": "{host}",
                "protocol": "redis",
                "description": "The app's `destination.url` (`redis://host:6379/0`, or `rediss://host:6379/0` for TLS: the certificate checked as a webhook endpoint's, no ALPN).",
                "variables": {"host": {"description": "The Redis server of the app's destination."}},
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use actors::cloudevents::CloudEvent;
    use actors::ids::AppId;
    use actors::signing::Signer;

    use super::*;

    /// Every `$ref` in `value`.
    fn references(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("$ref", Value::String(target)) => found.push(target.clone()),
                        _ => references(inner, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| references(item, found)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut found = Vec::new();
        references(&doc, &mut found);
        assert!(found.len() > 50, "{}", found.len());
        for target in found {
            let pointer = target.strip_prefix('#').expect("a local reference");
            assert!(doc.pointer(pointer).is_some(), "{target} resolves");
        }
    }

    #[test]
    fn the_headers_documented_are_those_signed() {
        let signer = Signer::new(AppId::stored("app_1"), vec![b"key".to_vec()].into());
        let file = CloudEvent::new(
            "create",
            "repo_1",
            Some("a.md"),
            "2026-01-01T00:00:00.000Z".into(),
        );
        let sent: BTreeSet<String> = signer
            .sign("evt_1".into(), "{}".into(), &file)
            .headers
            .keys()
            .map(|name| name.as_str().to_owned())
            .collect();
        let documented: BTreeSet<String> = SIGNED_HEADERS
            .iter()
            .map(|(name, _, _)| (*name).to_owned())
            .collect();
        assert_eq!(sent, documented);
        // Those documented as always there are on a notification too.
        let synced = CloudEvent::new("synced", "repo_1", None, "2026-01-01T00:00:00.000Z".into());
        let headers = signer.sign("evt_2".into(), "{}".into(), &synced).headers;
        for (name, always, _) in SIGNED_HEADERS {
            assert_eq!(headers.contains_key(name), always, "{name}");
        }
    }

    #[test]
    fn each_endpoint_is_a_webhook_channel_and_a_message_of_every_other() {
        let doc = document();
        for (endpoint, body, _) in ENDPOINTS {
            let channel = &doc["channels"][format!("webhook_{endpoint}")];
            assert_eq!(channel["address"], format!("/{endpoint}"));
            for other in ["stream", "nats", "amqp", "redis"] {
                assert!(
                    doc["channels"][other]["messages"][endpoint].is_object(),
                    "{other} carries {endpoint}"
                );
            }
            let message = &doc["components"]["messages"][endpoint];
            assert_eq!(
                message["payload"]["$ref"],
                format!("#/components/schemas/{body}")
            );
            assert_eq!(message["title"], actors::cloudevents::event_type(endpoint));
        }
        assert_eq!(doc["channels"]["stream"]["address"], "/api/stream");
        assert_eq!(
            doc["channels"]["nats"]["address"],
            "herald.{repository}.{event}"
        );
        assert_eq!(doc["channels"]["redis"]["address"], "herald:{app}");
    }
}
