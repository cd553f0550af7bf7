//! Joining and splitting storage URIs. An `s3://` URI may carry options as a
//! query string (`?endpoint=...&path_style=true`); joining a child path keeps the
//! query at the end so that every derived URI still reaches the same server.

/// Splits `uri` into its path part and its query (with the leading `?`).
fn split_query(uri: &str) -> (&str, &str) {
    match uri.find('?') {
        Some(i) if uri.starts_with("s3://") => (&uri[..i], &uri[i..]),
        _ => (uri, ""),
    }
}

/// Joins URI segments with exactly one `/`.
pub fn join(base: &str, child: &str) -> String {
    let (base, query) = split_query(base);
    if base.is_empty() {
        return format!("{child}{query}");
    }
    if child.is_empty() {
        return format!("{base}{query}");
    }
    format!(
        "{}/{}{query}",
        base.trim_end_matches('/'),
        child.trim_start_matches('/')
    )
}

/// Splits a snapshot URI into its parent storage URI and last segment.
pub fn split_last(uri: &str) -> (String, String) {
    let (path, query) = split_query(uri);
    let t = path.trim_end_matches('/');
    let scheme_end = t.find("://").map(|i| i + 3).unwrap_or(0);
    // The first segment after an s3:// scheme is the bucket: never split it off.
    let min = if t.starts_with("s3://") {
        t[scheme_end..]
            .find('/')
            .map(|i| scheme_end + i)
            .unwrap_or(t.len())
    } else if scheme_end > 0 {
        // file:///a: the '/' of the root is not a separator.
        scheme_end + 1
    } else {
        0
    };
    match t.rfind('/') {
        Some(i) if i >= min => (format!("{}{query}", &t[..i]), t[i + 1..].to_string()),
        _ => (format!("{t}{query}"), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_the_query_last() {
        assert_eq!(join("file:///a/b", "chk-1"), "file:///a/b/chk-1");
        assert_eq!(join("file:///a/b/", "/chk-1"), "file:///a/b/chk-1");
        assert_eq!(join("s3://bkt/p", "chk-1"), "s3://bkt/p/chk-1");
        assert_eq!(
            join(
                "s3://bkt/p?endpoint=http://h:1&path_style=true",
                "chk-1/_metadata"
            ),
            "s3://bkt/p/chk-1/_metadata?endpoint=http://h:1&path_style=true"
        );
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("s3://b?region=r", ""), "s3://b?region=r");
    }

    #[test]
    fn split_last_never_splits_the_scheme_or_bucket() {
        assert_eq!(
            split_last("file:///a/b/chk-3"),
            ("file:///a/b".to_string(), "chk-3".to_string())
        );
        assert_eq!(
            split_last("s3://bkt/jobs/j1/chk-3/?region=x"),
            ("s3://bkt/jobs/j1?region=x".to_string(), "chk-3".to_string())
        );
        assert_eq!(
            split_last("s3://bkt/sp-1"),
            ("s3://bkt".to_string(), "sp-1".to_string())
        );
        assert_eq!(
            split_last("s3://bkt"),
            ("s3://bkt".to_string(), String::new())
        );
        assert_eq!(split_last("/x/y"), ("/x".to_string(), "y".to_string()));
        assert_eq!(
            split_last("file:///a"),
            ("file:///a".to_string(), String::new())
        );
    }
}
