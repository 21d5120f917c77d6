//! PostgreSQL's COPY text format, decoded incrementally: the stream arrives in chunks cut
//! anywhere (mid-row, mid-escape, mid-character), rows end at an unescaped newline, fields are
//! tab-separated, `\N` is NULL, and backslash escapes are decoded (`\\ \n \r \t \b \f \v`,
//! octal `\ooo`, hex `\xhh`, and `\c` for any other `c`). Materialize's `COPY (SUBSCRIBE …) TO
//! STDOUT` uses exactly this format.
//!
//! A raw newline or tab byte never occurs inside a UTF-8 multibyte sequence, so splitting on
//! bytes first and validating UTF-8 per field is exact whatever the chunking.

/// One decoded row; fields borrow from the decoder until the next row.
pub struct Fields<'a> {
    line: &'a str,
    scratch: &'a str,
    spans: &'a [Span],
}

#[derive(Debug, Clone, Copy)]
enum Span {
    Null,
    /// A field without escapes: a range of the line.
    Line(usize, usize),
    /// A field with escapes, decoded into the scratch buffer.
    Scratch(usize, usize),
}

impl<'a> Fields<'a> {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Field `i`: `Ok(None)` for NULL; an error if it is not valid UTF-8.
    pub fn get(&self, i: usize) -> Result<Option<&'a str>, CopyError> {
        match self.spans.get(i) {
            None => Err(CopyError::MissingField(i)),
            Some(Span::Null) => Ok(None),
            Some(&Span::Line(start, end)) => Ok(Some(&self.line[start..end])),
            Some(&Span::Scratch(start, end)) => Ok(Some(&self.scratch[start..end])),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("a COPY field is not valid UTF-8")]
    InvalidUtf8,
    #[error("a COPY row has no field {0}")]
    MissingField(usize),
    #[error("a COPY row is longer than {0} bytes")]
    TooLong(usize),
}

/// Rows longer than this are refused rather than buffered without bound.
const MAX_ROW_BYTES: usize = 256 * 1024 * 1024;

/// Splits a COPY text stream into rows.
#[derive(Default)]
pub struct CopyDecoder {
    /// The start of a row whose newline has not arrived yet.
    partial: Vec<u8>,
    spans: Vec<Span>,
    scratch: String,
    bytes: Vec<u8>,
}

impl CopyDecoder {
    pub fn new() -> CopyDecoder {
        CopyDecoder::default()
    }

    /// Whether a row is incomplete (the stream stopped mid-row).
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Feeds one chunk; calls `on_row` for every row it completes, in order. Stops at the
    /// first error `on_row` returns.
    pub fn feed<E: From<CopyError>>(
        &mut self,
        chunk: &[u8],
        mut on_row: impl FnMut(&Fields<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = chunk;
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', rest) {
                None => {
                    if self.partial.len() + rest.len() > MAX_ROW_BYTES {
                        return Err(CopyError::TooLong(MAX_ROW_BYTES).into());
                    }
                    self.partial.extend_from_slice(rest);
                    return Ok(());
                }
                Some(end) => {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&rest[..end]);
                    rest = &rest[end + 1..];
                    let result = self.row(&line, &mut on_row);
                    line.clear();
                    self.partial = line;
                    result?;
                }
            }
        }
        while let Some(end) = memchr::memchr(b'\n', rest) {
            self.row(&rest[..end], &mut on_row)?;
            rest = &rest[end + 1..];
        }
        if rest.len() > MAX_ROW_BYTES {
            return Err(CopyError::TooLong(MAX_ROW_BYTES).into());
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    fn row<E: From<CopyError>>(
        &mut self,
        line: &[u8],
        on_row: &mut impl FnMut(&Fields<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.spans.clear();
        self.scratch.clear();
        // Tabs and newlines are ASCII, so a valid line splits into valid fields: one check
        // per line. Escapes are ASCII too; what they decode to is checked again below.
        let line = std::str::from_utf8(line).map_err(|_| CopyError::InvalidUtf8)?;
        let mut start = 0;
        for field in line.split('\t') {
            let end = start + field.len();
            let span = if field == "\\N" {
                Span::Null
            } else if memchr::memchr(b'\\', field.as_bytes()).is_none() {
                Span::Line(start, end)
            } else {
                self.bytes.clear();
                unescape(field.as_bytes(), &mut self.bytes);
                let text = std::str::from_utf8(&self.bytes).map_err(|_| CopyError::InvalidUtf8)?;
                let at = self.scratch.len();
                self.scratch.push_str(text);
                Span::Scratch(at, self.scratch.len())
            };
            self.spans.push(span);
            start = end + 1;
        }
        on_row(&Fields {
            line,
            scratch: &self.scratch,
            spans: &self.spans,
        })
    }
}

/// Decodes COPY text escapes (PostgreSQL's `CopyReadAttributesText`).
fn unescape(field: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        match c {
            b'0'..=b'7' => {
                let mut value = u32::from(c - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d) if d.is_ascii_hexdigit() => {
                            value = value * 16 + (*d as char).to_digit(16).unwrap_or(0);
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            other => out.push(other),
        }
    }
}

/// Encodes fields as one COPY text row (the inverse of the decoder; for tests and tools).
pub fn encode_row(fields: &[Option<&str>], out: &mut Vec<u8>) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match field {
            None => out.extend_from_slice(b"\\N"),
            Some(text) => {
                for &b in text.as_bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        other => out.push(other),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decode_chunks(chunks: &[&[u8]]) -> Result<Vec<Vec<Option<String>>>, CopyError> {
        let mut decoder = CopyDecoder::new();
        let mut rows = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk, |fields: &Fields<'_>| {
                let row = (0..fields.len())
                    .map(|i| fields.get(i).map(|f| f.map(str::to_owned)))
                    .collect::<Result<Vec<_>, CopyError>>()?;
                rows.push(row);
                Ok::<(), CopyError>(())
            })?;
        }
        Ok(rows)
    }

    #[test]
    fn escapes_nulls_and_empty_strings() {
        let rows = decode_chunks(&[b"1\t\\N\t\ta\\tb\\nc\\\\d\\re\n"]).unwrap();
        assert_eq!(
            rows,
            vec![vec![
                Some("1".into()),
                None,
                Some(String::new()),
                Some("a\tb\nc\\d\re".into())
            ]]
        );
    }

    #[test]
    fn postgres_escapes_beyond_materialize() {
        let rows = decode_chunks(&[b"\\b\\f\\v\\101\\x42\\q\n"]).unwrap();
        assert_eq!(rows, vec![vec![Some("\u{8}\u{c}\u{b}ABq".into())]]);
    }

    #[test]
    fn a_multibyte_character_split_across_chunks() {
        let text = "x\t€ü\n".as_bytes();
        // Cut inside the three bytes of € and inside ü.
        let rows = decode_chunks(&[&text[..3], &text[3..5], &text[5..6], &text[6..]]).unwrap();
        assert_eq!(rows, vec![vec![Some("x".into()), Some("€ü".into())]]);
    }

    #[test]
    fn an_escape_split_across_chunks() {
        let rows = decode_chunks(&[b"a\\", b"tb\t\\", b"N\n"]).unwrap();
        assert_eq!(rows, vec![vec![Some("a\tb".into()), None]]);
    }

    #[test]
    fn invalid_utf8_is_an_error_not_a_panic() {
        assert_eq!(
            decode_chunks(&[b"\xff\xfe\n"]).unwrap_err(),
            CopyError::InvalidUtf8
        );
        assert_eq!(
            decode_chunks(&[b"\\377\n"]).unwrap_err(),
            CopyError::InvalidUtf8
        );
    }

    proptest! {
        /// Any rows, encoded and cut into chunks anywhere, decode to themselves.
        #[test]
        fn round_trip_whatever_the_chunking(
            rows in prop::collection::vec(
                prop::collection::vec(prop::option::of("\\PC*|[\\t\\n\\r\\\\]{0,3}|-?[0-9]{1,40}(\\.[0-9]{1,30})?"), 1..6),
                0..8,
            ),
            cuts in prop::collection::vec(0usize..10_000, 0..12),
        ) {
            let mut bytes = Vec::new();
            for row in &rows {
                let fields: Vec<Option<&str>> = row.iter().map(|f| f.as_deref()).collect();
                encode_row(&fields, &mut bytes);
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for p in points {
                chunks.push(&bytes[at..p]);
                at = p;
            }
            chunks.push(&bytes[at..]);
            let decoded = decode_chunks(&chunks).unwrap();
            prop_assert_eq!(decoded, rows);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
            let cut = cut.min(bytes.len());
            let _ = decode_chunks(&[&bytes[..cut], &bytes[cut..]]);
        }
    }
}
