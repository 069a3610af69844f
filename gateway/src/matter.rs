//! Near-duplicate detection of reports (合并派单): is this request about the
//! same matter, in the same place, as one already in the ledger?
//!
//! Text is reduced to its letters and digits (Chinese characters included),
//! cut into overlapping character bigrams, and summarised by a MinHash
//! signature of [`K`] values: the share of equal values estimates the
//! Jaccard similarity of two reports' bigram sets. Candidates are found
//! without a scan by locality-sensitive hashing: the signature is cut into
//! [`BANDS`] bands of [`ROWS`] values, and two reports whose band is equal
//! (with the same target city and category) are compared. The place is
//! compared exactly, on its own bigrams. No model, no network: plain
//! arithmetic, the same on every replica.

use std::collections::BTreeSet;

/// Values per signature.
pub const K: usize = 30;
/// Bands, of [`ROWS`] values each: a pair with similarity s becomes a
/// candidate with probability 1 - (1 - s^ROWS)^BANDS (0.74 at 0.5, 0.91 at
/// 0.6, 0.99 at 0.7; 0.03 at 0.15).
pub const BANDS: usize = 10;
pub const ROWS: usize = 3;

/// A report's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub signature: [u32; K],
    /// The normalised place.
    pub place: String,
}

/// Letters and digits only, ASCII lowercased.
pub fn normalise(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The character bigrams of normalised text (the single character of a
/// one-character text).
pub fn bigrams(normalised: &str) -> BTreeSet<(char, char)> {
    let chars: Vec<char> = normalised.chars().collect();
    if chars.len() == 1 {
        return BTreeSet::from([(chars[0], '\0')]);
    }
    chars.windows(2).map(|w| (w[0], w[1])).collect()
}

fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn bigram_hash(a: char, b: char) -> u64 {
    let (a, b) = (u32::from(a), u32::from(b));
    fnv(a.to_le_bytes().into_iter().chain(b.to_le_bytes()))
}

/// The fingerprint of a report: its subject and description, and its place.
pub fn fingerprint(subject: &str, description: &str, place: &str) -> Fingerprint {
    let text = normalise(&format!("{subject}{description}"));
    let mut signature = [u32::MAX; K];
    for (a, b) in bigrams(&text) {
        let h = bigram_hash(a, b);
        for (i, slot) in signature.iter_mut().enumerate() {
            let v = (mix(h ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 32) as u32;
            if v < *slot {
                *slot = v;
            }
        }
    }
    Fingerprint {
        signature,
        place: normalise(place),
    }
}

/// The estimated Jaccard similarity of two signatures.
pub fn similarity(a: &[u32; K], b: &[u32; K]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / K as f64
}

/// The exact Jaccard similarity of two normalised places' bigrams. A
/// report with no place is in no place: "the same place" needs one on both
/// sides.
pub fn place_similarity(a: &str, b: &str) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    if a == b {
        return 1.0;
    }
    // Two house numbers that differ are two places, however alike the
    // street.
    let (na, nb) = (numbers(a), numbers(b));
    if !na.is_empty() && !nb.is_empty() && na != nb {
        return 0.0;
    }
    let (x, y) = (bigrams(a), bigrams(b));
    let union = x.union(&y).count();
    if union == 0 {
        return 1.0;
    }
    x.intersection(&y).count() as f64 / union as f64
}

/// A normalised place made ready for comparing: its bigrams sorted, and the
/// key of its house numbers. [`Place::similarity`] equals
/// [`place_similarity`] without an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub text: String,
    grams: Vec<(char, char)>,
    numbers: i64,
}

impl Place {
    pub fn of(normalised: &str) -> Self {
        Self {
            text: normalised.to_owned(),
            grams: bigrams(normalised).into_iter().collect(),
            numbers: numbers_key(normalised),
        }
    }

    pub fn similarity(&self, other: &Place) -> f64 {
        if self.text.is_empty() || other.text.is_empty() {
            return 0.0;
        }
        if self.text == other.text {
            return 1.0;
        }
        if self.numbers != 0 && other.numbers != 0 && self.numbers != other.numbers {
            return 0.0;
        }
        // Both sorted: count the common bigrams in one pass.
        let (a, b) = (&self.grams, &other.grams);
        let (mut i, mut j, mut common) = (0, 0, 0);
        while i < a.len() && j < b.len() {
            match a[i].cmp(&b[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    common += 1;
                    i += 1;
                    j += 1;
                }
            }
        }
        let union = a.len() + b.len() - common;
        if union == 0 {
            return 1.0;
        }
        common as f64 / union as f64
    }
}

/// A key of the house numbers of a normalised place (0 when it has none):
/// two places whose keys are both set and differ are two places, which a
/// lookup can tell without reading either report.
pub fn numbers_key(place: &str) -> i64 {
    let numbers = numbers(place);
    if numbers.is_empty() {
        return 0;
    }
    let bytes = numbers.join(",").into_bytes();
    (fnv(bytes) | 1) as i64
}

/// The numbers in a text ("18", "3"), in order.
fn numbers(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The band keys a report is filed under, within its target city and
/// category.
pub fn band_keys(target: &str, category: &str, signature: &[u32; K]) -> [i64; BANDS] {
    let mut keys = [0i64; BANDS];
    for (band, key) in keys.iter_mut().enumerate() {
        let values = &signature[band * ROWS..(band + 1) * ROWS];
        let bytes = target
            .bytes()
            .chain([0])
            .chain(category.bytes())
            .chain([0, band as u8])
            .chain(values.iter().flat_map(|v| v.to_le_bytes()));
        *key = fnv(bytes) as i64;
    }
    keys
}

pub fn encode(signature: &[u32; K]) -> Vec<u8> {
    signature.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn decode(bytes: &[u8]) -> Option<[u32; K]> {
    if bytes.len() != K * 4 {
        return None;
    }
    let mut out = [0u32; K];
    for (i, chunk) in bytes.chunks_exact(4).enumerate() {
        out[i] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_words_are_the_same_and_punctuation_does_not_count() {
        let a = fingerprint(
            "小区停水",
            "江阳区春雨路3号小区连续两天停水，无人处理。",
            "江阳区春雨路3号",
        );
        let b = fingerprint(
            "小区停水",
            "江阳区春雨路3号小区连续两天停水 无人处理",
            "江阳区 春雨路3号",
        );
        assert_eq!(similarity(&a.signature, &b.signature), 1.0);
        assert_eq!(place_similarity(&a.place, &b.place), 1.0);
        assert_eq!(decode(&encode(&a.signature)), Some(a.signature));
    }

    #[test]
    fn slightly_different_words_stay_close_and_another_matter_does_not() {
        let a = fingerprint(
            "春雨路小区停水",
            "江阳区春雨路3号小区连续两天停水，物业无人处理，请尽快恢复供水。",
            "",
        );
        let b = fingerprint(
            "春雨路3号小区停水两天",
            "反映江阳区春雨路3号小区已经连续两天停水了，物业没人管，希望尽快恢复供水。",
            "",
        );
        let c = fingerprint(
            "工地夜间施工噪音",
            "龙马潭区鱼塘镇工地每晚十一点后仍在施工，噪音扰民，请查处。",
            "龙马潭区鱼塘镇",
        );
        let close = similarity(&a.signature, &b.signature);
        let far = similarity(&a.signature, &c.signature);
        assert!(close >= 0.4, "{close}");
        assert!(far <= 0.15, "{far}");
        let ka = band_keys("yibin", "ecology", &a.signature);
        let kc = band_keys("yibin", "ecology", &c.signature);
        assert!(ka.iter().all(|k| !kc.contains(k)));
        // Another target or category files under other keys.
        assert_ne!(ka, band_keys("zigong", "ecology", &a.signature));
    }

    #[test]
    fn places_compare_on_their_bigrams() {
        let p = |s: &str| normalise(s);
        assert!(place_similarity(&p("江阳区春雨路3号"), &p("江阳区春雨路3号附近")) >= 0.7);
        assert!(place_similarity(&p("江阳区春雨路3号"), &p("纳溪区永宁路88号")) <= 0.1);
        assert_eq!(
            place_similarity(&p("江阳区春雨路3号"), &p("江阳区春雨路13号")),
            0.0
        );
        assert_eq!(place_similarity("", ""), 0.0);
        assert_eq!(place_similarity("江阳区", ""), 0.0);
        // The prepared form gives the same figures.
        let places = [
            "江阳区春雨路3号",
            "江阳区春雨路3号附近",
            "纳溪区永宁路88号",
            "江阳区春雨路13号",
            "江阳区",
            "",
        ];
        for a in places {
            for b in places {
                let (x, y) = (p(a), p(b));
                assert_eq!(
                    Place::of(&x).similarity(&Place::of(&y)),
                    place_similarity(&x, &y),
                    "{a} ~ {b}"
                );
            }
        }
    }
}
