//! Citizens' personal data (name, phone): never logged, masked wherever the
//! reader need not see it.

use std::fmt;

use crate::pb::{Citizen, Ticket};

/// `13812345678` → `138****5678`; short numbers keep only their last digit.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() >= 7 {
        let head: String = chars[..3].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}****{tail}")
    } else if let Some(last) = chars.last() {
        format!("{}{last}", "*".repeat(chars.len() - 1))
    } else {
        String::new()
    }
}

/// `张三丰` → `张**`: the family name stays, the rest is starred.
pub fn mask_name(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => format!("{first}{}", "*".repeat(chars.count())),
        None => String::new(),
    }
}

impl Citizen {
    pub fn masked(&self) -> Citizen {
        Citizen {
            name: mask_name(&self.name),
            phone: mask_phone(&self.phone),
        }
    }
}

/// A ticket with its citizen's contact masked.
pub fn masked_ticket(mut ticket: Ticket) -> Ticket {
    if let Some(c) = ticket.citizen.as_mut() {
        *c = c.masked();
    }
    ticket
}

// Generated without Debug (see build.rs) so that `{:?}` of any message can
// never print a citizen's name or phone.
impl fmt::Debug for Citizen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Citizen")
            .field("name", &mask_name(&self.name))
            .field("phone", &mask_phone(&self.phone))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_personal_data() {
        let t = Ticket {
            citizen: Some(Citizen {
                name: "张三丰".into(),
                phone: "13812345678".into(),
            }),
            ..Default::default()
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("13812345678"), "{shown}");
        assert!(!shown.contains("三丰"), "{shown}");
        assert!(shown.contains("138****5678"));
        assert_eq!(mask_phone("123"), "**3");
        assert_eq!(mask_name(""), "");
    }
}
