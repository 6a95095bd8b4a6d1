//! The one outbound HTTP client for webhooks: connect and total timeouts, no
//! redirects, and the SSRF rule enforced again at connection time by a DNS
//! resolver that drops every non-public address (unless
//! `security.allow_private_targets`). IP-literal URLs never reach a resolver,
//! so they are checked before sending.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderValue};

use crate::net::is_global;

/// How much of a response body is kept for the attempt log.
pub const EXCERPT_BYTES: usize = 1024;

/// Resolves names and keeps only public addresses.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| is_global(addr.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub excerpt: String,
    pub latency: Duration,
}

/// Why a request got no answer.
#[derive(Debug, Clone)]
pub struct NoAnswer {
    /// `timeout`, `connect`, `ssrf`, `request`.
    pub class: &'static str,
    pub message: String,
    pub latency: Duration,
}

#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    allow_private_targets: bool,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient").finish_non_exhaustive()
    }
}

impl WebhookClient {
    pub fn new(timeout: Duration, allow_private_targets: bool) -> Self {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .pool_max_idle_per_host(16)
            .no_proxy();
        if !allow_private_targets {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        Self {
            client: builder
                .build()
                .expect("the webhook client's settings are valid"),
            allow_private_targets,
        }
    }

    /// POSTs `body` to `url` with `headers`.
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<Answer, NoAnswer> {
        let started = Instant::now();
        let fail = |class: &'static str, message: String| NoAnswer {
            class,
            message,
            latency: started.elapsed(),
        };
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| fail("request", "the endpoint URL is invalid".into()))?;
        if !self.allow_private_targets {
            let literal = match parsed.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if literal.is_some_and(|ip| !is_global(ip)) {
                return Err(fail("ssrf", "the endpoint is not a public address".into()));
            }
        }
        let response = self
            .client
            .post(parsed)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|err| {
                if err.is_timeout() {
                    fail("timeout", "the endpoint did not answer in time".into())
                } else if err.is_connect() {
                    if chain_mentions(&err, "no public address") {
                        fail("ssrf", "the endpoint resolves to no public address".into())
                    } else {
                        fail("connect", "the endpoint could not be reached".into())
                    }
                } else {
                    fail("request", "the request failed".into())
                }
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut response = response;
        let mut excerpt = Vec::new();
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt
                    .extend_from_slice(&chunk[..chunk.len().min(EXCERPT_BYTES - excerpt.len())]),
                _ => break,
            }
        }
        Ok(Answer {
            status,
            retry_after,
            excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
            latency: started.elapsed(),
        })
    }
}

/// Whether any error in `err`'s source chain says `needle`.
fn chain_mentions(err: &(dyn std::error::Error + 'static), needle: &str) -> bool {
    let mut current = Some(err);
    while let Some(error) = current {
        if error.to_string().contains(needle) {
            return true;
        }
        current = error.source();
    }
    false
}

/// A header value from a string Herald built (ids, timestamps, signatures).
pub fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("Herald's header values are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_targets_are_refused_at_connection_time() {
        let client = WebhookClient::new(Duration::from_secs(2), false);
        for url in [
            "http://127.0.0.1:9/hook",
            "http://[::1]:9/hook",
            "http://169.254.169.254/latest",
            "http://localhost:9/hook",
        ] {
            let refused = client
                .post(url, HeaderMap::new(), Vec::new())
                .await
                .expect_err("a private target gets no request");
            assert_eq!(refused.class, "ssrf", "{url}: {}", refused.message);
        }
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let client = WebhookClient::new(Duration::from_secs(2), true);
        let answer = client
            .post(
                &format!("http://{addr}/hook"),
                HeaderMap::new(),
                b"{}".to_vec(),
            )
            .await
            .expect("an answer");
        assert_eq!(
            answer.status, 302,
            "the redirect is the answer, not followed"
        );
    }
}
