//! Path templating for access logs: identifiers are replaced so logs never
//! carry room IDs, event IDs, user IDs, transaction IDs or other values.

/// Literal path words of the federation and key APIs kept as they are; every
/// other segment is replaced by a placeholder.
const KNOWN: &[&str] = &[
    "_matrix",
    "federation",
    "key",
    "v1",
    "v2",
    "v3",
    "send",
    "event",
    "state",
    "state_ids",
    "make_join",
    "send_join",
    "invite",
    "make_leave",
    "send_leave",
    "make_knock",
    "send_knock",
    "backfill",
    "get_missing_events",
    "query",
    "directory",
    "profile",
    "user",
    "devices",
    "keys",
    "claim",
    "publicRooms",
    "openid",
    "userinfo",
    "event_auth",
    "exchange_third_party_invite",
    "3pid",
    "onbind",
    "hierarchy",
    "timestamp_to_event",
    "media",
    "download",
    "thumbnail",
    "server",
    "version",
    "query_auth",
    "unstable",
    "knock",
];

/// The path (query dropped) with identifiers replaced: `!…` → `{roomId}`,
/// `$…` → `{eventId}`, `@…` → `{userId}`, `#…` → `{roomAlias}`, anything else
/// not a known API word → `{param}`.
pub fn template(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut out = String::with_capacity(path.len().min(256));
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        // Counted before empty segments are skipped: a run of slashes must
        // not make the line unbounded.
        if i > 24 {
            out.push_str("{…}");
            break;
        }
        if seg.is_empty() {
            continue;
        }
        let decoded_first = if let Some(rest) = seg.strip_prefix('%') {
            match rest.get(..2).map(|h| h.to_ascii_uppercase()) {
                Some(h) if h == "21" => Some('!'),
                Some(h) if h == "24" => Some('$'),
                Some(h) if h == "40" => Some('@'),
                Some(h) if h == "23" => Some('#'),
                _ => None,
            }
        } else {
            seg.chars().next()
        };
        let placeholder = match decoded_first {
            Some('!') => "{roomId}",
            Some('$') => "{eventId}",
            Some('@') => "{userId}",
            Some('#') => "{roomAlias}",
            _ if KNOWN.contains(&seg) => {
                out.push_str(seg);
                continue;
            }
            _ => "{param}",
        };
        out.push_str(placeholder);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::template;

    #[test]
    fn replaces_identifiers() {
        assert_eq!(
            template("/_matrix/federation/v1/send/1234abc"),
            "/_matrix/federation/v1/send/{param}"
        );
        assert_eq!(
            template("/_matrix/federation/v1/make_join/!room:hs.example/@alice:hs.example?ver=10"),
            "/_matrix/federation/v1/make_join/{roomId}/{userId}"
        );
        assert_eq!(
            template("/_matrix/federation/v1/event/%24abc"),
            "/_matrix/federation/v1/event/{eventId}"
        );
        assert_eq!(template("/_matrix/key/v2/server"), "/_matrix/key/v2/server");
        assert_eq!(
            template("/_matrix/federation/v2/send_join/%21r%3Ahs/%24e"),
            "/_matrix/federation/v2/send_join/{roomId}/{eventId}"
        );
    }
}
