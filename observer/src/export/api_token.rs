//! The optional bearer token of the agent's HTTP API: read once from a file
//! (a mounted Secret), compared in constant time, never printed.

use std::{fmt, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TokenError {
    #[error("reading the API token from {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the API token file {path} is empty: put the token in it (e.g. `openssl rand -hex 32`), \
         or leave out --api-token-file to serve the API without one"
    )]
    Empty { path: String },
    #[error(
        "the API token in {path} holds characters an HTTP header cannot carry (only visible \
         ASCII is allowed)"
    )]
    NotHeaderSafe { path: String },
}

/// A bearer token. `Debug` shows its length only, so options that hold one
/// can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// Reads the token from `path`. Surrounding whitespace is dropped (a
    /// Secret made with `echo` ends in a newline); a missing file, an empty
    /// one, or one holding characters a header cannot carry is an error.
    pub fn from_file(path: &Path) -> Result<ApiToken, TokenError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: shown.clone(),
            source,
        })?;
        ApiToken::new(text.trim()).map_err(|error| match error {
            TokenError::Empty { .. } => TokenError::Empty { path: shown },
            _ => TokenError::NotHeaderSafe { path: shown },
        })
    }

    /// A token given as text (tests, and [`Self::from_file`]).
    pub fn new(token: &str) -> Result<ApiToken, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: String::new(),
            });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotHeaderSafe {
                path: String::new(),
            });
        }
        Ok(ApiToken(token.to_string()))
    }

    /// The `Authorization` header value that carries this token.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `Authorization` header value carries this token. The
    /// comparison takes the same time wherever the first difference is, so
    /// timing does not reveal the token a byte at a time (only its length).
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some((scheme, presented)) = split_scheme(value) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer") && constant_time_eq(presented, self.0.as_bytes())
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken({} bytes)", self.0.len())
    }
}

/// `Bearer abc` → (`Bearer`, `abc`), spaces between them skipped.
fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let start = rest.iter().position(|b| *b != b' ')?;
    Some((scheme, &rest[start..]))
}

/// Equal contents in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the compiler from turning the fold into an early exit.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_its_own_bearer_token() {
        let token = ApiToken::new("s3cret-token").unwrap();
        assert!(token.accepts(Some(b"Bearer s3cret-token")));
        assert!(token.accepts(Some(b"bearer  s3cret-token")));
        assert!(!token.accepts(None));
        assert!(!token.accepts(Some(b"Bearer s3cret-tokeN")));
        assert!(!token.accepts(Some(b"Bearer s3cret-token2")));
        assert!(!token.accepts(Some(b"Basic s3cret-token")));
        assert!(!token.accepts(Some(b"s3cret-token")));
        assert!(!token.accepts(Some(b"Bearer ")));
        assert_eq!(token.header_value(), "Bearer s3cret-token");
    }

    #[test]
    fn file_must_hold_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc123\n").unwrap();
        assert_eq!(
            ApiToken::from_file(&path).unwrap(),
            ApiToken::new("abc123").unwrap()
        );
        std::fs::write(&path, " \n").unwrap();
        let empty = ApiToken::from_file(&path).unwrap_err().to_string();
        assert!(empty.contains("is empty"), "{empty}");
        std::fs::write(&path, "two words").unwrap();
        assert!(matches!(
            ApiToken::from_file(&path),
            Err(TokenError::NotHeaderSafe { .. })
        ));
        let missing = ApiToken::from_file(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("absent"), "{missing}");
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let shown = format!("{:?}", ApiToken::new("hunter2").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
