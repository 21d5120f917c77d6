//! Column types: names the stand-in accepts in `CREATE TABLE`, their OIDs, the normal text form
//! values are kept in (PostgreSQL's output format), and binary parameters/results.

/// A column type. Values are kept as PostgreSQL text output; the type decides how a literal or
/// a binary parameter is normalised into that text, and how it is sent in binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Bool,
    Text,
    Timestamp,
    TimestampTz,
    Date,
    Time,
    Uuid,
    Json,
    Jsonb,
    TextArray,
    Int4Array,
}

impl SqlType {
    pub fn parse(name: &str) -> Option<SqlType> {
        let name = name.to_ascii_lowercase();
        let base = name.split('(').next().unwrap_or("").trim();
        Some(match base {
            "smallint" | "int2" => SqlType::Int2,
            "int" | "integer" | "int4" => SqlType::Int4,
            "bigint" | "int8" => SqlType::Int8,
            "real" | "float4" => SqlType::Float4,
            "double precision" | "float8" | "float" | "double" => SqlType::Float8,
            "numeric" | "decimal" => SqlType::Numeric,
            "bool" | "boolean" => SqlType::Bool,
            "text" | "varchar" | "character varying" | "char" | "character" | "string" => {
                SqlType::Text
            }
            "timestamp" | "timestamp without time zone" => SqlType::Timestamp,
            "timestamptz" | "timestamp with time zone" => SqlType::TimestampTz,
            "date" => SqlType::Date,
            "time" | "time without time zone" => SqlType::Time,
            "uuid" => SqlType::Uuid,
            "json" => SqlType::Json,
            "jsonb" => SqlType::Jsonb,
            "text[]" | "varchar[]" => SqlType::TextArray,
            "int[]" | "integer[]" | "int4[]" => SqlType::Int4Array,
            _ => return None,
        })
    }

    pub fn oid(self) -> u32 {
        match self {
            SqlType::Int2 => 21,
            SqlType::Int4 => 23,
            SqlType::Int8 => 20,
            SqlType::Float4 => 700,
            SqlType::Float8 => 701,
            SqlType::Numeric => 1700,
            SqlType::Bool => 16,
            SqlType::Text => 25,
            SqlType::Timestamp => 1114,
            SqlType::TimestampTz => 1184,
            SqlType::Date => 1082,
            SqlType::Time => 1083,
            SqlType::Uuid => 2950,
            SqlType::Json => 114,
            SqlType::Jsonb => 3802,
            SqlType::TextArray => 1009,
            SqlType::Int4Array => 1007,
        }
    }

    pub fn size(self) -> i16 {
        match self {
            SqlType::Int2 => 2,
            SqlType::Int4 | SqlType::Float4 | SqlType::Date => 4,
            SqlType::Int8
            | SqlType::Float8
            | SqlType::Timestamp
            | SqlType::TimestampTz
            | SqlType::Time => 8,
            SqlType::Bool => 1,
            SqlType::Uuid => 16,
            _ => -1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SqlType::Int2 => "smallint",
            SqlType::Int4 => "integer",
            SqlType::Int8 => "bigint",
            SqlType::Float4 => "real",
            SqlType::Float8 => "double precision",
            SqlType::Numeric => "numeric",
            SqlType::Bool => "boolean",
            SqlType::Text => "text",
            SqlType::Timestamp => "timestamp without time zone",
            SqlType::TimestampTz => "timestamp with time zone",
            SqlType::Date => "date",
            SqlType::Time => "time",
            SqlType::Uuid => "uuid",
            SqlType::Json => "json",
            SqlType::Jsonb => "jsonb",
            SqlType::TextArray => "text[]",
            SqlType::Int4Array => "integer[]",
        }
    }

    /// Normalises a text value of this type into the form it is kept and printed in.
    pub fn normalize(self, text: &str) -> Result<String, String> {
        let bad = || format!("invalid input syntax for type {}: \"{text}\"", self.name());
        let trimmed = text.trim();
        Ok(match self {
            SqlType::Int2 => trimmed.parse::<i16>().map_err(|_| bad())?.to_string(),
            SqlType::Int4 => trimmed.parse::<i32>().map_err(|_| bad())?.to_string(),
            SqlType::Int8 => trimmed.parse::<i64>().map_err(|_| bad())?.to_string(),
            SqlType::Float4 | SqlType::Float8 => {
                let v: f64 = match trimmed.to_ascii_lowercase().as_str() {
                    "nan" => f64::NAN,
                    "infinity" | "inf" | "+infinity" => f64::INFINITY,
                    "-infinity" | "-inf" => f64::NEG_INFINITY,
                    _ => trimmed.parse().map_err(|_| bad())?,
                };
                float_text(v)
            }
            SqlType::Numeric => {
                let body = trimmed.strip_prefix('+').unwrap_or(trimmed);
                let digits = body.strip_prefix('-').unwrap_or(body);
                let ok = !digits.is_empty()
                    && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
                    && digits.matches('.').count() <= 1
                    && digits != ".";
                if !ok && !digits.eq_ignore_ascii_case("nan") {
                    return Err(bad());
                }
                body.to_owned()
            }
            SqlType::Bool => match trimmed.to_ascii_lowercase().as_str() {
                "t" | "true" | "yes" | "on" | "1" | "y" => "t".to_owned(),
                "f" | "false" | "no" | "off" | "0" | "n" => "f".to_owned(),
                _ => return Err(bad()),
            },
            SqlType::Uuid => {
                let hex: String = trimmed.chars().filter(|c| *c != '-').collect();
                if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(bad());
                }
                let h = hex.to_ascii_lowercase();
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
            }
            _ => text.to_owned(),
        })
    }

    /// Decodes a binary parameter into text form.
    pub fn decode_binary(self, raw: &[u8]) -> Result<String, String> {
        let fixed = |n: usize| -> Result<&[u8], String> {
            if raw.len() == n {
                Ok(raw)
            } else {
                Err(format!("binary {} must be {n} bytes", self.name()))
            }
        };
        Ok(match self {
            SqlType::Int2 => {
                i16::from_be_bytes(fixed(2)?.try_into().unwrap_or_default()).to_string()
            }
            SqlType::Int4 => {
                i32::from_be_bytes(fixed(4)?.try_into().unwrap_or_default()).to_string()
            }
            SqlType::Int8 => {
                i64::from_be_bytes(fixed(8)?.try_into().unwrap_or_default()).to_string()
            }
            SqlType::Float4 => float_text(f64::from(f32::from_be_bytes(
                fixed(4)?.try_into().unwrap_or_default(),
            ))),
            SqlType::Float8 => {
                float_text(f64::from_be_bytes(fixed(8)?.try_into().unwrap_or_default()))
            }
            SqlType::Bool => if fixed(1)?[0] == 0 { "f" } else { "t" }.to_owned(),
            SqlType::Numeric => numeric_from_binary(raw)?,
            SqlType::Timestamp | SqlType::TimestampTz => {
                let micros = i64::from_be_bytes(fixed(8)?.try_into().unwrap_or_default());
                let text = timestamp_text(micros);
                if self == SqlType::TimestampTz {
                    format!("{text}+00")
                } else {
                    text
                }
            }
            SqlType::Date => {
                let days = i32::from_be_bytes(fixed(4)?.try_into().unwrap_or_default());
                date_text(i64::from(days))
            }
            SqlType::Time => {
                time_text(i64::from_be_bytes(fixed(8)?.try_into().unwrap_or_default()))
            }
            SqlType::Uuid => {
                let hex: String = fixed(16)?.iter().fold(String::new(), |mut hex, b| {
                    use std::fmt::Write as _;
                    let _ = write!(hex, "{b:02x}");
                    hex
                });
                self.normalize(&hex)?
            }
            SqlType::Jsonb => {
                let (version, body) = raw.split_first().ok_or("empty jsonb")?;
                if *version != 1 {
                    return Err(format!("unsupported jsonb version {version}"));
                }
                utf8(body)?
            }
            SqlType::Text | SqlType::Json => utf8(raw)?,
            SqlType::TextArray | SqlType::Int4Array => {
                return Err(format!(
                    "the stand-in takes {} parameters as text only",
                    self.name()
                ));
            }
        })
    }

    /// Encodes a text value as a binary result.
    pub fn to_binary(self, text: &str) -> Result<Vec<u8>, String> {
        let unsupported = || {
            format!(
                "the stand-in sends {} in text format only; read it with simple_query",
                self.name()
            )
        };
        let int = |t: &str| t.parse::<i64>().map_err(|e| e.to_string());
        Ok(match self {
            SqlType::Int2 => (int(text)? as i16).to_be_bytes().to_vec(),
            SqlType::Int4 => (int(text)? as i32).to_be_bytes().to_vec(),
            SqlType::Int8 => int(text)?.to_be_bytes().to_vec(),
            SqlType::Float4 => (text.parse::<f32>().map_err(|e| e.to_string())?)
                .to_be_bytes()
                .to_vec(),
            SqlType::Float8 => (text.parse::<f64>().map_err(|e| e.to_string())?)
                .to_be_bytes()
                .to_vec(),
            SqlType::Bool => vec![u8::from(text == "t")],
            SqlType::Text | SqlType::Json => text.as_bytes().to_vec(),
            SqlType::Jsonb => {
                let mut v = vec![1];
                v.extend_from_slice(text.as_bytes());
                v
            }
            _ => return Err(unsupported()),
        })
    }
}

fn utf8(raw: &[u8]) -> Result<String, String> {
    String::from_utf8(raw.to_vec()).map_err(|_| "invalid UTF-8".to_owned())
}

/// A float as PostgreSQL prints it (shortest round-trip digits).
pub fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{v}")
    }
}

/// PostgreSQL's binary NUMERIC: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric_from_binary(raw: &[u8]) -> Result<String, String> {
    use std::fmt::Write as _;
    if raw.len() < 8 {
        return Err("short binary numeric".into());
    }
    let word = |i: usize| i16::from_be_bytes([raw[i], raw[i + 1]]);
    let ndigits = word(0) as usize;
    let weight = i32::from(word(2));
    let sign = word(4) as u16;
    let dscale = word(6) as usize;
    if raw.len() != 8 + 2 * ndigits {
        return Err("bad binary numeric length".into());
    }
    if sign == 0xC000 {
        return Ok("NaN".into());
    }
    let digits: Vec<i32> = (0..ndigits).map(|i| i32::from(word(8 + 2 * i))).collect();
    let mut int_part = String::new();
    for w in 0..=weight.max(-1) {
        let d = digits.get(w as usize).copied().unwrap_or(0);
        if int_part.is_empty() {
            int_part = d.to_string();
        } else {
            let _ = write!(int_part, "{d:04}");
        }
    }
    if int_part.is_empty() {
        int_part = "0".into();
    }
    let mut frac = String::new();
    let mut index = weight + 1;
    while frac.len() < dscale {
        let d = if index >= 0 {
            digits.get(index as usize).copied().unwrap_or(0)
        } else {
            0
        };
        let _ = write!(frac, "{d:04}");
        index += 1;
    }
    frac.truncate(dscale);
    let sign = if sign == 0x4000 { "-" } else { "" };
    Ok(if frac.is_empty() {
        format!("{sign}{int_part}")
    } else {
        format!("{sign}{int_part}.{frac}")
    })
}

/// Days since 2000-01-01 → `YYYY-MM-DD` (proleptic Gregorian).
fn date_text(days_since_2000: i64) -> String {
    // Howard Hinnant's civil-from-days, shifted to the 1970 epoch.
    let z = days_since_2000 + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn time_text(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if frac == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        let f = format!("{frac:06}");
        format!("{h:02}:{m:02}:{s:02}.{}", f.trim_end_matches('0'))
    }
}

fn timestamp_text(micros_since_2000: i64) -> String {
    let day = 86_400_000_000;
    let days = micros_since_2000.div_euclid(day);
    let rest = micros_since_2000.rem_euclid(day);
    format!("{} {}", date_text(days), time_text(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_parameters_decode_to_postgres_text() {
        assert_eq!(
            SqlType::Int4.decode_binary(&(-7i32).to_be_bytes()).unwrap(),
            "-7"
        );
        assert_eq!(SqlType::Bool.decode_binary(&[1]).unwrap(), "t");
        // 2023-12-25 13:45:30.5 is 756_827_130_500_000 µs after 2000-01-01.
        assert_eq!(
            SqlType::Timestamp
                .decode_binary(&756_827_130_500_000i64.to_be_bytes())
                .unwrap(),
            "2023-12-25 13:45:30.5"
        );
        assert_eq!(
            SqlType::Date.decode_binary(&(-1i32).to_be_bytes()).unwrap(),
            "1999-12-31"
        );
        // 123.4500: ndigits 2, weight 0, sign +, dscale 4, digits [123, 4500].
        let numeric = [0, 2, 0, 0, 0, 0, 0, 4, 0, 123, 0x11, 0x94];
        assert_eq!(
            SqlType::Numeric.decode_binary(&numeric).unwrap(),
            "123.4500"
        );
        // -0.05: ndigits 1, weight -1, sign -, dscale 2, digits [500].
        let small = [0, 1, 0xff, 0xff, 0x40, 0, 0, 2, 0x01, 0xf4];
        assert_eq!(SqlType::Numeric.decode_binary(&small).unwrap(), "-0.05");
    }

    #[test]
    fn literals_normalise_like_postgres_prints_them() {
        assert_eq!(SqlType::Bool.normalize("true").unwrap(), "t");
        assert_eq!(SqlType::Int8.normalize(" 42 ").unwrap(), "42");
        assert!(SqlType::Int2.normalize("40000").is_err());
        assert_eq!(
            SqlType::Uuid
                .normalize("A0EEBC999C0B4EF8BB6D6BB9BD380A11")
                .unwrap(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(SqlType::Float8.normalize("1e3").unwrap(), "1000");
    }
}
