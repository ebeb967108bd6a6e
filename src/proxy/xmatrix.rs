//! The `Authorization: X-Matrix …` header of server-server requests: just
//! enough parsing to read the `origin` for edge rules. The signature itself
//! is the homeserver's business (it covers URI, Host and Authorization, which
//! fedpin passes through untouched).

/// The parameters of one X-Matrix header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    /// `origin`: the sending server's name (lowercased).
    pub origin: String,
    /// `destination`, when present.
    pub destination: Option<String>,
    /// `key`, e.g. `ed25519:abc`.
    pub key: Option<String>,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XMatrixError {
    /// Not an X-Matrix header.
    #[error("Authorization is not an X-Matrix header")]
    NotXMatrix,
    /// Syntax error.
    #[error("malformed X-Matrix header: {0}")]
    Malformed(&'static str),
    /// No origin parameter.
    #[error("X-Matrix header has no origin")]
    NoOrigin,
    /// The origin is not a valid server name.
    #[error("X-Matrix origin is not a valid server name")]
    BadOrigin,
}

/// Parses one `Authorization` header value.
pub fn parse(value: &[u8]) -> Result<XMatrix, XMatrixError> {
    let value = std::str::from_utf8(value).map_err(|_| XMatrixError::Malformed("not UTF-8"))?;
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').ok_or(XMatrixError::NotXMatrix)?;
    if !scheme.eq_ignore_ascii_case("X-Matrix") {
        return Err(XMatrixError::NotXMatrix);
    }
    let mut origin = None;
    let mut destination = None;
    let mut key = None;
    let bytes = rest.as_bytes();
    let mut i = 0;
    let mut params = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b',' || bytes[i] == b'\t') {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        params += 1;
        if params > 16 {
            return Err(XMatrixError::Malformed("too many parameters"));
        }
        let name_start = i;
        while i < bytes.len() && bytes[i] != b'=' {
            if bytes[i] == b',' || bytes[i] == b' ' || bytes[i] == b'"' {
                return Err(XMatrixError::Malformed("parameter without a value"));
            }
            i += 1;
        }
        if i >= bytes.len() {
            return Err(XMatrixError::Malformed("parameter without a value"));
        }
        let name = &rest[name_start..i];
        i += 1; // '='
        let mut val = String::new();
        if i < bytes.len() && bytes[i] == b'"' {
            i += 1;
            let mut closed = false;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' => {
                        let Some(&next) = bytes.get(i + 1) else {
                            return Err(XMatrixError::Malformed("dangling escape"));
                        };
                        val.push(next as char);
                        i += 2;
                    }
                    b'"' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    b => {
                        val.push(b as char);
                        i += 1;
                    }
                }
            }
            if !closed {
                return Err(XMatrixError::Malformed("unterminated quoted value"));
            }
        } else {
            let start = i;
            while i < bytes.len() && bytes[i] != b',' {
                i += 1;
            }
            val.push_str(rest[start..i].trim());
        }
        if !val.is_ascii() {
            return Err(XMatrixError::Malformed("non-ASCII value"));
        }
        match name.trim().to_ascii_lowercase().as_str() {
            "origin" if origin.is_some() => {
                return Err(XMatrixError::Malformed("origin given twice"));
            }
            "origin" => origin = Some(val),
            "destination" => destination = Some(val),
            "key" => key = Some(val),
            _ => {}
        }
    }
    let origin = origin.ok_or(XMatrixError::NoOrigin)?;
    // The Matrix server-name grammar, strictly, and its canonical text: the
    // origin keys rate limits and edge rules, so one server has one spelling
    // ("HS.example." and "hs.example", "[0::1]" and "[::1]" are the same).
    let origin = origin
        .parse::<crate::discovery::ServerName>()
        .map_err(|_| XMatrixError::BadOrigin)?
        .to_string();
    Ok(XMatrix {
        origin,
        destination,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spec_examples() {
        let h = br#"X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF...""#;
        let x = parse(h).unwrap();
        assert_eq!(x.origin, "origin.hs.example.com");
        assert_eq!(x.destination.as_deref(), Some("destination.hs.example.com"));
        assert_eq!(x.key.as_deref(), Some("ed25519:key1"));
        // Unquoted values and odd spacing (older Synapse).
        let x = parse(b"X-Matrix origin=Hs1.Example:8448,key=\"ed25519:a\", sig=\"x\"").unwrap();
        assert_eq!(x.origin, "hs1.example:8448");
        let x = parse(b"X-Matrix origin=\"HS1.Example.:8448\",sig=\"x\"").unwrap();
        assert_eq!(x.origin, "hs1.example:8448");
        let x = parse(b"X-Matrix origin=\"[0:0::1]:8448\",sig=\"x\"").unwrap();
        assert_eq!(x.origin, "[::1]:8448");
    }

    #[test]
    fn refuses_bad_headers() {
        assert_eq!(parse(b"Bearer abc"), Err(XMatrixError::NotXMatrix));
        assert_eq!(parse(b"X-Matrix key=\"a\""), Err(XMatrixError::NoOrigin));
        assert!(parse(b"X-Matrix origin=\"a b\"").is_err());
        assert!(parse(b"X-Matrix origin=\"unterminated").is_err());
        assert!(parse(b"X-Matrix origin=\"a.example\",origin=\"b.example\"").is_err());
        assert!(parse(b"X-Matrix origin").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
    }
}
