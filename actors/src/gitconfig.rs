//! The part of git's configuration syntax that files committed to a
//! repository use (`.lfsconfig`, `.gitmodules`): `[section]` and
//! `[section "subsection"]` headers, `key = value` lines, `#`/`;` comments,
//! double-quoted values. Includes and escapes are not followed: Herald only
//! reads a few plain keys from them.

/// One `key = value` of a configuration text, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The section, lower-cased (`lfs`, `submodule`, `remote`).
    pub section: String,
    /// The subsection as written (`origin`, a submodule's name), if any.
    pub subsection: Option<&'a str>,
    /// The key, lower-cased.
    pub key: String,
    /// The value, without its quotes or trailing comment.
    pub value: &'a str,
}

/// Every entry of `text`, in order; lines that are not entries are skipped.
pub fn entries(text: &str) -> Vec<Entry<'_>> {
    let mut entries = Vec::new();
    let (mut section, mut subsection) = (String::new(), None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header.split(']').next().unwrap_or_default().trim();
            (section, subsection) = match header.split_once(char::is_whitespace) {
                Some((name, sub)) => (
                    name.to_ascii_lowercase(),
                    Some(sub.trim().trim_matches('"')),
                ),
                None => (header.to_ascii_lowercase(), None),
            };
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        entries.push(Entry {
            section: section.clone(),
            subsection,
            key: key.trim().to_ascii_lowercase(),
            value: unquote(value),
        });
    }
    entries
}

/// A value without its comment and quotes.
fn unquote(value: &str) -> &str {
    let value = value.trim();
    if let Some(quoted) = value.strip_prefix('"') {
        return quoted.split('"').next().unwrap_or_default();
    }
    value.split([';', '#']).next().unwrap_or_default().trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keys_and_values_are_read_as_git_reads_them() {
        let text = "# lfs\n[LFS]\n\tURL = \"https://a.example.com/x\" ; why\n\
                    [remote \"origin\"]\n\tlfsurl = https://b.example.com # c\nnot an entry\n";
        let found = entries(text);
        assert_eq!(
            found,
            [
                Entry {
                    section: "lfs".into(),
                    subsection: None,
                    key: "url".into(),
                    value: "https://a.example.com/x",
                },
                Entry {
                    section: "remote".into(),
                    subsection: Some("origin"),
                    key: "lfsurl".into(),
                    value: "https://b.example.com",
                },
            ]
        );
    }
}
