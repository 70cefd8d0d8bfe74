//! Incremental parsers for bulk bodies: CSV records and the elements of a top-level JSON
//! array, fed chunk by chunk as the body streams in, so no body is ever held whole.

use super::ApiError;
use futures_util::StreamExt;

/// Reads a request body chunk by chunk, enforcing `max_bytes`.
pub struct BodyChunks {
    payload: actix_web::web::Payload,
    seen: u64,
    max_bytes: u64,
}

impl BodyChunks {
    pub fn new(payload: actix_web::web::Payload, max_bytes: u64) -> Self {
        Self {
            payload,
            seen: 0,
            max_bytes,
        }
    }

    pub async fn next(&mut self) -> Result<Option<bytes::Bytes>, ApiError> {
        match self.payload.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(ApiError::invalid(
                "body",
                format!("reading the body failed: {e}"),
            )),
            Some(Ok(chunk)) => {
                self.seen += chunk.len() as u64;
                if self.seen > self.max_bytes {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "the body exceeds {} bytes",
                        self.max_bytes
                    )));
                }
                Ok(Some(chunk))
            }
        }
    }
}

/// A CSV reader fed by chunks; yields records as vectors of fields, each with the problem
/// its quoting has, if any. csv_core is lenient (an unterminated quote ends at the end of
/// input, text after a closing quote is glued on); an import must not guess, so a
/// [`QuoteCheck`] walks the same bytes and says what csv_core let through.
pub struct CsvRecords {
    reader: csv_core::Reader,
    out: Vec<u8>,
    out_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    quotes: QuoteCheck,
}

impl Default for CsvRecords {
    fn default() -> Self {
        Self {
            reader: csv_core::Reader::new(),
            out: vec![0; 4096],
            out_len: 0,
            ends: vec![0; 16],
            ends_len: 0,
            quotes: QuoteCheck::default(),
        }
    }
}

/// What is wrong with a record's quoting.
pub type QuoteProblem = Option<&'static str>;

/// RFC 4180 quoting, byte by byte: where csv_core accepts sloppy quoting, this notices.
#[derive(Default)]
struct QuoteCheck {
    state: QuoteState,
    problem: QuoteProblem,
}

#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum QuoteState {
    #[default]
    FieldStart,
    Unquoted,
    Quoted,
    /// A `"` inside a quoted field: an escaped quote if another follows, else the end.
    QuoteInQuoted,
}

impl QuoteCheck {
    fn walk(&mut self, bytes: &[u8]) {
        use QuoteState::*;
        for &b in bytes {
            self.state = match (self.state, b) {
                (FieldStart, b'"') => Quoted,
                (FieldStart | Unquoted | QuoteInQuoted, b',' | b'\n' | b'\r') => FieldStart,
                (FieldStart | Unquoted, _) => Unquoted,
                (Quoted, b'"') => QuoteInQuoted,
                (Quoted, _) => Quoted,
                (QuoteInQuoted, b'"') => Quoted,
                (QuoteInQuoted, _) => {
                    self.problem
                        .get_or_insert("text follows a closing quote; quote the whole field");
                    Unquoted
                }
            };
        }
    }

    /// The problem of the record just completed; `at_end` when the input has ended.
    fn take(&mut self, at_end: bool) -> QuoteProblem {
        if at_end && self.state == QuoteState::Quoted {
            self.problem
                .get_or_insert("a quoted field is not closed before the end of the input");
        }
        self.problem.take()
    }
}

impl CsvRecords {
    /// Feeds `input` (empty means end of input) and calls `each` for every complete record.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        each: &mut dyn FnMut(Vec<String>, QuoteProblem) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let at_end = input.is_empty();
        loop {
            let (res, nin, nout, nend) = self.reader.read_record(
                input,
                &mut self.out[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            self.quotes.walk(&input[..nin]);
            input = &input[nin..];
            self.out_len += nout;
            self.ends_len += nend;
            match res {
                csv_core::ReadRecordResult::InputEmpty => {
                    if !at_end {
                        return Ok(());
                    }
                }
                csv_core::ReadRecordResult::OutputFull => {
                    if self.out.len() >= 1 << 20 {
                        return Err(ApiError::invalid(
                            "body",
                            "a CSV record is longer than 1 MiB",
                        ));
                    }
                    let n = self.out.len() * 2;
                    self.out.resize(n, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    if self.ends.len() >= 1024 {
                        return Err(ApiError::invalid(
                            "body",
                            "a CSV record has more than 1024 fields",
                        ));
                    }
                    let n = self.ends.len() * 2;
                    self.ends.resize(n, 0);
                }
                csv_core::ReadRecordResult::Record => {
                    let mut fields = Vec::with_capacity(self.ends_len);
                    let mut start = 0;
                    for &end in &self.ends[..self.ends_len] {
                        let f = std::str::from_utf8(&self.out[start..end])
                            .map_err(|_| ApiError::invalid("body", "the CSV is not UTF-8"))?;
                        fields.push(f.to_owned());
                        start = end;
                    }
                    self.out_len = 0;
                    self.ends_len = 0;
                    let problem = self.quotes.take(at_end && input.is_empty());
                    each(fields, problem)?;
                }
                csv_core::ReadRecordResult::End => return Ok(()),
            }
        }
    }
}

/// The longest element of a JSON import; a device row is a few hundred bytes.
pub const MAX_JSON_ELEMENT: usize = 64 * 1024;

/// Splits a top-level JSON array into its elements' bytes, fed by chunks.
#[derive(Default)]
pub struct JsonArrayElements {
    state: JsonState,
    depth: u32,
    in_string: bool,
    escaped: bool,
    current: Vec<u8>,
}

#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum JsonState {
    #[default]
    BeforeArray,
    InArray,
    Done,
}

impl JsonArrayElements {
    pub fn feed(
        &mut self,
        input: &[u8],
        each: &mut dyn FnMut(&[u8]) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        // Skip a UTF-8 byte order mark at the very start.
        let input = if self.state == JsonState::BeforeArray && input.starts_with(b"\xEF\xBB\xBF") {
            &input[3..]
        } else {
            input
        };
        for &b in input {
            match self.state {
                JsonState::BeforeArray => match b {
                    b'[' => self.state = JsonState::InArray,
                    b' ' | b'\n' | b'\r' | b'\t' => {}
                    _ => {
                        return Err(ApiError::invalid(
                            "body",
                            "a JSON import must be an array of objects",
                        ))
                    }
                },
                JsonState::Done => {
                    if !b.is_ascii_whitespace() {
                        return Err(ApiError::invalid(
                            "body",
                            "unexpected data after the JSON array",
                        ));
                    }
                }
                JsonState::InArray => {
                    // Every byte counts toward the limit, inside strings and brackets too.
                    if self.current.len() >= MAX_JSON_ELEMENT {
                        return Err(ApiError::invalid(
                            "body",
                            format!(
                                "a JSON element is longer than {} KiB",
                                MAX_JSON_ELEMENT / 1024
                            ),
                        ));
                    }
                    if self.in_string {
                        self.current.push(b);
                        if self.escaped {
                            self.escaped = false;
                        } else if b == b'\\' {
                            self.escaped = true;
                        } else if b == b'"' {
                            self.in_string = false;
                        }
                        continue;
                    }
                    match b {
                        b'"' => {
                            self.in_string = true;
                            self.current.push(b);
                        }
                        b'{' | b'[' => {
                            self.depth += 1;
                            self.current.push(b);
                        }
                        b'}' | b']' if self.depth > 0 => {
                            self.depth -= 1;
                            self.current.push(b);
                        }
                        b']' => {
                            self.emit(each)?;
                            self.state = JsonState::Done;
                        }
                        b',' if self.depth == 0 => {
                            if self.current.iter().all(u8::is_ascii_whitespace) {
                                return Err(ApiError::invalid(
                                    "body",
                                    "empty element in the JSON array",
                                ));
                            }
                            self.emit(each)?;
                        }
                        _ => self.current.push(b),
                    }
                }
            }
        }
        Ok(())
    }

    fn emit(
        &mut self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let elem = std::mem::take(&mut self.current);
        if elem.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        each(&elem)
    }

    /// Checks the array was closed.
    pub fn finish(&self) -> Result<(), ApiError> {
        match self.state {
            JsonState::Done => Ok(()),
            _ => Err(ApiError::invalid("body", "the JSON array is not closed")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::items_after_test_module)]
mod tests {
    use super::*;

    fn csv_all(chunks: &[&[u8]]) -> Vec<Vec<String>> {
        let mut r = CsvRecords::default();
        let mut out = vec![];
        for c in chunks {
            r.feed(c, &mut |f, p| {
                assert_eq!(p, None);
                out.push(f);
                Ok(())
            })
            .unwrap();
        }
        r.feed(b"", &mut |f, p| {
            assert_eq!(p, None);
            out.push(f);
            Ok(())
        })
        .unwrap();
        out
    }

    fn csv_problems(text: &[u8]) -> Vec<(Vec<String>, QuoteProblem)> {
        let mut r = CsvRecords::default();
        let mut out = vec![];
        for input in [text, b""] {
            r.feed(input, &mut |f, p| {
                out.push((f, p));
                Ok(())
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn csv_unterminated_quote_is_a_problem_of_its_record() {
        let out = csv_problems(b"name\ndev1\n\"dev2");
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].1, None);
        assert_eq!(out[2].0, vec!["dev2"]);
        assert!(out[2].1.unwrap().contains("not closed"), "{:?}", out[2].1);
    }

    #[test]
    fn csv_text_after_a_closing_quote_is_a_problem() {
        let out = csv_problems(b"name\n\"dev\"1\nok\n\"a\"\"b\"\n");
        assert!(out[1].1.unwrap().contains("closing quote"));
        assert_eq!(out[2].1, None);
        assert_eq!(out[3], (vec!["a\"b".to_owned()], None));
    }

    #[test]
    fn json_element_limit_counts_bytes_inside_strings_and_brackets() {
        for huge in [
            format!("[{{\"name\":\"{}\"}}]", "x".repeat(MAX_JSON_ELEMENT)),
            format!("[{{\"name\":[{}1]}}]", "[".repeat(MAX_JSON_ELEMENT)),
        ] {
            let mut p = JsonArrayElements::default();
            let mut seen = 0;
            let err = p
                .feed(huge.as_bytes(), &mut |_| {
                    seen += 1;
                    Ok(())
                })
                .expect_err("a huge element is refused");
            assert_eq!(seen, 0);
            assert!(matches!(err, ApiError::Invalid { .. }));
        }
    }

    #[test]
    fn csv_records_survive_any_chunking() {
        let text = b"name,secret\r\n\"dev,1\",abc\ndev2,\"x\"\"y\"\ndev3,z";
        let whole = csv_all(&[text]);
        assert_eq!(
            whole,
            vec![
                vec!["name", "secret"],
                vec!["dev,1", "abc"],
                vec!["dev2", "x\"y"],
                vec!["dev3", "z"]
            ]
        );
        for split in 1..text.len() {
            assert_eq!(
                csv_all(&[&text[..split], &text[split..]]),
                whole,
                "split at {split}"
            );
        }
    }

    #[test]
    fn json_array_elements_survive_any_chunking() {
        let text = br#" [ {"name":"a]\"}","x":[1,{"y":2}]}, {"name":"b"} ] "#;
        let collect = |chunks: &[&[u8]]| {
            let mut p = JsonArrayElements::default();
            let mut out: Vec<String> = vec![];
            for c in chunks {
                p.feed(c, &mut |e| {
                    out.push(String::from_utf8(e.to_vec()).unwrap().trim().to_owned());
                    Ok(())
                })
                .unwrap();
            }
            p.finish().unwrap();
            out
        };
        let whole = collect(&[text]);
        assert_eq!(
            whole,
            vec![r#"{"name":"a]\"}","x":[1,{"y":2}]}"#, r#"{"name":"b"}"#]
        );
        for split in 1..text.len() {
            assert_eq!(collect(&[&text[..split], &text[split..]]), whole);
        }
    }

    #[test]
    fn json_import_must_be_a_closed_array() {
        let mut p = JsonArrayElements::default();
        assert!(p.feed(b"{\"name\":1}", &mut |_| Ok(())).is_err());
        let mut p = JsonArrayElements::default();
        p.feed(b"[{\"name\":\"a\"}", &mut |_| Ok(())).unwrap();
        assert!(p.finish().is_err());
    }
}

/// A streamed CSV download: `header` then the lines each `fetch(after)` call returns, page
/// by page (keyset on the id each line comes with), until a page comes back empty.
pub fn paged_csv<F, Fut>(filename: &str, header: &'static str, fetch: F) -> actix_web::HttpResponse
where
    F: FnMut(i64) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<Vec<(i64, String)>, ApiError>> + 'static,
{
    struct St<F> {
        fetch: F,
        after: i64,
        header: Option<&'static str>,
        done: bool,
    }
    let init = St {
        fetch,
        after: 0,
        header: Some(header),
        done: false,
    };
    let body = futures_util::stream::unfold(init, |mut st| async move {
        if let Some(h) = st.header.take() {
            return Some((Ok::<_, ApiError>(bytes::Bytes::from(format!("{h}\n"))), st));
        }
        if st.done {
            return None;
        }
        match (st.fetch)(st.after).await {
            Err(e) => {
                // The status line is sent already; end the body early so the client sees a
                // truncated download rather than a silently short file.
                st.done = true;
                Some((Err(e), st))
            }
            Ok(rows) if rows.is_empty() => None,
            Ok(rows) => {
                let mut buf = String::with_capacity(rows.len() * 24);
                for (id, line) in rows {
                    st.after = id;
                    buf.push_str(&line);
                    buf.push('\n');
                }
                Some((Ok(bytes::Bytes::from(buf)), st))
            }
        }
    });
    actix_web::HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{filename}\""),
        ))
        .streaming(body)
}

/// Quotes a CSV field when it needs it.
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        std::borrow::Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}
