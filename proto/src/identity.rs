//! Who is calling: the identities the federation's certificates name.
//!
//! Each certificate carries a SPIFFE-style URI SAN naming its holder
//! (`spiffe://hotline.sichuan/city/luzhou`), and a DNS SAN derived from it
//! (`luzhou.city.hotline.sichuan`) that clients check as the server's name,
//! whatever address they dialled. A caller's identity is taken from its
//! verified certificate, never from a field it fills in.

use std::fmt;

/// The trust domain of the federation's identities.
pub const TRUST_DOMAIN: &str = "hotline.sichuan";

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// The provincial gateway.
    Gateway,
    /// A city: its node, and its own hotline platform.
    City(String),
    /// One operator's console at a city's node
    /// (`spiffe://hotline.sichuan/city/luzhou/console/OPERATOR`): it acts at
    /// its node as that operator only, and nowhere as the city.
    Console { city: String, operator: String },
    /// The provincial 12345 centre.
    Province,
    /// A provincial department (省直部门), by the category it oversees.
    Department(String),
}

impl Identity {
    /// `spiffe://hotline.sichuan/...`
    pub fn spiffe_id(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{}", self.path())
    }

    fn path(&self) -> String {
        match self {
            Identity::Gateway => "gateway".into(),
            Identity::Province => "province".into(),
            Identity::City(c) => format!("city/{c}"),
            Identity::Department(d) => format!("department/{d}"),
            Identity::Console { city, operator } => format!("city/{city}/console/{operator}"),
        }
    }

    /// Reads an identity from a SPIFFE id of this trust domain.
    pub fn from_spiffe_id(uri: &str) -> Option<Self> {
        let path = uri
            .strip_prefix("spiffe://")?
            .strip_prefix(TRUST_DOMAIN)?
            .strip_prefix('/')?;
        let valid = |s: &str| segment(s, 64);
        let parts: Vec<&str> = path.split('/').collect();
        match parts[..] {
            ["gateway"] => Some(Identity::Gateway),
            ["province"] => Some(Identity::Province),
            ["city", c] if valid(c) => Some(Identity::City(c.to_owned())),
            ["city", c, "console", o] if valid(c) && Self::valid_operator(o) => {
                Some(Identity::Console {
                    city: c.to_owned(),
                    operator: o.to_owned(),
                })
            }
            ["department", d] if valid(d) => Some(Identity::Department(d.to_owned())),
            _ => None,
        }
    }

    /// The DNS name a server of this identity presents:
    /// `gateway.hotline.sichuan`, `luzhou.city.hotline.sichuan`...
    pub fn dns_name(&self) -> String {
        match self {
            Identity::Gateway => format!("gateway.{TRUST_DOMAIN}"),
            Identity::Province => format!("province.{TRUST_DOMAIN}"),
            Identity::City(c) => format!("{c}.city.{TRUST_DOMAIN}"),
            Identity::Department(d) => format!("{d}.department.{TRUST_DOMAIN}"),
            Identity::Console { city, operator } => {
                format!("{operator}.console.{city}.city.{TRUST_DOMAIN}")
            }
        }
    }

    /// A name for files and logs: `gateway`, `city-luzhou`...
    pub fn file_stem(&self) -> String {
        self.path().replace('/', "-")
    }

    /// An operator id a console identity can carry: what a SPIFFE id's
    /// segment may hold (lowercase letters, digits, `-`; 1 to 63).
    pub fn valid_operator(operator: &str) -> bool {
        segment(operator, 63)
    }

    /// The city, if this is one (a console is not: it never acts as its
    /// city).
    pub fn city(&self) -> Option<&str> {
        match self {
            Identity::City(c) => Some(c),
            _ => None,
        }
    }
}

/// A segment of a SPIFFE id's path: 1 to `max` lowercase letters, digits
/// and `-`.
fn segment(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_spiffe_ids() {
        for id in [
            Identity::Gateway,
            Identity::Province,
            Identity::City("luzhou".into()),
            Identity::Department("housing-fund".into()),
            Identity::Console {
                city: "luzhou".into(),
                operator: "luzhou-op-1".into(),
            },
        ] {
            assert_eq!(Identity::from_spiffe_id(&id.spiffe_id()), Some(id));
        }
    }

    #[test]
    fn a_console_is_not_its_city() {
        let console = Identity::Console {
            city: "luzhou".into(),
            operator: "op-1".into(),
        };
        assert_eq!(console.city(), None);
        assert_eq!(
            console.spiffe_id(),
            "spiffe://hotline.sichuan/city/luzhou/console/op-1"
        );
        assert_eq!(
            console.dns_name(),
            "op-1.console.luzhou.city.hotline.sichuan"
        );
        assert_eq!(console.file_stem(), "city-luzhou-console-op-1");
    }

    #[test]
    fn foreign_or_malformed_ids_name_nobody() {
        for bad in [
            "spiffe://other.domain/city/luzhou",
            "spiffe://hotline.sichuan/city/",
            "spiffe://hotline.sichuan/city/Luzhou",
            "spiffe://hotline.sichuan/city/luzhou/extra",
            "spiffe://hotline.sichuan/city/luzhou/console",
            "spiffe://hotline.sichuan/city/luzhou/console/",
            "spiffe://hotline.sichuan/city/luzhou/console/Op_1",
            "spiffe://hotline.sichuan/city/luzhou/console/op-1/extra",
            "spiffe://hotline.sichuan/mayor",
            "https://hotline.sichuan/gateway",
            "spiffe://hotline.sichuangateway",
        ] {
            assert_eq!(Identity::from_spiffe_id(bad), None, "{bad}");
        }
    }
}
