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
    /// Requests that report again a matter reported a little earlier, by
    /// another citizen or on another channel (多人一诉, 合并派单): what the
    /// gateway's merge detector joins to the open ticket.
    pub repeat: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            local: 200,
            multi_city: 150,
            urgent: 50,
            repeat: 0,
        }
    }
}

/// The districts and counties (区, 县, 县级市) of each city of southern
/// Sichuan, and streets of its town centre.
fn districts(city: &str) -> &'static [&'static str] {
    match city {
        "luzhou" => &[
            "江阳区",
            "龙马潭区",
            "纳溪区",
            "泸县",
            "合江县",
            "叙永县",
            "古蔺县",
        ],
        "yibin" => &[
            "翠屏区",
            "南溪区",
            "叙州区",
            "江安县",
            "长宁县",
            "高县",
            "珙县",
            "筠连县",
            "兴文县",
            "屏山县",
        ],
        "zigong" => &["自流井区", "贡井区", "大安区", "沿滩区", "荣县", "富顺县"],
        "neijiang" => &["市中区", "东兴区", "威远县", "资中县", "隆昌市"],
        _ => &["城区"],
    }
}

fn streets(city: &str) -> &'static [&'static str] {
    match city {
        "luzhou" => &[
            "酒城大道",
            "江阳中路",
            "回龙湾",
            "蜀泸大道",
            "春雨路",
            "滨江路",
            "龙马大道",
            "佳乐路",
        ],
        "yibin" => &[
            "人民路",
            "南岸东路",
            "蜀南大道",
            "长江大道",
            "中山街",
            "西郊路",
            "航天路",
            "酒都路",
        ],
        "zigong" => &[
            "五星街",
            "汇东路",
            "丹桂街",
            "檀木林大街",
            "汇川路",
            "解放路",
            "盐马路",
            "灯会路",
        ],
        "neijiang" => &[
            "汉安大道",
            "沱江路",
            "甜城大道",
            "交通路",
            "玉溪路",
            "东兴大道",
            "大千路",
            "桂湖街",
        ],
        _ => &["人民路", "解放路", "中山路", "建设路"],
    }
}

/// What citizens call about, per category: a subject and what they say,
/// `{p}` the place, `{o}` the caller's city, `{t}` the city that handles it.
fn problems(category: &str) -> &'static [(&'static str, &'static str)] {
    match category {
        "social-security" => &[
            (
                "社保关系转移接续",
                "本人在{o}参保多年，现到{t}工作，社保关系转移办了两个月还没办好，请协助",
            ),
            (
                "养老金资格认证",
                "父母在{o}领养老金，现随子女住在{p}，异地资格认证一直办不了，请帮助",
            ),
        ],
        "housing-fund" => &[
            (
                "公积金异地贷款",
                "在{o}缴存公积金，想在{p}买房申请公积金贷款，被要求开异地缴存证明，不知怎么开",
            ),
            (
                "公积金转移未到账",
                "从{o}调到{t}工作，公积金转移申请提交一个月还没到账，请核实",
            ),
        ],
        "education" => &[
            (
                "随迁子女入学",
                "孩子随我从{o}到{p}附近居住，办入学时要求提供很多证明，请明确政策",
            ),
            (
                "学籍转入受阻",
                "孩子学籍从{o}转到{t}的学校，转入手续卡了一个多月，请协调",
            ),
        ],
        "tourism" => &[
            (
                "景区门票不退",
                "在{p}景区买票后因暴雨闭园，门票不给退，请处理",
            ),
            (
                "旅游团强制购物",
                "参加{t}旅行社的旅游团，行程被随意更改还强制购物，请查处",
            ),
        ],
        "transport" => &[
            (
                "客运班线停运",
                "{o}到{t}的客运班线突然停运，{p}附近居民出行困难，请尽快恢复",
            ),
            (
                "城际公交",
                "希望开通{o}到{t}的城际公交，{p}一带很多人两地通勤",
            ),
        ],
        "market-access" => &[
            (
                "异地设立分公司",
                "在{o}注册的公司想在{p}设分公司，两地登记材料要求不一致，请明确",
            ),
            (
                "经营许可互认",
                "在{t}办食品经营许可，{o}已有的许可不被认可，请协调",
            ),
        ],
        "employment" => &[
            (
                "稳岗补贴被退回",
                "公司在{p}，员工社保在{o}缴纳，稳岗补贴申请被退回，请核实",
            ),
            (
                "技能培训报名",
                "从{o}到{t}务工，想参加职业技能培训，不知道去哪里报名",
            ),
        ],
        "medical-insurance" => &[
            (
                "异地就医不能结算",
                "在{o}参保，在{p}附近医院住院，出院不能直接结算，请协助",
            ),
            (
                "异地就医备案",
                "异地就医备案提交后一直没通过，在{t}的医院没法刷卡，请处理",
            ),
        ],
        "household-registration" => &[
            (
                "户口迁移",
                "准备把户口从{o}迁到{p}，迁入地和迁出地说法不一样，请明确流程",
            ),
            (
                "户籍证明异地开具",
                "户籍在{o}，在{t}办事要户籍证明，能不能异地开具",
            ),
        ],
        "real-estate" => &[
            (
                "不动产权证难办",
                "在{p}买的房子交房两年了还办不了不动产权证，请督促",
            ),
            (
                "异地查询房产",
                "人在{o}，需要查询在{t}名下的房产信息，能否异地办理",
            ),
        ],
        "taxation" => &[
            (
                "个税汇算补税",
                "在{o}和{t}两地都有收入，个税汇算时被要求补税，请解释",
            ),
            ("跨市开票", "在{p}经营的个体户，跨市开发票遇到问题，请协助"),
        ],
        "consumer-rights" => &[
            (
                "网购家电拒退",
                "在{t}的商家网购的家电有质量问题，商家拒绝退换，请处理",
            ),
            (
                "预付卡无法退费",
                "在{p}的健身房办了预付卡，门店关门了退不了费，请查处",
            ),
        ],
        "ecology" => &[
            (
                "沱江偷排污水",
                "{p}附近河段有企业往沱江偷排污水，河水发黑发臭，请查处",
            ),
            (
                "交界河道垃圾",
                "{o}和{t}交界的河道漂着大量垃圾，没人清理，请处理",
            ),
        ],
        "wage-arrears" => &[
            (
                "拖欠农民工工资",
                "在{p}的工地务工，包工头拖欠三个月工资没发，请劳动监察介入",
            ),
            (
                "离职工资未结清",
                "从{t}的企业离职后工资一直没结清，本人已回{o}，请协调",
            ),
        ],
        "natural-disaster" => &[
            (
                "山体滑坡隐患",
                "{p}后山出现裂缝，下雨时有落石，担心滑坡，请尽快排查",
            ),
            (
                "汛期内涝",
                "{p}一带连续降雨积水严重，低洼处有居民被困，请救援",
            ),
        ],
        "safety" => &[
            (
                "消防通道堵塞",
                "{p}小区消防通道长期被车辆堵塞，存在安全隐患，请整治",
            ),
            ("燃气泄漏隐患", "{p}附近闻到燃气管道漏气的味道，请尽快检修"),
        ],
        "social-stability" => &[
            (
                "楼盘停工业主维权",
                "{p}的楼盘停工一年多，上百户业主交不了房，情绪激动，请协调",
            ),
            (
                "征地补偿未发放",
                "{p}的征地补偿款迟迟没发，村民意见很大，请处理",
            ),
        ],
        _ => &[("跨市诉求", "在{p}遇到需要{t}办理的事情，请协助")],
    }
}

/// How a citizen opens when the matter has been reported already.
const AGAIN: &[&str] = &["", "再次反映：", "同一问题，", "网友留言：", "群众来信称："];

/// The Chinese part of a city's name (`泸州 Luzhou` → `泸州`).
fn chinese(name: &str) -> &str {
    name.split_whitespace().next().unwrap_or(name)
}

/// A matter reported: what a repeat says again.
#[derive(Debug, Clone)]
struct Reported {
    targets: Vec<String>,
    category: String,
    subject: String,
    description: String,
    location: String,
}

/// The requests one city's hotline takes.
pub struct Citizens {
    city: String,
    others: Vec<String>,
    categories: Vec<String>,
    /// Every city's name in Chinese, by id.
    names: std::collections::BTreeMap<String, String>,
    rng: StdRng,
    mix: Mix,
    made: u64,
    /// The last matters reported, for repeats.
    recent: std::collections::VecDeque<Reported>,
}

/// How many recent matters a repeat is drawn from.
const RECENT: usize = 30;

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
            names: catalogue
                .cities
                .iter()
                .map(|c| (c.id.clone(), chinese(&c.name).to_owned()))
                .collect(),
            rng: StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(index)),
            mix,
            made: 0,
            recent: std::collections::VecDeque::new(),
        }
    }

    fn name(&self, city: &str) -> String {
        self.names
            .get(city)
            .cloned()
            .unwrap_or_else(|| city.to_owned())
    }

    /// A matter of `category` at a place of the city that handles it.
    fn matter(&mut self, category: &str, targets: &[String]) -> (String, String, String) {
        let at = targets.first().map(String::as_str).unwrap_or(&self.city);
        let districts = districts(at);
        let streets = streets(at);
        let place = format!(
            "{}市{}{}{}号",
            self.name(at),
            districts[self.rng.random_range(0..districts.len())],
            streets[self.rng.random_range(0..streets.len())],
            self.rng.random_range(1..400)
        );
        let problems = problems(category);
        let (subject, says) = problems[self.rng.random_range(0..problems.len())];
        let description = says
            .replace("{p}", &place)
            .replace("{o}", &self.name(&self.city))
            .replace("{t}", &self.name(at));
        (subject.to_owned(), format!("{description}。"), place)
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
        let repeat = self.rng.random_range(0..1000) < self.mix.repeat && !self.recent.is_empty();
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
        let matter = if repeat {
            // The same matter again, said with another opening.
            let m = self.recent[self.rng.random_range(0..self.recent.len())].clone();
            let again = AGAIN[self.rng.random_range(0..AGAIN.len())];
            Reported {
                description: format!("{again}{}", m.description),
                ..m
            }
        } else {
            let (subject, description, location) = self.matter(&category, &targets);
            let m = Reported {
                targets,
                category,
                subject,
                description,
                location,
            };
            self.recent.push_back(m.clone());
            if self.recent.len() > RECENT {
                self.recent.pop_front();
            }
            m
        };
        Ticket {
            target_cities: matter.targets,
            subject: matter.subject,
            description: matter.description,
            location: matter.location,
            category: matter.category,
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

    #[test]
    fn places_are_districts_and_streets_of_the_handling_city_and_repeats_say_a_matter_again() {
        let c = Catalogue::default();
        let mix = Mix {
            repeat: 200,
            ..Mix::default()
        };
        let mut citizens = Citizens::new("luzhou", &c, 3, mix);
        let xs: Vec<Ticket> = (0..300).map(|_| citizens.next_request()).collect();
        for t in &xs {
            let at = &t.target_cities[0];
            let name = chinese(&c.city(at).unwrap().name).to_owned();
            assert!(t.location.starts_with(&format!("{name}市")), "{t:?}");
            assert!(
                districts(at).iter().any(|d| t.location.contains(d)),
                "{at}: {}",
                t.location
            );
            assert!(t.location.ends_with('号'), "{}", t.location);
            assert!(!t.location.is_ascii() && !t.location.contains(at.as_str()));
        }
        // Many subjects, not one per category.
        let subjects: std::collections::BTreeSet<_> = xs.iter().map(|t| &t.subject).collect();
        assert!(subjects.len() > 25, "{subjects:?}");
        // About one in five says an earlier matter again: its place,
        // category and targets, by another citizen.
        let repeats: Vec<&Ticket> = xs
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                xs[..*i].iter().any(|e| {
                    e.location == t.location
                        && e.category == t.category
                        && e.target_cities == t.target_cities
                        && t.description.ends_with(&e.description)
                })
            })
            .map(|(_, t)| t)
            .collect();
        assert!((30..=90).contains(&repeats.len()), "{}", repeats.len());
        // Without repeats in the mix, none.
        let mut plain = Citizens::new("luzhou", &c, 3, Mix::default());
        let ys: Vec<Ticket> = (0..300).map(|_| plain.next_request()).collect();
        let places: std::collections::BTreeSet<_> = ys.iter().map(|t| &t.location).collect();
        assert!(places.len() > 290, "{}", places.len());
    }
}
