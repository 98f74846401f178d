//! Credentials in URLs, kept out of what is shown.
//!
//! [`redact`] is for one URL in an error or a log line; [`mask_credentials`]
//! for text that may hold URLs anywhere (an API response, a command line).

/// Hides the credentials of every URL in `text` (`http://user:pass@host`
/// -> `http://***@host`), wherever it is: a whole value, or inside one
/// (`inst.repo=http://user:pass@host/` in a kernel command line).
pub fn mask_credentials(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                out.push_str(&authority[user_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// A URL as errors and logs show it: without user and password, without its
/// fragment, and with its query (where signed URLs keep their signature or
/// token) shown as `?…`.
pub fn redact(url: &str) -> String {
    let url = url.split('#').next().unwrap_or(url);
    let (url, hidden) = match url.split_once('?') {
        Some((url, _)) => (url, "?…"),
        None => (url, ""),
    };
    let shown = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    };
    format!("{shown}{hidden}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_loses_credentials_query_and_fragment() {
        assert_eq!(
            redact("http://user:secret@images.example/v1/disk.qcow2?temp_url_sig=abc&x=1"),
            "http://images.example/v1/disk.qcow2?…"
        );
        assert_eq!(
            redact("https://user:pw@host:8080/a/b.img?sig=x#f"),
            "https://host:8080/a/b.img?…"
        );
        assert_eq!(redact("https://u:p@bmc"), "https://bmc");
        assert_eq!(redact("http://h:8080/a.img#part"), "http://h:8080/a.img");
        // A password with a slash or an @ in it: everything up to the last @
        // before the path goes.
        assert_eq!(redact("http://u:p@ss@host/x"), "http://host/x");
        assert_eq!(redact("not a url?token=1"), "not a url?…");
    }

    #[test]
    fn text_loses_the_credentials_of_every_url() {
        assert_eq!(
            mask_credentials("inst.repo=http://u:p@h/os/ console=ttyS0 x=https://a:b@c?q"),
            "inst.repo=http://***@h/os/ console=ttyS0 x=https://***@c?q"
        );
        assert_eq!(mask_credentials("no url"), "no url");
    }
}
