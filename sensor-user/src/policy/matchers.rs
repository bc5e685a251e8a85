//! Matchers the policy's rules compile to. Wildcards match names, paths,
//! host names and command lines. CIDR blocks and port ranges match
//! destinations. Path patterns may start with `~`, meaning any home
//! directory.

use std::net::IpAddr;

use regex::Regex;

/// A `*` and `?` pattern, matched against the whole text.
#[derive(Debug, Clone)]
pub struct Wildcard {
    pub pattern: String,
    regex: Regex,
}

impl Wildcard {
    /// Compiles `pattern`: `*` matches any run of characters and `?` one
    /// character. With `case_insensitive`, letters match either case.
    pub fn new(pattern: &str, case_insensitive: bool) -> Result<Self, String> {
        let mut source = String::from(if case_insensitive { "(?si)^" } else { "(?s)^" });
        for c in pattern.chars() {
            match c {
                '*' => source.push_str(".*"),
                '?' => source.push('.'),
                other => source.push_str(&regex::escape(other.encode_utf8(&mut [0; 4]))),
            }
        }
        source.push('$');
        let regex = Regex::new(&source).map_err(|error| format!("invalid pattern {pattern:?}: {error}"))?;
        Ok(Self { pattern: pattern.to_owned(), regex })
    }

    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

/// A host-name pattern: `*` matches any run of characters, dots included,
/// so `*.example.com` matches `api.example.com` and `a.b.example.com` but
/// not `example.com`. Case does not matter, nor does a trailing dot.
#[derive(Debug, Clone)]
pub struct HostPattern(Wildcard);

impl HostPattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() || pattern.contains(['/', ':', ' ']) {
            return Err(format!("invalid host name pattern {pattern:?}: expected a name such as api.example.com or *.example.com"));
        }
        Ok(Self(Wildcard::new(pattern.trim_end_matches('.'), true)?))
    }

    pub fn matches(&self, host: &str) -> bool {
        self.0.matches(host.trim_end_matches('.'))
    }
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("invalid address {address:?} in {text:?}: expected an IPv4 or IPv6 address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= max => prefix,
                _ => return Err(format!("invalid prefix length {prefix:?} in {text:?}: expected 0 to {max}")),
            },
        };
        let cidr = Cidr { network, prefix };
        if cidr.masked(network) != network {
            return Err(format!("{text:?} has host bits set; write the network address, such as {}/{prefix}", cidr.masked(network)));
        }
        Ok(cidr)
    }

    fn masked(&self, address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    /// Returns whether `address` is in the block. An IPv4-mapped IPv6
    /// address is compared as the IPv4 address it carries.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        address.is_ipv4() == self.network.is_ipv4() && self.masked(address) == self.network
    }
}

/// An inclusive port range; one port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn parse(text: &str) -> Result<Self, String> {
        let port = |part: &str| match part.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("invalid port {part:?}: expected 1 to 65535")),
        };
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => {
                let port = port(text)?;
                (port, port)
            }
        };
        if first > last {
            return Err(format!("invalid port range {text:?}: the first port is above the last"));
        }
        Ok(Self { first, last })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// A file path pattern.
///
/// `~/` at the start stands for any home directory, `**` matches any run of
/// characters across directories, `*` and `?` stay within one path
/// component. A pattern without `/` matches a file name in any directory
/// (`.env`, `*.pem`). A pattern also matches everything under the path it
/// names, so `~/.aws` covers `~/.aws/credentials`.
#[derive(Debug, Clone)]
pub struct PathPattern {
    pub pattern: String,
    under_home: bool,
    name_only: bool,
    regex: Regex,
}

impl PathPattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("invalid path pattern {pattern:?}: {why}");
        if pattern.is_empty() {
            return Err(invalid("it is empty"));
        }
        let (under_home, rest) = match pattern.strip_prefix("~/") {
            Some(rest) => (true, rest),
            None if pattern == "~" => (true, ""),
            None if pattern.starts_with('~') => return Err(invalid("`~user` is not supported; write `~/` for any home directory")),
            None => (false, pattern),
        };
        let name_only = !under_home && !rest.contains('/');
        if !under_home && !name_only && !rest.starts_with('/') {
            return Err(invalid("expected an absolute path, a path under `~/`, or a file name without `/`"));
        }
        let mut source = String::from("(?s)^");
        let mut chars = rest.trim_end_matches('/').chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    source.push_str(".*");
                }
                '*' => source.push_str("[^/]*"),
                '?' => source.push_str("[^/]"),
                other => source.push_str(&regex::escape(other.encode_utf8(&mut [0; 4]))),
            }
        }
        source.push_str(if name_only { "$" } else { "(?:/.*)?$" });
        let regex = Regex::new(&source).map_err(|error| invalid(&error.to_string()))?;
        Ok(Self { pattern: pattern.to_owned(), under_home, name_only, regex })
    }

    /// Returns whether `path` matches, with `homes` the directories `~`
    /// stands for (absolute, without a trailing slash).
    pub fn matches(&self, path: &str, homes: &[String]) -> bool {
        if self.name_only {
            let name = path.rsplit('/').next().unwrap_or(path);
            return self.regex.is_match(name);
        }
        if !self.under_home {
            return self.regex.is_match(path);
        }
        homes.iter().any(|home| {
            let home = home.trim_end_matches('/');
            match path.strip_prefix(home) {
                // `~` alone covers the home directory and everything in it.
                Some(rest) if self.pattern == "~" => rest.is_empty() || rest.starts_with('/'),
                Some("") => self.regex.is_match(""),
                Some(rest) => rest.strip_prefix('/').is_some_and(|rest| self.regex.is_match(rest)),
                None => false,
            }
        })
    }
}

/// Lists the home directories `~` stands for when `path` is checked: the
/// process's `HOME`, its user's home from the passwd file, `/root`, and the
/// `/home/NAME` directory `path` is in, if any.
pub fn homes_for(path: &str, known: &[String]) -> Vec<String> {
    let mut homes: Vec<String> = known.iter().filter(|h| h.starts_with('/') && h.len() > 1).cloned().collect();
    homes.push("/root".to_owned());
    if let Some(user) = path.strip_prefix("/home/").and_then(|rest| rest.split('/').next()).filter(|user| !user.is_empty()) {
        homes.push(format!("/home/{user}"));
    }
    homes.sort();
    homes.dedup();
    homes
}
