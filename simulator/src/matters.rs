//! Reports of matters, and the same matters told again in other words: the
//! labelled set on which the gateway's merge detector (合并派单) is measured.
//!
//! A matter is a problem at a place: a district and street of the handling
//! city, a number, and a complaint drawn from templates with slots. A
//! report of it again is a paraphrase: another opening, synonyms, a clause
//! dropped or moved, words added, the place said a little differently, other
//! punctuation. Hard negatives come free: many matters share a template, a
//! street or a category.

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

const DISTRICTS: &[&str] = &[
    "江阳区",
    "龙马潭区",
    "纳溪区",
    "翠屏区",
    "叙州区",
    "南溪区",
    "自流井区",
    "贡井区",
    "大安区",
    "沿滩区",
    "市中区",
    "东兴区",
    "威远县",
    "资中县",
    "隆昌市",
    "长宁县",
    "江安县",
    "泸县",
];
const STREETS: &[&str] = &[
    "春雨路",
    "回龙湾",
    "南岸东路",
    "酒城大道",
    "蓝田街",
    "滨江路",
    "人民南路",
    "五星街",
    "光明路",
    "汇川路",
    "丹桂街",
    "学苑路",
    "新华街",
    "万象路",
    "桂圆林",
    "沱江路",
    "临港大道",
    "长江北路",
    "龙腾路",
    "凤凰街",
    "碧桂路",
    "华阳街",
    "杏林路",
    "东升街",
];
const SITES: &[&str] = &[
    "小区",
    "菜市场",
    "工地",
    "学校门口",
    "公交站",
    "商场",
    "医院旁",
    "农贸市场",
    "停车场",
    "安置房",
];
/// Problems: a subject and a description, `{p}` the place.
const PROBLEMS: &[(&str, &str)] = &[
    ("停水", "{p}连续两天停水，物业无人处理，请尽快恢复供水"),
    (
        "夜间施工噪音",
        "{p}每晚十一点后仍在施工，噪音扰民，严重影响休息，请查处",
    ),
    (
        "路灯不亮",
        "{p}一段路灯坏了一个多月，晚上出行很不安全，请维修",
    ),
    (
        "垃圾清运不及时",
        "{p}垃圾堆积多日无人清运，气味难闻，请环卫部门处理",
    ),
    ("占道经营", "{p}商贩长期占道经营，堵塞交通，请城管整治"),
    ("污水外溢", "{p}下水道堵塞污水外溢，臭味很大，请尽快疏通"),
    (
        "拖欠工资",
        "{p}项目拖欠农民工工资三个月未发，请劳动监察介入",
    ),
    (
        "收费不合理",
        "{p}停车收费标准不公示，乱收费，请市场监管查处",
    ),
    ("电梯故障", "{p}电梯经常故障困人，物业不维修，存在安全隐患"),
    (
        "油烟扰民",
        "{p}餐馆油烟直排，楼上住户无法开窗，请环保部门处理",
    ),
    (
        "公交线路停运",
        "{p}公交线路突然停运，居民出行困难，请恢复线路",
    ),
    (
        "积水严重",
        "{p}一下雨就严重积水，车辆和行人无法通行，请改造排水",
    ),
];
const OPENINGS: &[&str] = &["", "市民反映：", "来电反映", "网友留言：", "群众来信称"];
const SYNONYMS: &[(&str, &str)] = &[
    ("连续两天", "已经两天"),
    ("无人处理", "没人管"),
    ("请尽快", "希望尽快"),
    ("严重影响", "影响"),
    ("很不安全", "不安全"),
    ("请查处", "请相关部门查处"),
    ("多日", "好几天"),
    ("长期", "一直"),
    ("经常", "多次"),
    ("无法", "不能"),
    ("请维修", "请尽快维修"),
    ("突然", ""),
];

/// One report: what a hotline records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    pub subject: String,
    pub description: String,
    pub place: String,
}

/// A matter: a problem at a place.
#[derive(Debug, Clone)]
pub struct Matter {
    pub district: &'static str,
    pub street: &'static str,
    pub number: u32,
    pub site: &'static str,
    pub problem: usize,
}

impl Matter {
    pub fn draw(rng: &mut impl Rng) -> Self {
        Self {
            district: DISTRICTS[rng.random_range(0..DISTRICTS.len())],
            street: STREETS[rng.random_range(0..STREETS.len())],
            number: rng.random_range(1..300),
            site: SITES[rng.random_range(0..SITES.len())],
            problem: rng.random_range(0..PROBLEMS.len()),
        }
    }

    /// A matter at a house number of the caller's choosing: numbers unique
    /// within a plan make every fresh request a place of its own.
    pub fn numbered(rng: &mut impl Rng, number: u32) -> Self {
        Self {
            number,
            ..Self::draw(rng)
        }
    }

    /// The same words posted again on another channel: another opening and
    /// other punctuation only (what a citizen pastes into a second form).
    pub fn reposted(&self, rng: &mut impl Rng) -> Told {
        let first = self.told();
        let body = first.description.trim_end_matches('。').replace('，', " ");
        Told {
            subject: first.subject,
            description: format!(
                "{}{body}{}",
                OPENINGS[rng.random_range(0..OPENINGS.len())],
                if rng.random_bool(0.5) { "！" } else { "。" }
            ),
            place: first.place,
        }
    }

    /// The first report, in the template's words.
    pub fn told(&self) -> Told {
        let place = format!("{}{}{}号", self.district, self.street, self.number);
        let (subject, description) = PROBLEMS[self.problem];
        Told {
            subject: format!("{}{}{}", self.street, self.site, subject),
            description: format!(
                "{}。",
                description.replace("{p}", &format!("{place}{}", self.site))
            ),
            place,
        }
    }

    /// The same matter told again, in other words.
    pub fn retold(&self, rng: &mut impl Rng) -> Told {
        let first = self.told();
        let mut d = first.description.trim_end_matches('。').to_owned();
        for (a, b) in SYNONYMS {
            if rng.random_bool(0.5) {
                d = d.replace(a, b);
            }
        }
        let mut clauses: Vec<String> = d.split('，').map(str::to_owned).collect();
        if clauses.len() > 2 && rng.random_bool(0.3) {
            // A clause left out.
            let i = rng.random_range(1..clauses.len());
            clauses.remove(i);
        }
        if clauses.len() > 2 && rng.random_bool(0.3) {
            clauses.swap(1, 2);
        }
        let punct = if rng.random_bool(0.5) { "，" } else { " " };
        let mut description = format!(
            "{}{}",
            OPENINGS[rng.random_range(0..OPENINGS.len())],
            clauses.join(punct)
        );
        description.push_str(if rng.random_bool(0.5) { "！" } else { "。" });
        let place = match rng.random_range(0..3) {
            0 => format!("{}{}号附近", self.street, self.number),
            1 => format!(
                "{}{}{}号{}",
                self.district, self.street, self.number, self.site
            ),
            _ => first.place.clone(),
        };
        let (_, problem_subject) = (0, PROBLEMS[self.problem].0);
        let subject = match rng.random_range(0..3) {
            0 => format!("{}{}", self.street, problem_subject),
            1 => format!("反映{}{}{}", self.street, self.site, problem_subject),
            _ => first.subject,
        };
        Told {
            subject,
            description,
            place,
        }
    }
}

/// A labelled report: which matter it tells, and in what order reports
/// come.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub matter: usize,
    pub told: Told,
}

/// `matters` matters, each reported 1 to 4 times (one in three more than
/// once), in an order where a matter's reports come within a few dozen
/// reports of each other.
pub fn labelled_set(seed: u64, matters: usize) -> Vec<Labelled> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: Vec<(f64, Labelled)> = Vec::new();
    for m in 0..matters {
        let matter = Matter::draw(&mut rng);
        let at = m as f64;
        out.push((
            at,
            Labelled {
                matter: m,
                told: matter.told(),
            },
        ));
        if rng.random_bool(1.0 / 3.0) {
            for _ in 0..rng.random_range(1..=3) {
                out.push((
                    at + rng.random_range(0.5..30.0),
                    Labelled {
                        matter: m,
                        told: matter.retold(&mut rng),
                    },
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out.into_iter().map(|(_, l)| l).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_is_the_same_for_a_seed_and_has_repeats() {
        let a = labelled_set(1, 200);
        let b = labelled_set(1, 200);
        assert_eq!(
            a.iter().map(|l| &l.told).collect::<Vec<_>>(),
            b.iter().map(|l| &l.told).collect::<Vec<_>>()
        );
        assert!(a.len() > 250, "{}", a.len());
        let mut rng = StdRng::seed_from_u64(3);
        let m = Matter::draw(&mut rng);
        assert_ne!(m.retold(&mut rng), m.told());
    }
}

/// What the merge detector did on a labelled set.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Eval {
    pub reports: usize,
    pub matters: usize,
    /// Reports of a matter already dispatched: those that should merge.
    pub repeats: usize,
    /// Merged into a ticket of the same matter / of another matter.
    pub true_merges: usize,
    pub false_merges: usize,
    /// Dispatched although their matter was already dispatched.
    pub missed: usize,
    pub precision: f64,
    pub recall: f64,
    /// Gateway time per report: the dispatch, the merge check and the
    /// rules, in one transaction, in microseconds.
    pub us_per_report: f64,
}

/// Dispatches the labelled set, in order, into a real ledger in `dir` (the
/// gateway's own transaction, with its default rules: merge window 72 h,
/// similarity 0.5), all to one city and category, the hardest case: every
/// report is a candidate for every other. Counts what it merged.
pub async fn evaluate(dir: &std::path::Path, seed: u64, matters: usize) -> anyhow::Result<Eval> {
    use gateway::ledger::Ledger;
    use gateway::supervision::Policy;
    use hotline_proto::ids::TicketId;
    use hotline_proto::pb::{Citizen, EventKind, Ticket};
    use std::collections::HashMap;
    use std::sync::Arc;

    let set = labelled_set(seed, matters);
    let ledger = Ledger::open(
        &dir.join("merge-eval.db"),
        Arc::new(hotline_proto::Catalogue::default()),
        Policy::default(),
    )?;
    let mut matter_of: HashMap<String, usize> = HashMap::new();
    let mut dispatched: std::collections::HashSet<usize> = Default::default();
    let mut e = Eval {
        reports: set.len(),
        matters,
        ..Default::default()
    };
    let now = hotline_proto::time::now_ms() - set.len() as i64 * 1000;
    let started = std::time::Instant::now();
    for (i, l) in set.iter().enumerate() {
        let id = TicketId::new("luzhou").to_string();
        let t = Ticket {
            id: id.clone(),
            origin_city: "luzhou".into(),
            target_cities: vec!["yibin".into()],
            category: "consumer-rights".into(),
            kind: hotline_proto::pb::TicketKind::Complaint as i32,
            channel: 1 + (i % 5) as i32,
            subject: l.told.subject.clone(),
            description: l.told.description.clone(),
            location: l.told.place.clone(),
            citizen: Some(Citizen {
                name: String::new(),
                phone: format!("139{i:08}"),
            }),
            create_time: Some(hotline_proto::time::from_unix_ms(now + i as i64 * 1000)),
            ..Default::default()
        };
        let event = ledger.dispatch(t).await?;
        matter_of.insert(id, l.matter);
        let repeat = dispatched.contains(&l.matter);
        e.repeats += usize::from(repeat);
        if event.kind == EventKind::Merged as i32 {
            if matter_of.get(&event.linked_ticket_id) == Some(&l.matter) {
                e.true_merges += 1;
            } else {
                e.false_merges += 1;
                if !repeat {
                    dispatched.insert(l.matter);
                }
            }
        } else {
            e.missed += usize::from(repeat);
            dispatched.insert(l.matter);
        }
    }
    e.us_per_report = started.elapsed().as_secs_f64() * 1e6 / set.len().max(1) as f64;
    let merges = e.true_merges + e.false_merges;
    e.precision = if merges == 0 {
        1.0
    } else {
        e.true_merges as f64 / merges as f64
    };
    e.recall = if e.repeats == 0 {
        1.0
    } else {
        e.true_merges as f64 / e.repeats as f64
    };
    Ok(e)
}
