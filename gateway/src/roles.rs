//! Who sees what in the Observatory (分行业分领域开放数据): the provincial
//! centre sees everything; a provincial department sees only the tickets
//! and figures of the categories it oversees; a city sees its own. Only the province
//! names owners in coordination.
//!
//! The viewer comes from the caller's certificate. On an insecure gateway
//! (plaintext, loopback only) nobody is authenticated and every caller is
//! taken for the province.

use std::collections::BTreeMap;

use hotline_proto::identity::Identity;
use hotline_proto::pb::{CoordinationItem, Ticket};
use tonic::{Request, Status};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    Province,
    /// A department, with the categories it oversees.
    Department(Vec<String>),
    City(String),
}

/// Which categories each department oversees (the gateway's
/// `[departments]`); a department not listed oversees the category of its
/// own name.
pub type Departments = BTreeMap<String, Vec<String>>;

impl Viewer {
    pub fn of<T>(request: &Request<T>, departments: &Departments) -> Result<Self, Status> {
        match hotline_tls::Peer::caller(request)? {
            None | Some(Identity::Province) => Ok(Viewer::Province),
            Some(Identity::Department(d)) => Ok(Viewer::Department(
                departments
                    .get(d)
                    .cloned()
                    .unwrap_or_else(|| vec![d.clone()]),
            )),
            Some(Identity::City(c)) => Ok(Viewer::City(c.clone())),
            Some(id) => Err(Status::permission_denied(format!(
                "{id} has no view of the Observatory"
            ))),
        }
    }

    /// Only the province acts on coordination.
    pub fn must_be_province(&self) -> Result<(), Status> {
        match self {
            Viewer::Province => Ok(()),
            _ => Err(Status::permission_denied(
                "only the provincial centre names owners in coordination",
            )),
        }
    }

    /// The cities whose figures a request for `requested` ("" for all) may
    /// read: a city reads only its own.
    pub fn cities(&self, requested: &str, all: Vec<String>) -> Result<Vec<String>, Status> {
        match self {
            Viewer::City(own) if requested.is_empty() || requested == own => Ok(vec![own.clone()]),
            Viewer::City(own) => Err(Status::permission_denied(format!(
                "{own} reads its own figures only, not {requested}'s"
            ))),
            _ if requested.is_empty() => Ok(all),
            _ => Ok(vec![requested.to_owned()]),
        }
    }

    /// The categories this viewer is limited to (`None`: all of them).
    pub fn categories(&self) -> Option<Vec<String>> {
        match self {
            Viewer::Department(categories) => Some(categories.clone()),
            _ => None,
        }
    }

    /// Whether a flow between two cities in a category is this viewer's to
    /// see.
    /// [`Viewer::sees_flow`], for a read of the ledger ([`crate::reads`]).
    pub fn sees(&self) -> crate::reads::Sees {
        let v = self.clone();
        std::sync::Arc::new(move |origin, target, category| v.sees_flow(origin, target, category))
    }

    pub fn sees_flow(&self, origin: &str, target: &str, category: &str) -> bool {
        match self {
            Viewer::Province => true,
            Viewer::Department(categories) => categories.iter().any(|c| c == category),
            Viewer::City(c) => origin == c || target == c,
        }
    }

    /// Whether this viewer may see a ticket.
    pub fn sees_ticket(&self, t: &Ticket) -> bool {
        match self {
            Viewer::Province => true,
            Viewer::Department(categories) => categories.contains(&t.category),
            Viewer::City(c) => {
                t.origin_city == *c || t.handling_city == *c || t.target_cities.contains(c)
            }
        }
    }

    /// Whether this viewer may see a coordination item.
    pub fn sees_item(&self, item: &CoordinationItem) -> bool {
        match self {
            Viewer::Province => true,
            Viewer::Department(categories) => categories.contains(&item.category),
            Viewer::City(c) => {
                item.origin_city == *c || item.rejected_by == *c || item.assigned_city == *c
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_department_sees_its_categories_and_nothing_else() {
        let d = Viewer::Department(vec!["education".into()]);
        assert_eq!(d.categories(), Some(vec!["education".to_string()]));
        assert!(d.sees_flow("luzhou", "yibin", "education"));
        assert!(!d.sees_flow("luzhou", "yibin", "tourism"));
        assert_eq!(Viewer::Province.categories(), None);
        let city = Viewer::City("yibin".into());
        assert!(city.sees_flow("luzhou", "yibin", "tourism"));
        assert!(!city.sees_flow("luzhou", "zigong", "tourism"));
    }

    #[test]
    fn a_city_reads_only_its_own_figures() {
        let all = vec!["luzhou".to_string(), "yibin".to_string()];
        let v = Viewer::City("yibin".into());
        assert_eq!(
            v.cities("", all.clone()).unwrap(),
            vec!["yibin".to_string()]
        );
        assert!(v.cities("luzhou", all.clone()).is_err());
        assert_eq!(Viewer::Province.cities("", all.clone()).unwrap(), all);
    }
}
