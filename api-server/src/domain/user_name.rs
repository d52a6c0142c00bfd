use std::fmt;

/// A display name: 1 to 100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("must not be empty or only whitespace");
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err("must be at most 100 characters");
        }
        // Control characters (NUL above all: Postgres text cannot store it) are never names.
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::UserName;

    #[test]
    fn a_plain_name_is_accepted() {
        assert_eq!(
            UserName::parse("Ada Lovelace").unwrap().as_str(),
            "Ada Lovelace"
        );
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(UserName::parse("  Ada \t").unwrap().as_str(), "Ada");
    }

    #[test]
    fn an_empty_name_is_rejected() {
        assert!(UserName::parse("").is_err());
    }

    #[test]
    fn a_whitespace_only_name_is_rejected() {
        assert!(UserName::parse(" \t\n ").is_err());
    }

    #[test]
    fn a_100_character_name_is_accepted() {
        assert!(UserName::parse(&"é".repeat(100)).is_ok());
    }

    #[test]
    fn a_101_character_name_is_rejected() {
        assert!(UserName::parse(&"a".repeat(101)).is_err());
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // 100 four-byte characters are 400 bytes but still 100 characters.
        assert!(UserName::parse(&"🦀".repeat(100)).is_ok());
    }

    #[test]
    fn a_nul_character_is_rejected() {
        assert!(UserName::parse("Ada\0").is_err());
    }

    #[test]
    fn other_control_characters_are_rejected() {
        assert!(UserName::parse("Ada\u{7}Lovelace").is_err());
    }

    #[test]
    fn sql_looking_text_is_just_a_name() {
        let raw = "Robert'); DROP TABLE users;--";
        assert_eq!(UserName::parse(raw).unwrap().as_str(), raw);
    }
}
