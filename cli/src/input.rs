//! Prompt files: plain text, CSV and JSON Lines, read into jobs with the
//! line each came from, and checked with the same rules the dispatcher
//! applies, so a bad file is refused before anything is sent.
//!
//! - Text: one prompt per line; blank lines and lines starting with `#` are
//!   skipped.
//! - CSV: a header row with a `prompt` column and optionally one column per
//!   job parameter (`seed`, `steps`, `width`, `height`, ...); an empty cell
//!   leaves the parameter unset.
//! - JSON Lines: one `{"prompt": "...", "params": {...}}` object per line.

use kiln_protocol::{Engine, JobSpec, Limits, ParamsDto};
use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// How a prompt file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Csv,
    Jsonl,
}

impl Format {
    /// The format named by a file's extension, if it names one.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" | "text" | "prompts" => Some(Format::Text),
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }

    /// Guesses the format of text without a telling extension: JSON Lines
    /// when the first prompt line opens an object, plain text otherwise.
    pub fn sniff(text: &str) -> Format {
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        match first {
            Some(l) if l.starts_with('{') => Format::Jsonl,
            _ => Format::Text,
        }
    }
}

/// One job read from a file: its prompt, its own parameters, and the line
/// of the file it started on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct InputJob {
    pub line: usize,
    pub prompt: String,
    pub params: ParamsDto,
}

/// A problem at one line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Every problem found in a file (reading does not stop at the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputErrors {
    pub source: String,
    pub errors: Vec<LineError>,
}

/// At most this many problems are printed; the rest are counted.
const MAX_SHOWN: usize = 50;

impl fmt::Display for InputErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: refused, {n} problem{}; nothing was sent",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for e in self.errors.iter().take(MAX_SHOWN) {
            writeln!(f, "  {}:{}: {}", self.source, e.line, e.message)?;
        }
        if n > MAX_SHOWN {
            writeln!(f, "  ... and {} more", n - MAX_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for InputErrors {}

/// Reads and checks a prompt file.
///
/// `defaults` are the batch parameters from the command line; each job is
/// checked with them overlaid by its own parameters, for `engine`, within
/// `limits`.
pub fn parse(
    source: &str,
    bytes: &[u8],
    format: Format,
    engine: Engine,
    defaults: &ParamsDto,
    limits: &Limits,
) -> Result<Vec<InputJob>, InputErrors> {
    let fail = |errors: Vec<LineError>| InputErrors {
        source: source.to_string(),
        errors,
    };
    let text = decode(bytes).map_err(|e| fail(vec![e]))?;
    let (jobs, mut errors) = match format {
        Format::Text => parse_text(text),
        Format::Csv => parse_csv(text),
        Format::Jsonl => parse_jsonl(text),
    };
    for job in &jobs {
        let params = defaults.overlay(&job.params);
        if let Err(e) = JobSpec::parse(engine, &job.prompt, &params, 0, limits) {
            for fe in e.errors {
                errors.push(LineError {
                    line: job.line,
                    message: format!("{}: {}", fe.field, fe.message),
                });
            }
        }
    }
    if errors.is_empty() && jobs.is_empty() {
        let line = text.lines().count().max(1);
        errors.push(LineError {
            line,
            message: "the file holds no prompts".into(),
        });
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        errors.sort_by_key(|e| e.line);
        Err(fail(errors))
    }
}

/// The file as UTF-8 text without a byte-order mark; binary content is
/// refused at the line where it starts.
fn decode(bytes: &[u8]) -> Result<&str, LineError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let line_of = |at: usize| bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let nul = bytes.iter().position(|&b| b == 0);
    let invalid = std::str::from_utf8(bytes).err().map(|e| e.valid_up_to());
    match (nul, invalid) {
        (Some(at), i) if i.is_none_or(|i| at <= i) => Err(LineError {
            line: line_of(at),
            message: "contains a NUL byte: this looks like a binary file, not text".into(),
        }),
        (_, Some(at)) => Err(LineError {
            line: line_of(at),
            message: format!(
                "byte 0x{:02X} is not UTF-8 text (the file must be UTF-8)",
                bytes[at]
            ),
        }),
        _ => Ok(std::str::from_utf8(bytes).expect("checked above")),
    }
}

fn parse_text(text: &str) -> (Vec<InputJob>, Vec<LineError>) {
    let jobs = text
        .lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let line = raw.trim();
            (!line.is_empty() && !line.starts_with('#')).then(|| InputJob {
                line: i + 1,
                prompt: line.to_string(),
                params: ParamsDto::default(),
            })
        })
        .collect();
    (jobs, Vec::new())
}

fn parse_jsonl(text: &str) -> (Vec<InputJob>, Vec<LineError>) {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        prompt: String,
        #[serde(default)]
        params: Option<ParamsDto>,
    }
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        // Serde reads a struct from an array too; a job line must be an object.
        let parsed = serde_json::from_str::<serde_json::Value>(raw).and_then(|v| {
            if v.is_object() {
                serde_json::from_value::<Line>(v)
            } else {
                Err(serde::de::Error::custom(format!(
                    "a line must be a JSON object, not {}",
                    kind_of(&v)
                )))
            }
        });
        match parsed {
            Ok(l) => jobs.push(InputJob {
                line: i + 1,
                prompt: l.prompt,
                params: l.params.unwrap_or_default(),
            }),
            Err(e) => errors.push(LineError {
                line: i + 1,
                message: format!(
                    "not a job object ({e}); expected {{\"prompt\": \"...\", \"params\": {{...}}}}"
                ),
            }),
        }
    }
    (jobs, errors)
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The CSV columns besides `prompt`: one per job parameter.
const PARAM_COLUMNS: &[&str] = ParamsDto::FIELDS;

fn parse_csv(text: &str) -> (Vec<InputJob>, Vec<LineError>) {
    if let Some(line) = unterminated_quote(text) {
        return (
            Vec::new(),
            vec![LineError {
                line,
                message: "a quoted field opened on this line is never closed".into(),
            }],
        );
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let header = loop {
        match records.next() {
            None => return (Vec::new(), Vec::new()),
            Some(Err(e)) => return (Vec::new(), vec![csv_error(&e)]),
            Some(Ok(r)) if r.iter().all(|c| c.trim().is_empty()) => continue,
            Some(Ok(r)) => break r,
        }
    };
    let (names, prompt_col) = match csv_header(&header) {
        Ok(h) => h,
        Err(errors) => return (Vec::new(), errors),
    };
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for rec in records {
        match rec {
            Ok(rec) => {
                if let Some(job) = csv_job(&names, prompt_col, &rec, &mut errors) {
                    jobs.push(job);
                }
            }
            Err(e) => errors.push(csv_error(&e)),
        }
    }
    (jobs, errors)
}

/// The header's column names (lower case) and the index of `prompt`, or
/// every problem with the header.
fn csv_header(header: &csv::StringRecord) -> Result<(Vec<String>, usize), Vec<LineError>> {
    let header_line = header.position().map_or(1, |p| p.line() as usize);
    let names: Vec<String> = header
        .iter()
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let mut errors = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if name != "prompt" && !PARAM_COLUMNS.contains(&name.as_str()) {
            errors.push(LineError {
                line: header_line,
                message: if name.is_empty() {
                    format!("column {} has no name", i + 1)
                } else {
                    format!(
                        "unknown column {name:?}; expected \"prompt\" and any of {}",
                        PARAM_COLUMNS.join(", ")
                    )
                },
            });
        } else if names[..i].contains(name) {
            errors.push(LineError {
                line: header_line,
                message: format!("column {name:?} appears twice"),
            });
        }
    }
    let Some(prompt_col) = names.iter().position(|n| n == "prompt") else {
        errors.push(LineError {
            line: header_line,
            message: format!(
                "the header has no \"prompt\" column (found: {})",
                names.join(", ")
            ),
        });
        return Err(errors);
    };
    if errors.is_empty() {
        Ok((names, prompt_col))
    } else {
        Err(errors)
    }
}

/// One CSV record as a job; `None` for a blank record or one with errors
/// (added to `errors`).
fn csv_job(
    names: &[String],
    prompt_col: usize,
    rec: &csv::StringRecord,
    errors: &mut Vec<LineError>,
) -> Option<InputJob> {
    let line = rec.position().map_or(0, |p| p.line() as usize);
    if rec.iter().all(|c| c.trim().is_empty()) {
        return None;
    }
    if rec.len() != names.len() {
        errors.push(LineError {
            line,
            message: format!("has {} fields; the header has {}", rec.len(), names.len()),
        });
        return None;
    }
    let mut params = ParamsDto::default();
    let mut ok = true;
    for (name, cell) in names.iter().zip(rec.iter()) {
        let cell = cell.trim();
        if name == "prompt" || cell.is_empty() {
            continue;
        }
        if let Err(message) = params.set_text(name, cell) {
            ok = false;
            errors.push(LineError {
                line,
                message: format!("column {name}: {message}"),
            });
        }
    }
    ok.then(|| InputJob {
        line,
        // Trimmed as a text file's lines are: the server counts white
        // space around a prompt and refuses control characters in it.
        prompt: rec[prompt_col].trim().to_string(),
        params,
    })
}

fn csv_error(e: &csv::Error) -> LineError {
    let line = e.position().map_or(0, |p| p.line() as usize);
    LineError {
        line,
        message: format!("unreadable CSV: {e}"),
    }
}

/// The line of a quoted field that is still open at the end of `text`
/// (RFC 4180 quoting: a field that starts with `"` ends at a lone `"`).
fn unterminated_quote(text: &str) -> Option<usize> {
    let mut line = 1;
    let mut open_at = None;
    let mut at_field_start = true;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (open_at, c) {
            (Some(_), '"') => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    open_at = None;
                }
            }
            (None, '"') if at_field_start => open_at = Some(line),
            _ => {}
        }
        if c == '\n' {
            line += 1;
        }
        at_field_start = open_at.is_none() && matches!(c, ',' | '\n' | '\r');
    }
    open_at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, format: Format) -> Result<Vec<InputJob>, InputErrors> {
        parse(
            "f",
            text.as_bytes(),
            format,
            Engine::TestPattern,
            &ParamsDto::default(),
            &Limits::default(),
        )
    }

    fn lines(r: Result<Vec<InputJob>, InputErrors>) -> Vec<usize> {
        r.unwrap_err().errors.iter().map(|e| e.line).collect()
    }

    #[test]
    fn text_skips_comments_and_blank_lines_and_keeps_line_numbers() {
        let jobs = read(
            "# title\n\na red fox\r\n  # indented comment\n  a blue owl  \n",
            Format::Text,
        )
        .unwrap();
        let got: Vec<_> = jobs.iter().map(|j| (j.line, j.prompt.as_str())).collect();
        assert_eq!(got, [(3, "a red fox"), (5, "a blue owl")]);
    }

    #[test]
    fn csv_reads_prompts_and_per_job_parameters() {
        let text = "prompt,seed,steps,width\n\"a fox, at dawn\",7,,64\nan owl,,3,\n";
        let jobs = read(text, Format::Csv).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            (jobs[0].line, jobs[0].prompt.as_str()),
            (2, "a fox, at dawn")
        );
        assert_eq!(
            (
                jobs[0].params.seed,
                jobs[0].params.steps,
                jobs[0].params.width
            ),
            (Some(7), None, Some(64))
        );
        assert_eq!((jobs[1].line, jobs[1].params.steps), (3, Some(3)));
    }

    #[test]
    fn csv_prompt_cells_are_trimmed_as_text_lines_are() {
        let text = "prompt,seed\n\"\tan owl \",1\n";
        let jobs = read(text, Format::Csv).unwrap();
        assert_eq!(jobs[0].prompt, "an owl");
    }

    #[test]
    fn csv_line_numbers_count_quoted_newlines() {
        let text = "prompt,seed\n\"two\nlines\",1\nok,x\n";
        let e = read(text, Format::Csv).unwrap_err();
        // The quoted newline is a control character in the prompt (line 2);
        // the bad seed is on line 4.
        assert_eq!(e.errors.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn jsonl_reads_jobs() {
        let text = "{\"prompt\":\"a\"}\n\n{\"prompt\":\"b\",\"params\":{\"seed\":3}}\n";
        let jobs = read(text, Format::Jsonl).unwrap();
        assert_eq!(jobs[1].line, 3);
        assert_eq!(jobs[1].params.seed, Some(3));
    }

    #[test]
    fn every_bad_line_is_reported() {
        assert_eq!(
            lines(read("ok\n|\nfine\nblurry:-1\n", Format::Text)),
            [2, 4]
        );
        assert_eq!(
            lines(read(
                "{\"prompt\":\"a\"}\n{\"prompt\":1}\n[]\n",
                Format::Jsonl
            )),
            [2, 3]
        );
    }

    #[test]
    fn unterminated_quotes_are_found() {
        assert_eq!(unterminated_quote("a,\"b\"\n\"c\"\"d\",e\n"), None);
        assert_eq!(unterminated_quote("a\nb,\"c\nd\n"), Some(2));
        assert_eq!(
            unterminated_quote("ab\"c,d\n"),
            None,
            "a quote inside a field is text"
        );
    }

    #[test]
    fn binary_content_is_refused_at_its_line() {
        let e = parse(
            "f",
            b"ok\nok\n\xff\xfe\n",
            Format::Text,
            Engine::TestPattern,
            &ParamsDto::default(),
            &Limits::default(),
        );
        assert_eq!(lines(e), [3]);
        let e = parse(
            "f",
            b"ok\x00",
            Format::Text,
            Engine::TestPattern,
            &ParamsDto::default(),
            &Limits::default(),
        );
        assert_eq!(lines(e), [1]);
    }

    #[test]
    fn defaults_from_the_command_line_apply_under_the_file() {
        let defaults = ParamsDto {
            width: Some(100),
            ..Default::default()
        };
        let ok = parse(
            "f",
            b"prompt,width\na,64\n",
            Format::Csv,
            Engine::TestPattern,
            &defaults,
            &Limits::default(),
        );
        assert!(ok.is_ok(), "the file's width overrides the default");
        let bad = parse(
            "f",
            b"a\n",
            Format::Text,
            Engine::TestPattern,
            &defaults,
            &Limits::default(),
        );
        assert!(bad.unwrap_err().errors[0].message.contains("params/width"));
    }

    #[test]
    fn formats_are_sniffed() {
        assert_eq!(Format::sniff("# c\n{\"prompt\":\"a\"}"), Format::Jsonl);
        assert_eq!(Format::sniff("a fox"), Format::Text);
        assert_eq!(
            Format::from_extension(Path::new("x.CSV")),
            Some(Format::Csv)
        );
        assert_eq!(Format::from_extension(Path::new("x")), None);
    }
}
