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
use hotline_proto::pb::{CityStats, CoordinationItem, Ticket};
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

    /// A department's figures hold its category only; counts by status
    /// are kept per city, not per category, and are left out for it.
    pub fn filter_stats(&self, stats: Vec<CityStats>) -> Vec<CityStats> {
        let Viewer::Department(categories) = self else {
            return stats;
        };
        stats
            .into_iter()
            .map(|s| {
                let only = |m: &std::collections::HashMap<String, u64>| {
                    m.iter()
                        .filter(|(k, _)| categories.contains(k))
                        .map(|(k, v)| (k.clone(), *v))
                        .collect::<std::collections::HashMap<_, _>>()
                };
                let sent_by_category = only(&s.sent_by_category);
                let received_by_category = only(&s.received_by_category);
                let transfers_out_by_category = only(&s.transfers_out_by_category);
                let transfers_in_by_category = only(&s.transfers_in_by_category);
                let transfers_answered_by_category = only(&s.transfers_answered_by_category);
                let transfers_in: u64 = transfers_in_by_category.values().sum();
                let transfers_answered: u64 = transfers_answered_by_category.values().sum();
                CityStats {
                    city: s.city,
                    sent: sent_by_category.values().sum(),
                    received: received_by_category.values().sum(),
                    transfers_out: transfers_out_by_category.values().sum(),
                    transfers_in,
                    transfers_answered,
                    answer_rate: if transfers_in > 0 {
                        transfers_answered as f64 / transfers_in as f64
                    } else {
                        0.0
                    },
                    sent_by_category,
                    received_by_category,
                    transfers_out_by_category,
                    transfers_in_by_category,
                    transfers_answered_by_category,
                    ..Default::default()
                }
            })
            .collect()
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
    use std::collections::HashMap;

    #[test]
    fn a_department_keeps_its_category_and_nothing_else() {
        let s = CityStats {
            city: "luzhou".into(),
            sent: 5,
            received: 4,
            sent_by_category: HashMap::from([("education".into(), 2), ("tourism".into(), 3)]),
            received_by_category: HashMap::from([("tourism".into(), 4)]),
            sent_by_status: HashMap::from([("DELIVERED".into(), 5)]),
            ..Default::default()
        };
        let out = Viewer::Department(vec!["education".into()]).filter_stats(vec![s.clone()]);
        assert_eq!(out[0].sent, 2);
        assert_eq!(out[0].received, 0);
        assert!(out[0].received_by_category.is_empty());
        assert!(out[0].sent_by_status.is_empty());
        assert_eq!(Viewer::Province.filter_stats(vec![s.clone()])[0], s);
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
