//! Exact comparison of decimal text, for `Numeric` columns.
//!
//! Row values are Postgres `numeric` output (`-00012.500`, `NaN`, `Infinity`, any number of
//! digits); they are read in place as a [`DecRef`] borrowing the text, so comparing a row never
//! allocates and never rounds through `f64`. Filter operands are parsed once into an owned
//! [`Decimal`]. Order is Postgres's: `-Infinity` < every number < `Infinity` < `NaN`, and
//! `NaN` equals `NaN`.

use std::cmp::Ordering;
use std::fmt::{self, Write as _};

/// Exponents are clamped to this magnitude so that adding digit counts can never overflow.
const EXP_LIMIT: i64 = 1 << 48;

/// What kind of value a decimal is; finite values carry their digits separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    NegInfinity,
    Finite,
    Infinity,
    NaN,
}

/// A decimal read in place from text: the value is `±0.D × 10^exp`, where `D` is `head`
/// followed by `tail` with no leading and no trailing zeros (both empty for zero).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecRef<'a> {
    class: Class,
    negative: bool,
    exp: i64,
    head: &'a [u8],
    tail: &'a [u8],
}

/// An owned, normalized decimal (a filter operand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    class: Class,
    negative: bool,
    exp: i64,
    digits: Box<[u8]>,
}

impl<'a> DecRef<'a> {
    /// Reads decimal text: an optional sign, digits with an optional point, an optional
    /// exponent (`e-3`), or `NaN` / `Infinity` / `inf` (case-insensitive). Surrounding ASCII
    /// whitespace is ignored, as Postgres ignores it. `None` if the text is not a number.
    pub(crate) fn parse(text: &'a str) -> Option<DecRef<'a>> {
        let bytes = text.as_bytes().trim_ascii();
        let (negative, rest) = match bytes.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, bytes),
        };
        let special = |class| {
            Some(DecRef {
                class,
                negative: false,
                exp: 0,
                head: &[],
                tail: &[],
            })
        };
        if rest.eq_ignore_ascii_case(b"nan") {
            // Postgres does not accept a signed NaN.
            return if rest.len() == bytes.len() {
                special(Class::NaN)
            } else {
                None
            };
        }
        if rest.eq_ignore_ascii_case(b"infinity") || rest.eq_ignore_ascii_case(b"inf") {
            return special(if negative {
                Class::NegInfinity
            } else {
                Class::Infinity
            });
        }

        let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (int, rest) = rest.split_at(int_len);
        let (frac, rest) = match rest.split_first() {
            Some((b'.', after)) => {
                let frac_len = after.iter().take_while(|b| b.is_ascii_digit()).count();
                after.split_at(frac_len)
            }
            _ => (&rest[..0], rest),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let exponent = match rest.split_first() {
            None => 0,
            Some((b'e' | b'E', after)) => parse_exponent(after)?,
            Some(_) => return None,
        };

        let int_zeros = int.iter().take_while(|&&b| b == b'0').count();
        let (mut head, mut tail, leading_zeros) = if int_zeros < int.len() {
            (&int[int_zeros..], frac, int_zeros)
        } else {
            let frac_zeros = frac.iter().take_while(|&&b| b == b'0').count();
            (&int[..0], &frac[frac_zeros..], int.len() + frac_zeros)
        };
        tail = trim_trailing_zeros(tail);
        if tail.is_empty() {
            head = trim_trailing_zeros(head);
        }
        if head.is_empty() && tail.is_empty() {
            return Some(DecRef {
                class: Class::Finite,
                negative: false,
                exp: 0,
                head,
                tail,
            });
        }
        // Digit counts are bounded by the text's length, far below EXP_LIMIT.
        let exp = (int.len() as i64 - leading_zeros as i64).saturating_add(exponent);
        Some(DecRef {
            class: Class::Finite,
            negative,
            exp,
            head,
            tail,
        })
    }

    fn digits(&self) -> impl Iterator<Item = u8> + '_ {
        self.head.iter().chain(self.tail).copied()
    }

    fn is_zero(&self) -> bool {
        self.class == Class::Finite && self.head.is_empty() && self.tail.is_empty()
    }

    /// Position in Postgres's order of kinds: -inf, negative, zero, positive, inf, NaN.
    fn rank(&self) -> u8 {
        match self.class {
            Class::NegInfinity => 0,
            Class::Finite if self.is_zero() => 2,
            Class::Finite if self.negative => 1,
            Class::Finite => 3,
            Class::Infinity => 4,
            Class::NaN => 5,
        }
    }

    /// Compares two decimals exactly, in Postgres's order.
    pub(crate) fn cmp(&self, other: &DecRef<'_>) -> Ordering {
        let by_rank = self.rank().cmp(&other.rank());
        if by_rank != Ordering::Equal {
            return by_rank;
        }
        let magnitude = || {
            self.exp
                .cmp(&other.exp)
                .then_with(|| self.digits().cmp(other.digits()))
        };
        match self.rank() {
            1 => magnitude().reverse(),
            3 => magnitude(),
            _ => Ordering::Equal,
        }
    }
}

impl Decimal {
    pub(crate) fn parse(text: &str) -> Option<Decimal> {
        let view = DecRef::parse(text)?;
        Some(Decimal {
            class: view.class,
            negative: view.negative,
            exp: view.exp,
            digits: view.digits().collect(),
        })
    }

    pub(crate) fn as_ref(&self) -> DecRef<'_> {
        DecRef {
            class: self.class,
            negative: self.negative,
            exp: self.exp,
            head: &self.digits,
            tail: &[],
        }
    }
}

/// The normalized text of the value: equal values print identically. Plain notation for
/// ordinary magnitudes, `d.ddde±N` for extreme ones (so `1e999999` stays short).
impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.class {
            Class::NaN => return f.write_str("NaN"),
            Class::Infinity => return f.write_str("Infinity"),
            Class::NegInfinity => return f.write_str("-Infinity"),
            Class::Finite => {}
        }
        if self.digits.is_empty() {
            return f.write_str("0");
        }
        if self.negative {
            f.write_char('-')?;
        }
        let digits = |f: &mut fmt::Formatter<'_>, d: &[u8]| {
            d.iter().try_for_each(|&b| f.write_char(char::from(b)))
        };
        let len = self.digits.len() as i64;
        if (-20..=0).contains(&self.exp) {
            f.write_str("0.")?;
            for _ in 0..-self.exp {
                f.write_char('0')?;
            }
            digits(f, &self.digits)
        } else if (1..len).contains(&self.exp) {
            let (int, frac) = self.digits.split_at(self.exp as usize);
            digits(f, int)?;
            f.write_char('.')?;
            digits(f, frac)
        } else if (len..=len + 20).contains(&self.exp) {
            digits(f, &self.digits)?;
            for _ in len..self.exp {
                f.write_char('0')?;
            }
            Ok(())
        } else {
            let (first, rest) = self.digits.split_at(1);
            digits(f, first)?;
            if !rest.is_empty() {
                f.write_char('.')?;
                digits(f, rest)?;
            }
            write!(f, "e{}", self.exp - 1)
        }
    }
}

fn trim_trailing_zeros(digits: &[u8]) -> &[u8] {
    let keep = digits.len() - digits.iter().rev().take_while(|&&b| b == b'0').count();
    &digits[..keep]
}

/// Reads `[+-]digits`, clamping the magnitude to [`EXP_LIMIT`].
fn parse_exponent(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let magnitude = digits.iter().fold(0_i64, |acc, &d| {
        (acc * 10 + i64::from(d - b'0')).min(EXP_LIMIT)
    });
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(a: &str, b: &str) -> Ordering {
        DecRef::parse(a)
            .expect("left parses")
            .cmp(&DecRef::parse(b).expect("right parses"))
    }

    fn normal(text: &str) -> String {
        Decimal::parse(text).expect("parses").to_string()
    }

    #[test]
    fn compares_exactly_beyond_f64() {
        assert_eq!(
            cmp(
                "12345678901234567890.0000000001",
                "12345678901234567890.0000000002"
            ),
            Ordering::Less
        );
        assert_eq!(
            cmp(
                "-12345678901234567890.0000000001",
                "-12345678901234567890.0000000002"
            ),
            Ordering::Greater
        );
        assert_eq!(
            cmp("9007199254740993", "9007199254740992"),
            Ordering::Greater
        );
    }

    #[test]
    fn leading_and_trailing_zeros_and_signs_do_not_matter() {
        assert_eq!(cmp("-00012.500", "-12.5"), Ordering::Equal);
        assert_eq!(cmp("0.000", "-0"), Ordering::Equal);
        assert_eq!(cmp("+1", "1.0"), Ordering::Equal);
        assert_eq!(cmp(".5", "0.50"), Ordering::Equal);
        assert_eq!(cmp("5.", "5"), Ordering::Equal);
        assert_eq!(cmp("1200", "12e2"), Ordering::Equal);
        assert_eq!(cmp("0.00123", "1.23E-3"), Ordering::Equal);
        assert_eq!(cmp(" 7 ", "7"), Ordering::Equal);
    }

    #[test]
    fn orders_by_magnitude_then_digits() {
        let ascending = [
            "-Infinity",
            "-1000",
            "-999.999",
            "-1",
            "-0.001",
            "0",
            "0.0001",
            "0.001",
            "0.0011",
            "0.1",
            "0.9",
            "1",
            "1.00000000000000000001",
            "9.99",
            "10",
            "99",
            "100",
            "1e300",
            "Infinity",
            "NaN",
        ];
        for (i, a) in ascending.iter().enumerate() {
            for (j, b) in ascending.iter().enumerate() {
                assert_eq!(cmp(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn special_values_follow_postgres() {
        assert_eq!(cmp("NaN", "nan"), Ordering::Equal);
        assert_eq!(cmp("inf", "Infinity"), Ordering::Equal);
        assert_eq!(cmp("-inf", "-Infinity"), Ordering::Equal);
        assert!(DecRef::parse("-NaN").is_none());
    }

    #[test]
    fn rejects_what_is_not_a_number() {
        for text in [
            "", "-", ".", "e5", "1e", "1e+", "1.2.3", "12a", "0x10", "--1", "1 2",
        ] {
            assert!(DecRef::parse(text).is_none(), "{text:?} should not parse");
        }
    }

    #[test]
    fn huge_exponents_are_clamped_not_overflowed() {
        assert_eq!(
            cmp("1e99999999999999999999", "1e99999999999999999998"),
            Ordering::Equal
        );
        assert_eq!(cmp("1e99999999999999999999", "Infinity"), Ordering::Less);
        assert_eq!(cmp("1e-99999999999999999999", "0"), Ordering::Greater);
    }

    #[test]
    fn normal_form_is_unique_and_short() {
        assert_eq!(normal("-00012.500"), "-12.5");
        assert_eq!(normal("-0.0"), "0");
        assert_eq!(normal("1200"), "1200");
        assert_eq!(normal("0.00123"), "0.00123");
        assert_eq!(normal("1.5e2"), "150");
        assert_eq!(normal("1e999999"), "1e999999");
        assert_eq!(normal("-1.25e-30"), "-1.25e-30");
        assert_eq!(normal("nan"), "NaN");
        assert_eq!(normal("-inf"), "-Infinity");
    }
}
