//! The parts every console page shares: the document shell with its
//! navigation, relative times, statuses, paging and empty states.

use actors::clock::{now_ms, rfc3339_ms};
use maud::{DOCTYPE, Markup, html};

use super::Session;

/// The sections, in the order of the navigation.
const NAV: [(&str, &str); 8] = [
    ("/admin/overview", "Overview"),
    ("/admin/log", "Event log"),
    ("/admin/health", "Delivery health"),
    ("/admin/events", "Dead events"),
    ("/admin/apps", "Apps"),
    ("/admin/repositories", "Repositories"),
    ("/admin/hooks", "Inbound hooks"),
    ("/admin/instances", "Instances"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Herald" }
            link rel="stylesheet" href="/admin/assets/console.css";
            script src="/admin/assets/htmx.min.js" defer {}
        }
    }
}

/// A page for someone signed in: skip link, navigation, the current section
/// marked, the notice of the action that led here, logout.
pub fn page(
    session: &Session,
    current: &str,
    title: &str,
    notice: Option<&str>,
    body: &Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Herald" }
                    nav aria-label="Sections" {
                        ul {
                            @for (href, label) in NAV {
                                li {
                                    @if href == current {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    form.logout method="post" action="/admin/logout" {
                        (csrf_field(session))
                        button type="submit" { "Sign out" }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    @if let Some(notice) = notice {
                        p.notice role="status" { (notice) }
                    }
                    (body)
                }
            }
        }
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                main id="main" class="narrow" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A message with one way on.
pub fn message(text: &str, href: &str, label: &str) -> Markup {
    html! {
        p role="alert" { (text) }
        p { a href=(href) { (label) } }
    }
}

pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A one-button form posting to `action` (a plain post: works without JS).
pub fn action(session: &Session, action: &str, label: &str, describe: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(session))
            button type="submit" aria-label=(describe) { (label) }
        }
    }
}

/// "3 min ago", with the exact time on hover and for machines.
pub fn when(ms: i64) -> Markup {
    let exact = rfc3339_ms(ms);
    html! { time datetime=(exact) title=(exact) { (relative(now_ms(), ms)) } }
}

pub fn when_opt(ms: Option<i64>) -> Markup {
    match ms {
        Some(ms) => when(ms),
        None => html! { span.muted { "never" } },
    }
}

/// How long ago (or from now) `then` is, in the largest whole unit.
pub fn relative(now: i64, then: i64) -> String {
    let secs = (now - then) / 1000;
    let (n, future) = if secs < 0 {
        (-secs, true)
    } else {
        (secs, false)
    };
    let amount = match n {
        0..=9 => return "just now".to_owned(),
        10..=59 => format!("{n} s"),
        60..=3599 => format!("{} min", n / 60),
        3600..=86_399 => format!("{} h", n / 3600),
        _ => format!("{} d", n / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A status as a labelled badge (colour is never the only signal: the word
/// is always there).
pub fn status(word: &str) -> Markup {
    let tone = match word {
        "active" | "synced" | "delivered" | "processed" | "closed" | "alive" | "done" => "ok",
        "failed" | "dead" | "disabled" | "open" | "invalid" | "gone" => "bad",
        _ => "neutral",
    };
    html! { span class={ "badge " (tone) } { (word) } }
}

/// What to do when a list is empty.
pub fn empty(text: &str) -> Markup {
    html! { p.empty { (text) } }
}

/// Previous / next links of a numbered list.
pub fn pager(base: &str, page: u64, per_page: u64, total: u64) -> Markup {
    let pages = total.div_ceil(per_page).max(1);
    html! {
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if page > 1 {
                    a href={ (base) "?page=" (page - 1) } rel="prev" { "Previous" }
                }
                span { "Page " (page) " of " (pages) }
                @if page < pages {
                    a href={ (base) "?page=" (page + 1) } rel="next" { "Next" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::relative;

    #[test]
    fn times_read_as_people_say_them() {
        let now = 1_000_000_000;
        assert_eq!(relative(now, now - 3_000), "just now");
        assert_eq!(relative(now, now - 42_000), "42 s ago");
        assert_eq!(relative(now, now - 180_000), "3 min ago");
        assert_eq!(relative(now, now - 7_200_000), "2 h ago");
        assert_eq!(relative(now, now - 3 * 86_400_000), "3 d ago");
        assert_eq!(relative(now, now + 600_000), "in 10 min");
    }
}
