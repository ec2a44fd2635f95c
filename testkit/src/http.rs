//! An HTTP/1.1 reply as the HTTP tests read it off the socket (the tower layer's and the
//! gateway's): status, headers (names lower-cased, in order) and body, with the rate-limit
//! fields at hand.

/// A whole reply, read until the server closed the connection.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// Parses the raw bytes of a reply; panics (failing the test) on anything else.
    pub fn parse(raw: &str) -> Reply {
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no reply: {raw:?}"));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {raw:?}"));
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("header {l:?}"));
                (n.to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_string(),
        }
    }

    /// A header's value (`name` in lower case); it must be given once at most.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let value = values.next().map(|(_, v)| v.as_str());
        assert!(values.next().is_none(), "{name} given twice");
        value
    }

    /// `RateLimit-Policy`, `RateLimit` and `Retry-After`, for exact comparison.
    pub fn limits(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        (
            self.header("ratelimit-policy"),
            self.header("ratelimit"),
            self.header("retry-after"),
        )
    }
}
