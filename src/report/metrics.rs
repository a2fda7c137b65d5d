//! Metrics files of a run folder: `{name}.jsonl` (one JSON object per line) and `{name}.csv` (header from the first
//! record's keys, same column order), written side by side by [`MetricsWriter`], read back by [`read_jsonl`].
//!
//! Format rules:
//! - a [`Record`] is an ordered list of named values, numbers (`f64`) or strings;
//! - JSONL numbers are written so that they read back bit-exact (integral values without a fraction, others in
//!   Rust's shortest round-trip form); non-finite numbers become `null` (read back as NaN); strings and keys are
//!   JSON-escaped;
//! - CSV cells: non-finite numbers are `NaN`, `inf`, `-inf`; strings (and header names) that hold a comma,
//!   quote, line break or outer whitespace are quoted with doubled quotes; keys missing from a record are empty
//!   cells, and keys not in the header are left out of the CSV (the JSONL line keeps everything);
//! - every record is formatted into one buffer and handed to the OS with one `write_all` per file, unbuffered, so
//!   a killed run keeps every line it finished. The reader skips a torn last line (no trailing newline).

use crate::checkpoint::json_str;
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One value of a [`Record`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number; NaN and infinities are allowed (written as `null` / `NaN`).
    Num(f64),
    /// A string (escaped on output).
    Str(String),
}

/// One line of metrics: named values in insertion order. Setting a key twice replaces the value in place.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Record {
    fields: Vec<(String, Value)>,
}

impl Record {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder form of [`Record::set`] with a number.
    pub fn with(mut self, key: impl Into<String>, v: f64) -> Self {
        self.set(key, Value::Num(v));
        self
    }

    /// Builder form of [`Record::set`] with a string.
    pub fn with_str(mut self, key: impl Into<String>, v: impl Into<String>) -> Self {
        self.set(key, Value::Str(v.into()));
        self
    }

    /// Sets `key` to `value`: replaces an existing value in place, else appends.
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
    }

    /// The number stored under `key` (None when absent or a string). `null` read from JSONL is NaN.
    pub fn get(&self, key: &str) -> Option<f64> {
        match self.value(key)? {
            Value::Num(v) => Some(*v),
            Value::Str(_) => None,
        }
    }

    /// The string stored under `key` (None when absent or a number).
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.value(key)? {
            Value::Str(s) => Some(s),
            Value::Num(_) => None,
        }
    }

    /// The value stored under `key`.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// All fields in order.
    pub fn fields(&self) -> &[(String, Value)] {
        &self.fields
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_str())
    }

    /// The record as one JSON object (no trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            json_str(&mut s, k);
            s.push(':');
            match v {
                Value::Num(x) if x.is_finite() => s.push_str(&fmt_num(*x)),
                Value::Num(_) => s.push_str("null"),
                Value::Str(t) => json_str(&mut s, t),
            }
        }
        s.push('}');
        s
    }

    /// Parses one JSON object of the form [`Record::to_json`] writes (flat: numbers, strings, `null`, booleans as
    /// 1 / 0; `NaN`, `Infinity`, `-Infinity` as Python writes them are accepted too).
    pub fn from_json(line: &str) -> std::result::Result<Self, String> {
        let mut p = Parser { s: line.as_bytes(), i: 0 };
        let rec = p.object()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at byte {}", p.i));
        }
        Ok(rec)
    }
}

/// Integral values below 2^53 without a fraction ("3"), the rest in Rust's shortest round-trip form ("0.1",
/// "1e-7", "1.5e20"): valid JSON numbers that parse back to the same f64.
fn fmt_num(x: f64) -> String {
    if x == 0.0 && x.is_sign_negative() {
        "-0.0".into()
    } else if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:?}")
    }
}

fn csv_cell(out: &mut String, s: &str) {
    let needs = s.contains([',', '"', '\n', '\r']) || s.trim() != s;
    if needs {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn csv_num(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        fmt_num(x)
    }
}

/// Splits one CSV line into cells (quoted cells with doubled quotes allowed).
fn csv_split(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if cur.is_empty() => quoted = true,
            (false, ',') => cells.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    cells.push(cur);
    cells
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> std::result::Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", b as char, self.i))
        }
    }

    fn object(&mut self) -> std::result::Result<Record, String> {
        self.eat(b'{')?;
        let mut rec = Record::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(rec);
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.eat(b':')?;
            self.ws();
            let v = self.value()?;
            rec.set(key, v);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(rec);
                }
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.i)),
            }
        }
    }

    fn value(&mut self) -> std::result::Result<Value, String> {
        let rest = &self.s[self.i..];
        for (lit, v) in [
            (&b"null"[..], f64::NAN),
            (b"true", 1.0),
            (b"false", 0.0),
            (b"NaN", f64::NAN),
            (b"Infinity", f64::INFINITY),
            (b"-Infinity", f64::NEG_INFINITY),
        ] {
            if rest.starts_with(lit) {
                self.i += lit.len();
                return Ok(Value::Num(v));
            }
        }
        match rest.first() {
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while self.i < self.s.len() && matches!(self.s[self.i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                t.parse::<f64>().map(Value::Num).map_err(|_| format!("bad number {t:?} at byte {start}"))
            }
            Some(b'{' | b'[') => Err(format!("nested value at byte {} (metrics records are flat)", self.i)),
            _ => Err(format!("expected a value at byte {}", self.i)),
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return Err(format!("expected a string at byte {}", self.i));
        }
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else { return Err("unterminated string".into()) };
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else { return Err("unterminated escape".into()) };
                    self.i += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) && self.s.get(self.i..self.i + 2) == Some(b"\\u") {
                                self.i += 2;
                                let lo = self.hex4()?;
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF);
                            }
                            let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(format!("bad escape at byte {}", self.i - 1)),
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    fn hex4(&mut self) -> std::result::Result<u32, String> {
        let h = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(h).map_err(|e| e.to_string())?, 16).map_err(|e| e.to_string())
    }
}

/// Appends the CSV header line of `cols` to `out`.
fn header_line(out: &mut String, cols: &[String]) {
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_cell(out, c);
    }
    out.push('\n');
}

/// Appends the CSV line of `rec` under `cols` to `out` (empty cells for missing keys).
fn row_line(out: &mut String, cols: &[String], rec: &Record) {
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match rec.value(c) {
            Some(Value::Num(x)) => out.push_str(&csv_num(*x)),
            Some(Value::Str(s)) => csv_cell(out, s),
            None => {}
        }
    }
    out.push('\n');
}

/// Writes metrics records to `{dir}/{name}.jsonl` and `{dir}/{name}.csv`, one line per record, each handed to
/// the OS as soon as it is written.
#[derive(Debug)]
pub struct MetricsWriter {
    jsonl: File,
    csv: File,
    jsonl_path: PathBuf,
    csv_path: PathBuf,
    columns: Option<Vec<String>>,
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(Error::shape("metrics", "a file stem without path separators", format!("{name:?}")));
    }
    Ok(())
}

impl MetricsWriter {
    /// Creates `dir` (and parents) and starts `{name}.jsonl` / `{name}.csv` afresh (truncating old files).
    pub fn create(dir: impl AsRef<Path>, name: &str) -> Result<Self> {
        Self::open(dir.as_ref(), name, false)
    }

    /// Opens the two files for appending (resume), creating them when absent. The CSV keeps the columns of its
    /// existing header line; without one, the next record's keys become the header.
    pub fn append(dir: impl AsRef<Path>, name: &str) -> Result<Self> {
        Self::open(dir.as_ref(), name, true)
    }

    /// Resume after a checkpoint: keeps only the records whose number under `key` is `<= up_to` (records without
    /// `key` are kept), rewrites both files from the JSONL (each through a temporary file and a rename), and opens
    /// them for appending. Use it so that steps logged after the checkpoint, and redone after resuming, are not
    /// written twice.
    pub fn resume(dir: impl AsRef<Path>, name: &str, key: &str, up_to: f64) -> Result<Self> {
        let dir = dir.as_ref();
        check_name(name)?;
        let jsonl_path = dir.join(format!("{name}.jsonl"));
        if !jsonl_path.exists() {
            return Self::append(dir, name);
        }
        let keep: Vec<Record> = read_jsonl(&jsonl_path)?.into_iter().filter(|r| r.get(key).is_none_or(|v| v <= up_to)).collect();
        let tmp = format!("{name}.resume-tmp");
        {
            let mut w = Self::create(dir, &tmp)?;
            // keep the existing CSV column order when there is one
            w.columns = read_csv_header(&dir.join(format!("{name}.csv")))?;
            if let Some(cols) = &w.columns {
                w.write_header(cols.clone())?;
            }
            for r in &keep {
                w.write(r)?;
            }
        }
        for ext in ["jsonl", "csv"] {
            let (from, to) = (dir.join(format!("{tmp}.{ext}")), dir.join(format!("{name}.{ext}")));
            std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
        Self::append(dir, name)
    }

    fn open(dir: &Path, name: &str, append: bool) -> Result<Self> {
        check_name(name)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let jsonl_path = dir.join(format!("{name}.jsonl"));
        let csv_path = dir.join(format!("{name}.csv"));
        let columns = if append { read_csv_header(&csv_path)? } else { None };
        let open = |p: &Path| -> Result<File> {
            let mut o = OpenOptions::new();
            if append {
                o.append(true).create(true);
            } else {
                o.write(true).create(true).truncate(true);
            }
            o.open(p).map_err(|e| Error::io(p, e))
        };
        Ok(Self { jsonl: open(&jsonl_path)?, csv: open(&csv_path)?, jsonl_path, csv_path, columns })
    }

    fn write_header(&mut self, cols: Vec<String>) -> Result<()> {
        let mut line = String::new();
        header_line(&mut line, &cols);
        self.csv.write_all(line.as_bytes()).map_err(|e| Error::io(&self.csv_path, e))?;
        self.columns = Some(cols);
        Ok(())
    }

    /// Appends one record to both files. The first record written to a fresh CSV fixes its header.
    pub fn write(&mut self, rec: &Record) -> Result<()> {
        let mut line = rec.to_json();
        line.push('\n');
        self.jsonl.write_all(line.as_bytes()).map_err(|e| Error::io(&self.jsonl_path, e))?;
        self.jsonl.flush().map_err(|e| Error::io(&self.jsonl_path, e))?;
        if self.columns.is_none() {
            self.write_header(rec.keys().map(String::from).collect())?;
        }
        let mut row = String::new();
        row_line(&mut row, self.columns.as_deref().unwrap_or_default(), rec);
        self.csv.write_all(row.as_bytes()).map_err(|e| Error::io(&self.csv_path, e))?;
        self.csv.flush().map_err(|e| Error::io(&self.csv_path, e))
    }

    /// Fixes the CSV's columns (a record's keys outside them go to the JSONL only; a record without one leaves its
    /// cell empty). Before anything is written it only sets the header; when the CSV already has other columns (a
    /// resumed run of an older version), the CSV is rewritten from the JSONL under the new header (through a
    /// temporary file and a rename).
    pub fn set_columns(&mut self, cols: &[&str]) -> Result<()> {
        let cols: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
        if self.columns.as_ref() == Some(&cols) {
            return Ok(());
        }
        if self.columns.is_none() && std::fs::metadata(&self.csv_path).map_or(true, |m| m.len() == 0) {
            return self.write_header(cols);
        }
        let records = read_jsonl(&self.jsonl_path)?;
        let tmp = self.csv_path.with_extension("csv.columns-tmp");
        let mut out = String::new();
        header_line(&mut out, &cols);
        for r in &records {
            row_line(&mut out, &cols, r);
        }
        std::fs::write(&tmp, out).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.csv_path).map_err(|e| Error::io(&self.csv_path, e))?;
        self.csv = OpenOptions::new().append(true).open(&self.csv_path).map_err(|e| Error::io(&self.csv_path, e))?;
        self.columns = Some(cols);
        Ok(())
    }

    /// The CSV columns (None until the header is known).
    pub fn columns(&self) -> Option<&[String]> {
        self.columns.as_deref()
    }

    /// Path of the JSONL file.
    pub fn jsonl_path(&self) -> &Path {
        &self.jsonl_path
    }

    /// Path of the CSV file.
    pub fn csv_path(&self) -> &Path {
        &self.csv_path
    }
}

/// The header cells of an existing, non-empty CSV file; None when the file is absent or empty.
fn read_csv_header(path: &Path) -> Result<Option<Vec<String>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut line = String::new();
    BufReader::new(f).read_line(&mut line).map_err(|e| Error::io(path, e))?;
    let line = line.trim_end_matches(['\n', '\r']);
    Ok(if line.is_empty() { None } else { Some(csv_split(line)) })
}

/// Reads every record of a JSONL metrics file. Blank lines are skipped, and so is a last line without a trailing
/// newline that does not parse (a write torn by a kill); any other bad line is [`Error::BadFile`] with its number.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<Record>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match Record::from_json(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(reason) => return Err(Error::bad_file(path, format!("line {}: {reason}", i + 1))),
        }
    }
    Ok(out)
}

/// `(x, y)` pairs of the records that hold finite numbers under both keys, in file order (for plots).
pub fn series(records: &[Record], x_key: &str, y_key: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| Some((r.get(x_key)?, r.get(y_key)?)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}
