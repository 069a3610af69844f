//! The member cities and the hot categories (14类热点诉求).
//!
//! Membership and the catalogue are configuration: the defaults are the four
//! cities of southern Sichuan (川南四市) and the fourteen categories of
//! `shared/domain.md`; a deployment may list others, such as all 21
//! prefecture-level divisions of the province.

use serde::{Deserialize, Serialize};

/// A member city. Its id is the stable key everywhere (certificates, ids,
/// configuration); the division code (GB/T 2260) is for people and reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct City {
    pub id: String,
    pub name: String,
    pub code: String,
}

/// A hot category of requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    pub id: String,
    pub name: String,
}

/// The cities and categories a process knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalogue {
    pub cities: Vec<City>,
    pub categories: Vec<Category>,
}

impl Catalogue {
    /// Builds a catalogue, checking that ids are well formed and unique.
    pub fn new(cities: Vec<City>, categories: Vec<Category>) -> Result<Self, String> {
        if cities.is_empty() {
            return Err("cities: at least one city is needed".into());
        }
        if categories.is_empty() {
            return Err("categories: at least one category is needed".into());
        }
        check_ids("cities", cities.iter().map(|c| c.id.as_str()))?;
        check_ids("categories", categories.iter().map(|c| c.id.as_str()))?;
        Ok(Self { cities, categories })
    }

    pub fn city(&self, id: &str) -> Option<&City> {
        self.cities.iter().find(|c| c.id == id)
    }

    pub fn category(&self, id: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.id == id)
    }

    pub fn city_ids(&self) -> impl Iterator<Item = &str> {
        self.cities.iter().map(|c| c.id.as_str())
    }

    pub fn category_ids(&self) -> impl Iterator<Item = &str> {
        self.categories.iter().map(|c| c.id.as_str())
    }

    /// The four cities of southern Sichuan and the 14 hot categories.
    pub fn south_sichuan() -> Self {
        Self {
            cities: cities(SOUTH_SICHUAN),
            categories: default_categories(),
        }
    }

    /// All 21 prefecture-level divisions of Sichuan and the 14 categories.
    pub fn province() -> Self {
        Self {
            cities: cities(PROVINCE),
            categories: default_categories(),
        }
    }
}

/// The catalogue as a configuration file may give it: either list may be left
/// out for its default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    #[serde(default)]
    pub cities: Option<Vec<City>>,
    #[serde(default)]
    pub categories: Option<Vec<Category>>,
}

impl CatalogueConfig {
    pub fn build(self) -> Result<Catalogue, String> {
        let defaults = Catalogue::default();
        Catalogue::new(
            self.cities.unwrap_or(defaults.cities),
            self.categories.unwrap_or(defaults.categories),
        )
    }
}

impl Default for Catalogue {
    fn default() -> Self {
        Self::south_sichuan()
    }
}

/// A city or category id: lowercase ASCII letters, digits and inner hyphens,
/// at most 32 characters (it appears in ticket ids and certificate names).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
        && id.as_bytes()[0].is_ascii_lowercase()
}

fn check_ids<'a>(what: &str, ids: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !is_valid_id(id) {
            return Err(format!(
                "{what}: id {id:?} must be lowercase letters, digits and inner hyphens, at most 32 characters"
            ));
        }
        if !seen.insert(id) {
            return Err(format!("{what}: id {id:?} is listed twice"));
        }
    }
    Ok(())
}

const SOUTH_SICHUAN: &[(&str, &str, &str)] = &[
    ("luzhou", "泸州 Luzhou", "510500"),
    ("yibin", "宜宾 Yibin", "511500"),
    ("zigong", "自贡 Zigong", "510300"),
    ("neijiang", "内江 Neijiang", "511000"),
];

const PROVINCE: &[(&str, &str, &str)] = &[
    ("chengdu", "成都 Chengdu", "510100"),
    ("zigong", "自贡 Zigong", "510300"),
    ("panzhihua", "攀枝花 Panzhihua", "510400"),
    ("luzhou", "泸州 Luzhou", "510500"),
    ("deyang", "德阳 Deyang", "510600"),
    ("mianyang", "绵阳 Mianyang", "510700"),
    ("guangyuan", "广元 Guangyuan", "510800"),
    ("suining", "遂宁 Suining", "510900"),
    ("neijiang", "内江 Neijiang", "511000"),
    ("leshan", "乐山 Leshan", "511100"),
    ("nanchong", "南充 Nanchong", "511300"),
    ("meishan", "眉山 Meishan", "511400"),
    ("yibin", "宜宾 Yibin", "511500"),
    ("guangan", "广安 Guang'an", "511600"),
    ("dazhou", "达州 Dazhou", "511700"),
    ("yaan", "雅安 Ya'an", "511800"),
    ("bazhong", "巴中 Bazhong", "511900"),
    ("ziyang", "资阳 Ziyang", "512000"),
    ("aba", "阿坝 Aba", "513200"),
    ("garze", "甘孜 Garzê", "513300"),
    ("liangshan", "凉山 Liangshan", "513400"),
];

const CATEGORIES: &[(&str, &str)] = &[
    ("social-security", "社保 social insurance"),
    ("housing-fund", "公积金 housing provident fund"),
    ("education", "教育 education"),
    ("tourism", "旅游 tourism"),
    ("transport", "交通出行 transport and travel"),
    (
        "market-access",
        "市场准入 business registration and licensing",
    ),
    ("employment", "用工稳工 employment and job stability"),
    ("medical-insurance", "医保 medical insurance"),
    ("household-registration", "户籍 household registration"),
    ("real-estate", "不动产登记 property registration"),
    ("taxation", "税务 taxation"),
    ("consumer-rights", "消费维权 consumer rights"),
    ("ecology", "生态环境 environment"),
    ("wage-arrears", "欠薪 unpaid wages"),
    // The emergency categories of the provincial supervision ledger (督办台账):
    // escalated at once.
    (
        "natural-disaster",
        "自然灾害 natural disaster (landslide, flood)",
    ),
    ("safety", "安全生产与消防 production and fire safety"),
    ("social-stability", "社会稳定 social stability"),
];

/// The categories of the default catalogue that the provincial centre takes
/// up at once (the supervision rules' `emergency_categories`).
pub const EMERGENCY_CATEGORIES: [&str; 3] = ["natural-disaster", "safety", "social-stability"];

fn cities(list: &[(&str, &str, &str)]) -> Vec<City> {
    list.iter()
        .map(|(id, name, code)| City {
            id: (*id).into(),
            name: (*name).into(),
            code: (*code).into(),
        })
        .collect()
}

fn default_categories() -> Vec<Category> {
    CATEGORIES
        .iter()
        .map(|(id, name)| Category {
            id: (*id).into(),
            name: (*name).into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_have_four_cities_and_seventeen_categories() {
        let c = Catalogue::default();
        assert_eq!(c.cities.len(), 4);
        assert_eq!(c.categories.len(), 17, "14 hot and 3 emergency categories");
        assert!(Catalogue::new(c.cities.clone(), c.categories.clone()).is_ok());
        assert_eq!(Catalogue::province().cities.len(), 21);
        assert!(Catalogue::new(Catalogue::province().cities, c.categories).is_ok());
    }

    #[test]
    fn duplicate_or_malformed_ids_are_refused() {
        let c = Catalogue::default();
        let mut twice = c.cities.clone();
        twice.push(twice[0].clone());
        assert!(Catalogue::new(twice, c.categories.clone()).is_err());
        let mut bad = c.cities.clone();
        bad[0].id = "Lu Zhou".into();
        assert!(Catalogue::new(bad, c.categories).is_err());
    }
}
