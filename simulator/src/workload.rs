//! Citizens' requests, generated from a seed: the same seed gives the same
//! requests, in the same order, city by city.
//!
//! Every name and phone number here is made up; the simulator still treats
//! them as personal data and never prints them.

use hotline_proto::Catalogue;
use hotline_proto::pb::{Channel, Citizen, Priority, Ticket, TicketKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Shares of the kinds of request, per mille.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Requests about the origin's own city.
    pub local: u32,
    /// Requests that involve several cities (并联办理).
    pub multi_city: u32,
    /// Urgent requests.
    pub urgent: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            local: 200,
            multi_city: 150,
            urgent: 50,
        }
    }
}

/// The requests one city's hotline takes.
pub struct Citizens {
    city: String,
    others: Vec<String>,
    categories: Vec<String>,
    rng: StdRng,
    mix: Mix,
    made: u64,
}

pub(crate) const SURNAMES: &[&str] = &["王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴"];
pub(crate) const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "强", "磊", "洋", "勇", "艳", "杰", "军",
];
const CHANNELS: &[Channel] = &[
    Channel::Phone,
    Channel::Phone,
    Channel::Phone,
    Channel::PeopleDailyBoard,
    Channel::WenzhengSichuan,
    Channel::MalaCommunity,
    Channel::MayorMailbox,
    Channel::Web,
    Channel::App,
];
pub(crate) const KINDS: &[TicketKind] = &[
    TicketKind::Consultation,
    TicketKind::Help,
    TicketKind::Complaint,
    TicketKind::Report,
    TicketKind::Suggestion,
];

pub(crate) fn subject(category: &str) -> &'static str {
    match category {
        "social-security" => "异地社保关系转移接续",
        "housing-fund" => "公积金异地贷款与转移",
        "education" => "随迁子女异地入学",
        "tourism" => "景区门票与服务投诉",
        "transport" => "跨市公交与客运班线",
        "market-access" => "异地企业登记与许可",
        "employment" => "跨市务工与稳岗补贴",
        "medical-insurance" => "异地就医直接结算",
        "household-registration" => "户口迁移与证明",
        "real-estate" => "异地不动产登记",
        "taxation" => "跨区域涉税事项",
        "consumer-rights" => "异地网购消费纠纷",
        "ecology" => "沱江流域跨界污染",
        "wage-arrears" => "外地务工人员欠薪",
        "natural-disaster" => "山体滑坡与汛情险情",
        "safety" => "安全生产与消防隐患",
        "social-stability" => "群体性纠纷苗头",
        _ => "跨市诉求",
    }
}

impl Citizens {
    pub fn new(city: &str, catalogue: &Catalogue, seed: u64, mix: Mix) -> Self {
        let index = catalogue.city_ids().position(|c| c == city).unwrap_or(0) as u64;
        Self {
            city: city.to_owned(),
            others: catalogue
                .city_ids()
                .filter(|c| *c != city)
                .map(str::to_owned)
                .collect(),
            categories: catalogue.category_ids().map(str::to_owned).collect(),
            rng: StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(index)),
            mix,
            made: 0,
        }
    }

    /// The next request: a draft for `CreateTicket`, with a request id that
    /// makes retries safe.
    pub fn next_request(&mut self) -> Ticket {
        let n = self.made;
        self.made += 1;
        // The first requests go round every category, so each is seen early.
        let category = if (n as usize) < self.categories.len() {
            self.categories[n as usize].clone()
        } else {
            self.categories[self.rng.random_range(0..self.categories.len())].clone()
        };
        let roll = self.rng.random_range(0..1000);
        let targets = if self.others.is_empty() || roll < self.mix.local {
            vec![self.city.clone()]
        } else if roll < self.mix.local + self.mix.multi_city && self.others.len() >= 2 {
            let mut picked = self.others.clone();
            let keep = self.rng.random_range(2..=picked.len().min(3));
            for i in 0..keep {
                let j = self.rng.random_range(i..picked.len());
                picked.swap(i, j);
            }
            picked.truncate(keep);
            picked
        } else {
            vec![self.others[self.rng.random_range(0..self.others.len())].clone()]
        };
        let urgent = self.rng.random_range(0..1000) < self.mix.urgent;
        let name = format!(
            "{}{}",
            SURNAMES[self.rng.random_range(0..SURNAMES.len())],
            GIVEN[self.rng.random_range(0..GIVEN.len())]
        );
        let phone = format!(
            "1{}{:09}",
            self.rng.random_range(3..=9),
            self.rng.random_range(0..1_000_000_000u64)
        );
        Ticket {
            target_cities: targets,
            subject: subject(&category).to_owned(),
            description: format!(
                "市民来电反映{}相关问题，涉及外市办理，请协助。",
                subject(&category)
            ),
            location: format!("{}市辖区", self.city),
            category,
            kind: KINDS[self.rng.random_range(0..KINDS.len())] as i32,
            channel: CHANNELS[self.rng.random_range(0..CHANNELS.len())] as i32,
            priority: if urgent {
                Priority::Urgent
            } else {
                Priority::Normal
            } as i32,
            citizen: Some(Citizen { name, phone }),
            request_id: format!("sim-{}-{n}", self.city),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_requests() {
        let c = Catalogue::default();
        let mut a = Citizens::new("luzhou", &c, 7, Mix::default());
        let mut b = Citizens::new("luzhou", &c, 7, Mix::default());
        let mut other = Citizens::new("luzhou", &c, 8, Mix::default());
        let xs: Vec<Ticket> = (0..200).map(|_| a.next_request()).collect();
        let ys: Vec<Ticket> = (0..200).map(|_| b.next_request()).collect();
        let zs: Vec<Ticket> = (0..200).map(|_| other.next_request()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        // Every category early; local, single and multi-city requests all made.
        let cats: std::collections::BTreeSet<_> = xs[..17].iter().map(|t| &t.category).collect();
        assert_eq!(cats.len(), 17);
        assert!(xs.iter().any(|t| t.target_cities == ["luzhou"]));
        assert!(xs.iter().any(|t| t.target_cities.len() >= 2));
        assert!(
            xs.iter()
                .all(|t| hotline_proto::validate::new_ticket(t, "luzhou", &c).is_ok())
        );
    }
}
