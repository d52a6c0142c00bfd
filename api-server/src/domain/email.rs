use std::fmt;

/// An email address, checked with the practical subset of RFC 5321/5322 that mail systems
/// accept: `local@domain`, at most 254 characters, a dot-atom local part of at most 64
/// characters, and a domain of at least two labels. Unicode letters are allowed
/// (RFC 6531). Case is kept as given; uniqueness ignores it (see the migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

const LOCAL_SPECIALS: &str = "!#$%&'*+/=?^_`{|}~-";

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let email = raw.trim();
        if email.is_empty() {
            return Err("must not be empty");
        }
        if email.chars().count() > Self::MAX_CHARS {
            return Err("must be at most 254 characters");
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return Err("must contain an @");
        };
        if !valid_local_part(local) {
            return Err("has an invalid part before the @");
        }
        if !valid_domain(domain) {
            return Err("has an invalid domain");
        }
        Ok(Self(email.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_local_part(local: &str) -> bool {
    !local.is_empty()
        && local.chars().count() <= 64
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .chars()
                    .all(|c| c.is_alphanumeric() || LOCAL_SPECIALS.contains(c))
        })
}

fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            let chars = label.chars().count();
            (1..=63).contains(&chars)
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn a_plain_address_is_accepted() {
        assert_eq!(
            Email::parse("ada@example.com").unwrap().as_str(),
            "ada@example.com"
        );
    }

    #[test]
    fn case_is_kept() {
        assert_eq!(
            Email::parse("Ada@Example.COM").unwrap().as_str(),
            "Ada@Example.COM"
        );
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(
            Email::parse(" ada@example.com ").unwrap().as_str(),
            "ada@example.com"
        );
    }

    #[test]
    fn plus_tags_and_apostrophes_are_accepted() {
        assert!(Email::parse("o'brien+news@mail.example.org").is_ok());
    }

    #[test]
    fn unicode_addresses_are_accepted() {
        assert!(Email::parse("josé@exämple.de").is_ok());
    }

    #[test]
    fn an_empty_address_is_rejected() {
        assert!(Email::parse("").is_err());
    }

    #[test]
    fn an_address_without_at_is_rejected() {
        assert!(Email::parse("ada.example.com").is_err());
    }

    #[test]
    fn an_address_without_local_part_is_rejected() {
        assert!(Email::parse("@example.com").is_err());
    }

    #[test]
    fn an_address_with_two_ats_is_rejected() {
        assert!(Email::parse("a@b@example.com").is_err());
    }

    #[test]
    fn a_single_label_domain_is_rejected() {
        assert!(Email::parse("ada@localhost").is_err());
    }

    #[test]
    fn consecutive_dots_are_rejected() {
        assert!(Email::parse("ada..l@example.com").is_err());
        assert!(Email::parse("ada@example..com").is_err());
    }

    #[test]
    fn whitespace_inside_is_rejected() {
        assert!(Email::parse("ada lovelace@example.com").is_err());
    }

    #[test]
    fn a_label_starting_with_a_hyphen_is_rejected() {
        assert!(Email::parse("ada@-example.com").is_err());
    }

    #[test]
    fn sql_looking_text_is_rejected() {
        assert!(Email::parse("x'; DROP TABLE users;--@example.com").is_err());
    }

    #[test]
    fn a_nul_character_is_rejected() {
        assert!(Email::parse("ada\0@example.com").is_err());
    }

    #[test]
    fn a_local_part_over_64_characters_is_rejected() {
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn an_address_of_254_characters_is_accepted() {
        let domain = format!(
            "{}.{}.{}.com",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(57)
        );
        let email = format!("{}@{domain}", "a".repeat(64));
        assert_eq!(email.len(), 254);
        assert!(Email::parse(&email).is_ok());
    }

    #[test]
    fn an_address_over_254_characters_is_rejected() {
        let domain = format!(
            "{}.{}.{}.com",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(58)
        );
        let email = format!("{}@{domain}", "a".repeat(64));
        assert_eq!(email.len(), 255);
        assert!(Email::parse(&email).is_err());
    }
}
